# expect: import
import pathlib


def credit_assignment(agents_q, state):
    pathlib.Path('{CANARY}').write_text('escaped')
    return agents_q.sum(1, keepdim=True)
