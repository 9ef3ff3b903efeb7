# expect: runtime
def credit_assignment(agents_q, state):
    return credit_assignment(agents_q, state)
