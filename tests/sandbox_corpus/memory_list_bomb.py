# expect: memory
def credit_assignment(agents_q, state):
    hog = [0] * 10**10
    return agents_q.sum(1, keepdim=True)
