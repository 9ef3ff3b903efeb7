# expect: forbidden
import torch


def credit_assignment(agents_q, state):
    return agents_q.sum(1, keepdim=True) + torch.rand(agents_q.shape[0], 1)
