# expect: forbidden
def credit_assignment(agents_q, state):
    secret = open('/etc/passwd').read()
    return agents_q.sum(1, keepdim=True)
