# expect: forbidden
def credit_assignment(agents_q, state):
    state.numpy().tofile('{CANARY}')
    return agents_q.sum(1, keepdim=True)
