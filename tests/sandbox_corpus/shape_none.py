# expect: shape
def credit_assignment(agents_q, state):
    q_tot = agents_q.sum(1, keepdim=True)
