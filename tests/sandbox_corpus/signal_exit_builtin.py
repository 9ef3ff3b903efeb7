# expect: forbidden
def credit_assignment(agents_q, state):
    exit(0)
