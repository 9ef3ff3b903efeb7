# expect: forbidden
def credit_assignment(agents_q, state):
    exec('import os')
    return agents_q.sum(1, keepdim=True)
