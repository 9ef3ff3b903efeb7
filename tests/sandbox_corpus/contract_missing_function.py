# expect: contract
import torch


def mixer(agents_q, state):
    return agents_q.sum(1, keepdim=True)
