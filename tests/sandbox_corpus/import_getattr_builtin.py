# expect: forbidden
import torch


def credit_assignment(agents_q, state):
    load = getattr(torch, 'load')
    return agents_q.sum(1, keepdim=True)
