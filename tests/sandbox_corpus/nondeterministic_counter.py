# expect: non_deterministic
calls = []


def credit_assignment(agents_q, state):
    calls.append(1)
    return agents_q.sum(1, keepdim=True) * len(calls)
