# expect: contract
def credit_assignment(agents_q):
    return agents_q.sum(1, keepdim=True)
