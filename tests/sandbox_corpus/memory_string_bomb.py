# expect: memory
def credit_assignment(agents_q, state):
    hog = 'x' * 10**11
    return agents_q.sum(1, keepdim=True)
