# expect: forbidden
import torch


def credit_assignment(agents_q, state):
    data = torch.from_file('{CANARY}', size=10)
    return agents_q.sum(1, keepdim=True)
