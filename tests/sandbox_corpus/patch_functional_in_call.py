# expect: forbidden
import torch.nn.functional as F


def credit_assignment(agents_q, state):
    F.softmax = None
    return agents_q.sum(1, keepdim=True)
