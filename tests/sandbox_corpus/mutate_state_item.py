# expect: input_mutation
def credit_assignment(agents_q, state):
    state[:, 0] = 0
    return agents_q.sum(1, keepdim=True)
