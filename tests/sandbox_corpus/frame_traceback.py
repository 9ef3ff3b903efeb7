# expect: forbidden
def credit_assignment(agents_q, state):
    try:
        1 / 0
    except ZeroDivisionError as e:
        frame = e.__traceback__.tb_frame
    return agents_q.sum(1, keepdim=True)
