# expect: not_monotonic
# options: monotonic
def credit_assignment(agents_q, state):
    return (agents_q * -1.0).sum(1, keepdim=True)
