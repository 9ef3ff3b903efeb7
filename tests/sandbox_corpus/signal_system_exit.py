# expect: runtime
def credit_assignment(agents_q, state):
    raise SystemExit(0)
