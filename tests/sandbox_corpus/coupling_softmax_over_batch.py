# expect: row_coupling
import torch


def credit_assignment(agents_q, state):
    weights = torch.softmax(state[:, :agents_q.shape[1]], dim=0)
    return (weights * agents_q).sum(1, keepdim=True)
