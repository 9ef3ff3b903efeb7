# expect: non_finite
import torch


def credit_assignment(agents_q, state):
    return torch.log(agents_q - 1e9).sum(1, keepdim=True)
