# expect: forbidden
import torch


def credit_assignment(agents_q, state):
    return torch.ops.aten.sum(agents_q, [1], True)
