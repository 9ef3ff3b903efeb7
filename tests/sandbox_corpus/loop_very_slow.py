# expect: timeout
def credit_assignment(agents_q, state):
    total = 0
    for i in range(10**10):
        total += i
    return agents_q.sum(1, keepdim=True)
