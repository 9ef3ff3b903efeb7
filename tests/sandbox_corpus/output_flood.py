# expect: output_limit
def credit_assignment(agents_q, state):
    for i in range(10**7):
        print(i)
    return agents_q.sum(1, keepdim=True)
