# expect: forbidden
def credit_assignment(agents_q, state):
    builtins = credit_assignment.__globals__['__builtins__']
    return agents_q.sum(1, keepdim=True)
