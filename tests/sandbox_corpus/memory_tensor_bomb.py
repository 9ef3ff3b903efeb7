# expect: memory
import torch


def credit_assignment(agents_q, state):
    hog = torch.ones(10**11)
    return agents_q.sum(1, keepdim=True)
