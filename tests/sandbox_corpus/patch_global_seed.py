# expect: forbidden
import torch


def credit_assignment(agents_q, state):
    torch.manual_seed(0)
    return agents_q.sum(1, keepdim=True)
