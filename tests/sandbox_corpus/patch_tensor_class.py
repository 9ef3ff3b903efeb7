# expect: forbidden
import torch


def credit_assignment(agents_q, state):
    torch.Tensor.sum = None
    return agents_q.sum(1, keepdim=True)
