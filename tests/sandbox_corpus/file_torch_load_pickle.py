# expect: forbidden
import torch


def credit_assignment(agents_q, state):
    payload = torch.load('{CANARY}', weights_only=False)
    return agents_q.sum(1, keepdim=True)
