# expect: forbidden
import torch


def credit_assignment(agents_q, state):
    fn = torch.jit.script(lambda x: x)
    return agents_q.sum(1, keepdim=True)
