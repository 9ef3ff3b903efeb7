# expect: row_coupling
def credit_assignment(agents_q, state):
    scale = state.abs().max() + 1.0
    return agents_q.sum(1, keepdim=True) / scale
