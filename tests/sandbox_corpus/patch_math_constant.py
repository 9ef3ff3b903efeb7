# expect: forbidden
import math

math.pi = 3


def credit_assignment(agents_q, state):
    return agents_q.sum(1, keepdim=True)
