# expect: forbidden
def credit_assignment(agents_q, state):
    out = agents_q.sum(1, keepdim=True)
    graph = out.grad_fn.next_functions
    return out
