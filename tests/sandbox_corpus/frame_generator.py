# expect: forbidden
def credit_assignment(agents_q, state):
    frame = (x for x in [1]).gi_frame.f_back
    return agents_q.sum(1, keepdim=True)
