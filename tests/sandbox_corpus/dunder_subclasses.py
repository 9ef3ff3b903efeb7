# expect: forbidden
def credit_assignment(agents_q, state):
    subclasses = ().__class__.__bases__[0].__subclasses__()
    return agents_q.sum(1, keepdim=True)
