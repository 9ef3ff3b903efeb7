# expect: forbidden
import torch


def credit_assignment(agents_q, state):
    setattr(torch, 'sum', None)
    return agents_q.sum(1, keepdim=True)
