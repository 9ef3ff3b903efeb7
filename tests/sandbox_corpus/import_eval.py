# expect: forbidden
def credit_assignment(agents_q, state):
    eval("__import__('os').system('touch {CANARY}')")
    return agents_q.sum(1, keepdim=True)
