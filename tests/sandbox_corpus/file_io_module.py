# expect: import
import io


def credit_assignment(agents_q, state):
    io.open('{CANARY}', 'w').write('escaped')
    return agents_q.sum(1, keepdim=True)
