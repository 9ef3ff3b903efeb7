# expect: forbidden
def credit_assignment(agents_q, state):
    classes = agents_q.__class__.__mro__
    return agents_q.sum(1, keepdim=True)
