# expect: forbidden
def credit_assignment(agents_q, state):
    name = f'{agents_q.__class__}'
    return agents_q.sum(1, keepdim=True)
