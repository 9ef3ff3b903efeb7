# expect: no_gradient
import torch


def credit_assignment(agents_q, state):
    return torch.zeros(agents_q.shape[0], 1)
