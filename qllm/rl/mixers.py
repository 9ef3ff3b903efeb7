"""Mixers: every way of turning agent Q-values into the value the TD loss is computed on.

One signature for all, as in EPyMARL's ``modules/mixers``: ``mixer(agent_qs, states) -> q_tot`` with
``agent_qs [B, T, n]`` (the chosen actions' Q-values), ``states [B, T, S]`` and ``q_tot [B, T, k]``,
where ``k`` is 1 for a team value and ``n`` for IQL (each agent learns its own Q from the team reward).
The learner looks mixers up by name in :data:`MIXERS`; a generated credit function fills the ``tfcaf``
slot and has no trainable parameters. A credit function linear in Q mixes from the credit stored with
each state instead of the state (:class:`LinearCredit`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from qllm.rl.credit import CreditFunctionError
from qllm.sandbox.restricted import time_limited

CreditFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Mixer(nn.Module):
    """``forward(agent_qs, states) -> q_tot``, the one signature of every mixer."""

    reads_credit: ClassVar[bool] = False
    """The second input is the credit stored with each state (``[..., n + 1]``), not the state."""


class IQL(Mixer):
    """No mixing: each agent's own Q-value is trained on the team reward."""

    def __init__(self, n_agents: int, state_dim: int, **_: object) -> None:
        super().__init__()

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return agent_qs


class VDN(Mixer):
    """Value decomposition networks (Sunehag et al. 2018): Q_tot = sum_i Q_i."""

    def __init__(self, n_agents: int, state_dim: int, **_: object) -> None:
        super().__init__()

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return agent_qs.sum(dim=-1, keepdim=True)


class QMIX(Mixer):
    """QMIX (Rashid et al. 2018): a monotonic mixing network whose weights come from hypernetworks of
    the state; absolute values keep dQ_tot/dQ_i >= 0."""

    def __init__(
        self, n_agents: int, state_dim: int, embed_dim: int = 32, hypernet_embed: int = 64, **_: object
    ):
        super().__init__()
        self.n_agents, self.embed_dim = n_agents, embed_dim

        def hypernet(out: int) -> nn.Module:
            return nn.Sequential(
                nn.Linear(state_dim, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, out)
            )

        self.hyper_w1 = hypernet(n_agents * embed_dim)
        self.hyper_w2 = hypernet(embed_dim)
        self.hyper_b1 = nn.Linear(state_dim, embed_dim)
        self.hyper_b2 = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        lead = agent_qs.shape[:-1]
        q = agent_qs.reshape(-1, self.n_agents, 1)
        s = states.reshape(-1, states.shape[-1])
        # Products summed by broadcasting, not bmm: thousands of 1 x n by n x E products (one per state)
        # are a poor fit for a batched matrix product on CPU (the mixer's forward and backward took 35%
        # less time this way; the same maths, summed in another order).
        w1 = self.hyper_w1(s).abs().view(-1, self.n_agents, self.embed_dim)
        hidden = F.elu((q * w1).sum(1) + self.hyper_b1(s))  # [N, E]
        w2 = self.hyper_w2(s).abs()  # [N, E]
        q_tot = (hidden * w2).sum(-1, keepdim=True) + self.hyper_b2(s)
        return q_tot.view(*lead, 1)


