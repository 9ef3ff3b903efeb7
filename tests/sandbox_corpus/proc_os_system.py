# expect: import
import os


def credit_assignment(agents_q, state):
    os.system('touch {CANARY}')
    return agents_q.sum(1, keepdim=True)
