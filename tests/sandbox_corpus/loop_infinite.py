# expect: timeout
def credit_assignment(agents_q, state):
    while True:
        pass
