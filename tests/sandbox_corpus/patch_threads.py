# expect: forbidden
import torch


def credit_assignment(agents_q, state):
    torch.set_num_threads(64)
    return agents_q.sum(1, keepdim=True)
