# expect: forbidden
def credit_assignment(agents_q, state):
    open('{CANARY}', 'w').write('escaped')
    return agents_q.sum(1, keepdim=True)
