# expect: forbidden
def credit_assignment(agents_q, state):
    g = globals()
    return agents_q.sum(1, keepdim=True)
