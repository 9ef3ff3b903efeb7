# expect: output_limit
def credit_assignment(agents_q, state):
    for i in range(10**5):
        try:
            print('spam' * 100)
        except BaseException:
            pass
    return agents_q.sum(1, keepdim=True)
