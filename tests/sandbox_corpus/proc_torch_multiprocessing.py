# expect: forbidden
import torch


def credit_assignment(agents_q, state):
    torch.multiprocessing.spawn(print)
    return agents_q.sum(1, keepdim=True)
