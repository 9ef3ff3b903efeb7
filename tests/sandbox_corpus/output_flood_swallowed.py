# expect: output_limit
def credit_assignment(agents_q, state):
    for i in range(10**4):  # 4 MB of output against a 64 KB cap
        try:
            print('spam' * 100)
        except BaseException:
            pass
    return agents_q.sum(1, keepdim=True)
