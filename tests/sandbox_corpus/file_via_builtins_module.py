# expect: import
import builtins


def credit_assignment(agents_q, state):
    builtins.open('{CANARY}', 'w').write('escaped')
    return agents_q.sum(1, keepdim=True)