class Qatten(Mixer):
    """Qatten (Yang et al. 2020): Q_tot = sum_h sum_i lambda_{h,i}(s) Q_i + c(s), with per-head attention
    weights lambda from state queries against agent-feature keys; monotonic by construction."""

    def __init__(
        self, n_agents: int, state_dim: int, embed_dim: int = 32, heads: int = 4, **_: object
    ) -> None:
        super().__init__()
        self.n_agents, self.heads, self.embed_dim = n_agents, heads, embed_dim
        # The paper's keys are per-agent unit features. State layouts differ per task here, so a key is
        # the whole state plus a learned embedding of the agent's index.
        self.agent_embedding = nn.Embedding(n_agents, embed_dim)
        self.query = nn.Sequential(
            nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, heads * embed_dim)
        )
        self.key = nn.Linear(state_dim + embed_dim, heads * embed_dim, bias=False)
        self.head_weight = nn.Sequential(
            nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, heads)
        )
        self.constant = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        lead = agent_qs.shape[:-1]
        q = agent_qs.reshape(-1, self.n_agents)
        s = states.reshape(-1, states.shape[-1])
        b = s.shape[0]
        ids = self.agent_embedding.weight.unsqueeze(0).expand(b, -1, -1)
        keys = self.key(torch.cat([s.unsqueeze(1).expand(-1, self.n_agents, -1), ids], dim=-1))
        keys = keys.view(b, self.n_agents, self.heads, self.embed_dim).transpose(1, 2)  # [b, h, n, e]
        queries = self.query(s).view(b, self.heads, 1, self.embed_dim)
        attention = torch.softmax((queries * keys).sum(-1) / self.embed_dim**0.5, dim=-1)  # [b, h, n]
        per_head = (attention * q.unsqueeze(1)).sum(-1)  # [b, h]
        q_tot = (self.head_weight(s).abs() * per_head).sum(-1, keepdim=True) + self.constant(s)
        return q_tot.view(*lead, 1)


class LinearCredit(Mixer):
    """A credit function linear in Q as data: ``Q_tot = w(s) . Q + b(s)``, with each state's ``[w, b]``
    computed when the state was collected (from its credit spec, or in the sandbox: :mod:`qllm.rl.credit`)
    and stored beside it.
    Its second input is that stored credit ``[..., n + 1]``, not the state; no trainable parameters."""

    reads_credit: ClassVar[bool] = True

    def __init__(self, n_agents: int, state_dim: int, **_: object) -> None:
        super().__init__()
        self.n_agents = n_agents

    def forward(self, agent_qs: torch.Tensor, credit: torch.Tensor) -> torch.Tensor:
        weights, bias = credit[..., : self.n_agents], credit[..., self.n_agents :]
        return (weights * agent_qs).sum(dim=-1, keepdim=True) + bias


class TFCAF(Mixer):
    """A training-free credit assignment function (QLLM, Eq. 3) that is not linear in Q (hand-written
    files): called in this process on every batch, loaded under the sandbox's RestrictedPython, within
    ``call_budget_s`` per call. Functions linear in Q train through :class:`LinearCredit` instead."""

    def __init__(
        self,
        n_agents: int,
        state_dim: int,
        credit_function: CreditFunction | None = None,
        call_budget_s: float = 10.0,
        **_: object,
    ):
        super().__init__()
        if credit_function is None:
            raise ValueError("the tfcaf mixer needs a credit function (--tfcaf FILE)")
        self.n_agents, self.state_dim = n_agents, state_dim
        self.credit_function = time_limited(credit_function, call_budget_s)

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        lead = agent_qs.shape[:-1]
        qs, rows = agent_qs.reshape(-1, self.n_agents), states.reshape(-1, self.state_dim)
        try:
            q_tot = self.credit_function(qs, rows)
        except Exception as exc:
            # Validation covers recorded states only; training meets new ones. Say so, not a bare traceback.
            raise CreditFunctionError(
                f"the credit function failed on {rows.shape[0]} states met during training: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not torch.isfinite(q_tot).all():
            bad = int((~torch.isfinite(q_tot)).sum())
            raise CreditFunctionError(
                f"the credit function returned NaN or infinite values for {bad} of {rows.shape[0]} states"
            )
        return q_tot.reshape(*lead, 1)


MIXERS: dict[str, type[Mixer]] = {"iql": IQL, "vdn": VDN, "qmix": QMIX, "qatten": Qatten, "tfcaf": TFCAF}
"""Mixers by ``TrainConfig.mixer``. For ``tfcaf`` the trainer uses :class:`LinearCredit` instead when the
sandbox measured the function linear in Q."""
