"""Policies read from the agent network's outputs as logits: masking, sampling and Gumbel-softmax.

The actor-critic learners (COMA, MADDPG) reuse :class:`~qllm.rl.agent.RNNAgent` as their actor: its
outputs are logits of a categorical policy over the available actions. Unavailable actions get a large
finite negative logit rather than ``-inf``: their probability is exactly zero in float32, and padded
states (where no action is available) still give finite numbers instead of NaNs that a mask would
have to filter out later.

Sampling uses the Gumbel-max trick, ``argmax(logits + g)`` with ``g ~ Gumbel(0, 1)``, which draws
exactly from ``softmax(logits)``; MADDPG's actor update uses the same noise in its relaxation (the
straight-through Gumbel-softmax of Jang et al. 2017 and Maddison et al. 2017). Noise is drawn from an
explicit generator so that runs, and resumed runs, repeat exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

UNAVAILABLE_LOGIT = -1e10
"""Logit of an unavailable action (EPyMARL uses the same value): exp underflows to exactly 0."""


def masked_logits(logits: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """``logits, avail [..., A]`` -> logits with unavailable actions at :data:`UNAVAILABLE_LOGIT`."""
    return logits.masked_fill(~avail, UNAVAILABLE_LOGIT)


def gumbel_noise(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel noise on the CPU (where generators live); move it to the logits' device."""
    uniform = torch.rand(shape, generator=generator).clamp(min=1e-20)  # log(0) would give -inf
    return -torch.log(-torch.log(uniform))


def sample_actions(logits: torch.Tensor, avail: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw from the softmax policy over available actions: ``[..., A]`` -> ``[...]``."""
    noise = gumbel_noise(logits.shape, generator).to(logits.device)
    return (masked_logits(logits, avail) + noise).argmax(dim=-1)


def gumbel_softmax_hard(
    logits: torch.Tensor, avail: torch.Tensor, generator: torch.Generator, temperature: float = 1.0
) -> torch.Tensor:
    """A one-hot sample ``[..., A]`` whose gradient is that of the soft sample (straight-through)."""
    noise = gumbel_noise(logits.shape, generator).to(logits.device)
    soft = torch.softmax((masked_logits(logits, avail) + noise) / temperature, dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft
