# expect: input_mutation
def credit_assignment(agents_q, state):
    agents_q.mul_(2)
    return agents_q.sum(1, keepdim=True)
