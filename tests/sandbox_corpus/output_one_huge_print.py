# expect: output_limit
def credit_assignment(agents_q, state):
    print('x' * 10**6)
    return agents_q.sum(1, keepdim=True)
