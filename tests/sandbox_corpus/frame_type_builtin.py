# expect: forbidden
def credit_assignment(agents_q, state):
    klass = type(agents_q)
    return agents_q.sum(1, keepdim=True)
