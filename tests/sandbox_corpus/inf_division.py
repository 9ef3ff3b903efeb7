# expect: non_finite
import torch


def credit_assignment(agents_q, state):
    return agents_q.sum(1, keepdim=True) / torch.zeros(agents_q.shape[0], 1)
