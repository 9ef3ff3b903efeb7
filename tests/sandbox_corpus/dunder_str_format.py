# expect: forbidden
def credit_assignment(agents_q, state):
    leak = '{0.__class__.__init__.__globals__}'.format(agents_q)
    return agents_q.sum(1, keepdim=True)
