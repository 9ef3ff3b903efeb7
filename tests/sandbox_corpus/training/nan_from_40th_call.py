# Not linear in Q (a bonus for the best agent), so it mixes in the trainer's process; passes validation,
# then returns NaN from its 40th call on.
calls = []


def credit_assignment(agents_q, state):
    calls.append(1)
    q_tot = agents_q.sum(dim=1, keepdim=True) + 0.1 * agents_q.max(dim=1, keepdim=True).values
    if len(calls) >= 40:
        return q_tot * float("nan")
    return q_tot
