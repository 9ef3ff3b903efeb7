# expect: forbidden
import torch


def credit_assignment(agents_q, state):
    torch.save(agents_q, '{CANARY}')
    return agents_q.sum(1, keepdim=True)
