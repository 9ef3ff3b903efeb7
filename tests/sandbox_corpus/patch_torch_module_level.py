# expect: forbidden
import torch

torch.sum = lambda *args, **kwargs: 0


def credit_assignment(agents_q, state):
    return agents_q.sum(1, keepdim=True)
