# expect: forbidden
def credit_assignment(agents_q, state):
    code = compile('1', 'x', 'eval')
    return agents_q.sum(1, keepdim=True)
