# expect: input_mutation
def credit_assignment(agents_q, state):
    state.clamp_(0, 1)
    return agents_q.sum(1, keepdim=True)
