"""Mixers: every way of turning agent Q-values into the value the TD loss is computed on.

One signature for all, as in EPyMARL's ``modules/mixers``: ``mixer(agent_qs, states) -> q_tot`` with
``agent_qs [B, T, n]`` (the chosen actions' Q-values), ``states [B, T, S]`` and ``q_tot [B, T, k]``,
where ``k`` is 1 for a team value and ``n`` for IQL (each agent learns its own Q from the team reward).
The learner looks mixers up by name in :data:`MIXERS`; a generated credit function fills the ``tfcaf``
slot and has no trainable parameters.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

CreditFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class IQL(nn.Module):
    """No mixing: each agent's own Q-value is trained on the team reward."""

    def __init__(self, n_agents: int, state_dim: int, **_: object) -> None:
        super().__init__()

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return agent_qs


class VDN(nn.Module):
    """Value decomposition networks (Sunehag et al. 2018): Q_tot = sum_i Q_i."""

    def __init__(self, n_agents: int, state_dim: int, **_: object) -> None:
        super().__init__()

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return agent_qs.sum(dim=-1, keepdim=True)


class QMIX(nn.Module):
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
        q = agent_qs.reshape(-1, 1, self.n_agents)
        s = states.reshape(-1, states.shape[-1])
        w1 = self.hyper_w1(s).abs().view(-1, self.n_agents, self.embed_dim)
        hidden = F.elu(torch.bmm(q, w1) + self.hyper_b1(s).unsqueeze(1))
        w2 = self.hyper_w2(s).abs().view(-1, self.embed_dim, 1)
        q_tot = torch.bmm(hidden, w2) + self.hyper_b2(s).unsqueeze(1)
        return q_tot.view(*lead, 1)


class Qatten(nn.Module):
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


class CreditFunctionError(RuntimeError):
    """A validated credit function that raised on a state it was not validated on."""


class StateCredit:
    """Memoised ``(w(s), b(s))`` of a credit function that is linear in Q: ``Q_tot = w(s) . Q + b(s)``.

    Generated functions loop over states in (restricted) Python, which would dominate training time if
    every batch recomputed them. But their weights depend on the state alone, and a replay buffer holds
    each state for many updates, so each distinct state is computed once: ``b`` from ``Q = 0`` and ``w``
    as the gradient with respect to ``Q``. ``max_states`` bounds the memory (the memo starts over when full).
    """

    def __init__(self, credit_function: CreditFunction, n_agents: int, max_states: int = 500_000) -> None:
        self.credit_function, self.n_agents, self.max_states = credit_function, n_agents, max_states
        self.memo: dict[bytes, torch.Tensor] = {}
        """State row bytes -> ``[w_1..w_n, b]``."""

    def __call__(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``w [R, n]`` and ``b [R]`` for ``states [R, S]``."""
        rows = states.detach().cpu().contiguous()
        keys = [row.numpy().tobytes() for row in rows]
        missing = list(dict.fromkeys(k for k in keys if k not in self.memo))
        if missing:
            if len(self.memo) + len(missing) > self.max_states:
                self.memo.clear()
            index = {k: i for i, k in enumerate(keys)}
            self._compute(missing, rows[[index[k] for k in missing]])
        stacked = torch.stack([self.memo[k] for k in keys]).to(states.device, states.dtype)
        return stacked[:, :-1], stacked[:, -1]

    def _compute(self, keys: list[bytes], states: torch.Tensor) -> None:
        with torch.enable_grad():  # targets are computed under no_grad
            zeros = torch.zeros(states.shape[0], self.n_agents, dtype=states.dtype, requires_grad=True)
            q_tot = self.credit_function(zeros, states)
            (weights,) = torch.autograd.grad(q_tot.sum(), zeros)
        values = torch.cat([weights, q_tot.detach().reshape(-1, 1)], dim=1)
        self.memo.update(zip(keys, values, strict=True))


class TFCAF(nn.Module):
    """A training-free credit assignment function (QLLM, Eq. 3): a fixed function of (Q, state) with no
    trainable parameters. The function must come from ``Sandbox.load`` (validated, then restricted).

    ``state_linear`` declares the function linear in Q with weights that depend on the state only (what
    qllm's templates generate); its ``(w, b)`` are then memoised per state (:class:`StateCredit`), after
    checking on the first batch that the memoised form gives the function's own values (if it does not,
    with a warning, the function is called directly as for any other file).
    """

    def __init__(
        self,
        n_agents: int,
        state_dim: int,
        credit_function: CreditFunction | None = None,
        state_linear: bool = False,
        **_: object,
    ):
        super().__init__()
        if credit_function is None:
            raise ValueError("the tfcaf mixer needs a credit function (--tfcaf FILE)")
        self.n_agents, self.state_dim = n_agents, state_dim
        self.credit_function = credit_function
        self.state_credit = StateCredit(credit_function, n_agents) if state_linear else None
        self.checked = False

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        lead = agent_qs.shape[:-1]
        qs, rows = agent_qs.reshape(-1, self.n_agents), states.reshape(-1, self.state_dim)
        try:
            q_tot = self._mix(qs, rows)
        except Exception as exc:
            # Validation covers recorded states only; training meets new ones. Say so, not a bare traceback.
            raise CreditFunctionError(
                f"the credit function failed on a state met during training, which validation had not "
                f"covered: {type(exc).__name__}: {exc}"
            ) from exc
        return q_tot.reshape(*lead, 1)

    def _mix(self, qs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.state_credit is None:
            return self.credit_function(qs, rows)
        weights, bias = self.state_credit(rows)
        q_tot = (weights * qs).sum(dim=1, keepdim=True) + bias.unsqueeze(1)
        if not self.checked:
            self.checked = True
            direct = self.credit_function(qs, rows)
            if not torch.allclose(q_tot, direct, rtol=1e-4, atol=1e-4):
                warnings.warn(
                    "the credit function's header declares it linear in Q (Q_tot = w(s) . Q + b(s)), but "
                    "it is not: its weights are not memoised, and training is slower",
                    stacklevel=2,
                )
                self.state_credit = None
                return direct
        return q_tot


MIXERS: dict[str, type[nn.Module]] = {"iql": IQL, "vdn": VDN, "qmix": QMIX, "qatten": Qatten, "tfcaf": TFCAF}
