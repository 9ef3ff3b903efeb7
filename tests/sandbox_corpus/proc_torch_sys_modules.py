# expect: forbidden
import torch


def credit_assignment(agents_q, state):
    os = torch.sys.modules['os']
    os.system('touch {CANARY}')
    return agents_q.sum(1, keepdim=True)
