# expect: import
import importlib


def credit_assignment(agents_q, state):
    importlib.import_module('os').system('touch {CANARY}')
    return agents_q.sum(1, keepdim=True)
