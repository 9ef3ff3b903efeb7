# qllm-tfcaf: {"task": "lbf-8x8-2p-2f", "state_dim": 24, "n_agents": 2, "template": "function/v1"}
"""Credit function for lbf-8x8-2p-2f, candidate r3-c1 (attempt 0) of run lbf-8x8-2p-2f__tfcaf__0__20261201-222658, written by local:qwen2.5-coder-1.5b-instruct."""

import math

import torch

# --- written by the coder LLM -------------------------------------------------------------

import torch

def credit_assignment(agents_q, state):
    # e.g. positions = state[:, a:b].reshape(-1, count, 2)
    weights = torch.ones_like(agents_q) / (state[:, :4].sum(dim=-1, keepdim=True) + 1e-5)  # replace with state-dependent weights [B, 2], >= 0 and finite
    return (weights * agents_q).sum(dim=1, keepdim=True)
