# expect: row_coupling
def credit_assignment(agents_q, state):
    q_tot = agents_q.sum(1, keepdim=True)
    return q_tot - q_tot.mean()
