"""Q-learning for value decomposition: TD(lambda) targets, double Q, masked loss, target networks.

``QLearner.update`` is one gradient step on a batch of episodes:

1. unroll the online and target agent networks over the whole episodes (``T + 1`` states);
2. pick next actions with the online network among available actions (double Q), evaluate them with
   the target network, and mix them with the target mixer into state values ``V[t]``;
3. build TD(lambda) targets from rewards, terminal flags and ``V`` (:func:`td_lambda_targets`);
4. minimise the squared TD error of the online mixer's ``Q_tot`` over the real (``filled``) steps only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from qllm.rl.agent import RNNAgent, agent_inputs
from qllm.rl.buffer import EpisodeBatch
from qllm.rl.config import TrainConfig


def td_lambda_targets(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    filled: torch.Tensor,
    values: torch.Tensor,
    *,
    gamma: float,
    td_lambda: float,
) -> torch.Tensor:
    """Lambda-returns ``G[t] = r[t] + gamma (1 - term[t]) ((1 - lambda) V[t+1] + lambda G[t+1])``.

    ``rewards, terminated, filled [B, T]``; ``values [B, T+1, k]`` (value of the state before each step
    and after the last). Where step ``t+1`` did not happen (the episode ended at ``t``), ``G[t+1]`` is
    replaced by ``V[t+1]``: a truncated episode bootstraps from its last state, a terminated one gets
    no bootstrap at all. Returns ``[B, T, k]``; entries of unfilled steps are meaningless (masked later).
    """
    steps = rewards.shape[1]
    r, term = rewards.unsqueeze(-1), terminated.unsqueeze(-1)
    if td_lambda == 0.0:  # one-step targets need no recursion over time
        return r + gamma * (1 - term) * values[:, 1:]
    next_filled = torch.cat([filled[:, 1:], torch.zeros_like(filled[:, :1])], dim=1).unsqueeze(-1)
    targets = torch.zeros_like(values[:, :steps])
    following = values[:, steps]
    for t in range(steps - 1, -1, -1):
        continuation = next_filled[:, t] * following + (1 - next_filled[:, t]) * values[:, t + 1]
        blended = (1 - td_lambda) * values[:, t + 1] + td_lambda * continuation
        targets[:, t] = r[:, t] + gamma * (1 - term[:, t]) * blended
        following = targets[:, t]
    return targets


class RunningMeanStd:
    """Running statistics of rewards for standardisation (parallel Welford update)."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, values: torch.Tensor) -> None:
        if values.numel() == 0:
            return
        batch_mean, batch_var, n = float(values.mean()), float(values.var(unbiased=False)), values.numel()
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total

    def standardise(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / (self.var**0.5 + 1e-8)

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


@dataclass(frozen=True)
class UpdateStats:
    loss: float
    grad_norm: float
    q_taken_mean: float
    target_mean: float


class QLearner:
    """Owns the online and target networks and the optimiser."""

    def __init__(self, agent: RNNAgent, mixer: nn.Module, n_actions: int, config: TrainConfig) -> None:
        self.agent, self.mixer, self.n_actions, self.config = agent, mixer, n_actions, config
        self.target_agent = copy.deepcopy(agent).requires_grad_(False)
        self.target_mixer = copy.deepcopy(mixer).requires_grad_(False)
        self.parameters = [*agent.parameters(), *mixer.parameters()]
        self.optimiser = torch.optim.Adam(self.parameters, lr=config.lr)
        self.reward_stats = RunningMeanStd()
        self.episodes_since_target_update = 0

    def update(self, batch: EpisodeBatch, new_episodes: int) -> UpdateStats:
        """One gradient step; ``new_episodes`` collected since the last call drive hard target updates."""
        if self.config.standardise_rewards:
            self.reward_stats.update(batch.reward[batch.filled.bool()])
        loss, stats = self.loss(batch)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip)
        self.optimiser.step()
        self._update_targets(new_episodes)
        return UpdateStats(loss=float(loss.detach()), grad_norm=float(grad_norm), **stats)

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The masked mean squared TD error of ``Q_tot`` against TD(lambda) targets (and diagnostics)."""
        cfg = self.config
        rewards = self.reward_stats.standardise(batch.reward) if cfg.standardise_rewards else batch.reward
        last_actions = torch.cat([torch.full_like(batch.actions[:, :1], -1), batch.actions], dim=1)
        inputs = agent_inputs(batch.obs, last_actions, self.n_actions)  # [B, T+1, n, D]
        q = self.agent.unroll(inputs)  # [B, T+1, n, A]
        q_taken = q[:, :-1].gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)  # [B, T, n]
        q_tot = self.mixer(q_taken, batch.state[:, :-1])  # [B, T, k]
        with torch.no_grad():
            values = self._state_values(q.detach(), inputs, batch)  # [B, T+1, k]
            targets = td_lambda_targets(
                rewards, batch.terminated, batch.filled, values, gamma=cfg.gamma, td_lambda=cfg.td_lambda
            )
        mask = batch.filled.unsqueeze(-1).expand_as(q_tot)
        # Padded steps hold arbitrary values (and targets built from them): select, never multiply.
        td_error = torch.where(mask.bool(), q_tot - targets, torch.zeros_like(q_tot))
        loss = td_error.pow(2).sum() / mask.sum()
        with torch.no_grad():
            stats = {
                "q_taken_mean": float((q_tot * mask).sum() / mask.sum()),
                "target_mean": float(torch.where(mask.bool(), targets, 0.0).sum() / mask.sum()),
            }
        return loss, stats

    def _state_values(self, q: torch.Tensor, inputs: torch.Tensor, batch: EpisodeBatch) -> torch.Tensor:
        target_q = self.target_agent.unroll(inputs).masked_fill(~batch.avail_actions, -torch.inf)
        if self.config.double_q:
            best = q.masked_fill(~batch.avail_actions, -torch.inf).argmax(dim=-1, keepdim=True)
            chosen = target_q.gather(-1, best).squeeze(-1)
        else:
            chosen = target_q.max(dim=-1).values
        # Padded states have no available action (-inf everywhere): they are never used, zero them.
        chosen = torch.where(torch.isfinite(chosen), chosen, torch.zeros_like(chosen))
        return self.target_mixer(chosen, batch.state)

    def _update_targets(self, new_episodes: int) -> None:
        if self.config.target_update == "soft":
            tau = self.config.tau
            for online, target in ((self.agent, self.target_agent), (self.mixer, self.target_mixer)):
                for p, tp in zip(online.parameters(), target.parameters(), strict=True):
                    tp.mul_(1 - tau).add_(p.detach(), alpha=tau)
            return
        self.episodes_since_target_update += new_episodes
        if self.episodes_since_target_update >= self.config.target_update_interval:
            self.target_agent.load_state_dict(self.agent.state_dict())
            self.target_mixer.load_state_dict(self.mixer.state_dict())
            self.episodes_since_target_update = 0

    def state_dict(self) -> dict[str, object]:
        return {
            "agent": self.agent.state_dict(),
            "mixer": self.mixer.state_dict(),
            "target_agent": self.target_agent.state_dict(),
            "target_mixer": self.target_mixer.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "reward_stats": self.reward_stats.state_dict(),
            "episodes_since_target_update": self.episodes_since_target_update,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.mixer.load_state_dict(state["mixer"])
        self.target_agent.load_state_dict(state["target_agent"])
        self.target_mixer.load_state_dict(state["target_mixer"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.reward_stats.load_state_dict(state["reward_stats"])
        self.episodes_since_target_update = int(state["episodes_since_target_update"])
