"""What the actor-critic learners (COMA, MADDPG) share: actor, centralised critic, optimisers, state.

The actor is the shared GRU agent network (:class:`~qllm.rl.agent.RNNAgent`) read as policy logits,
so acting, evaluation, the final model and ``qllm evaluate`` work as for the value-based learners:
training rollouts sample from the policy (:class:`~qllm.rl.runner.SamplePolicy`), evaluation takes its
most likely available action. The critic sees the global state, which only exists in training:
decentralised execution, centralised training.

The :class:`CentralCritic` is one MLP shared by all agents (agent id in), as EPyMARL's COMA and MADDPG
critics: for agent ``a`` it reads the state and the joint action as ``a`` should see it
(:func:`per_agent_actions`) and returns one value per own action (COMA) or one value (MADDPG).
Actor and critic have separate Adam optimisers with the same learning rate (EPyMARL's choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from qllm.envs import EnvInfo
from qllm.envs.episodes import Episodes
from qllm.rl.agent import build_agent
from qllm.rl.config import TrainConfig
from qllm.rl.learner import RunningMeanStd, TargetNetworks, gradient_step, masked_mean, masked_mse
from qllm.rl.optim import FusedAdam
from qllm.rl.policy import masked_logits
from qllm.rl.runner import SamplePolicy


class CentralCritic(nn.Module):
    """``(state [..., S], actions [..., n, n*A]) -> [..., n, out]``: state, agent ``a``'s view of the
    joint action and ``a``'s one-hot id through two ReLU layers (EPyMARL's critic shape)."""

    def __init__(self, info: EnvInfo, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        n, n_actions = info.n_agents, info.n_actions
        self.net = nn.Sequential(
            nn.Linear(info.state_dim + n * n_actions + n, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        n = actions.shape[-2]
        ids = torch.eye(n, dtype=state.dtype, device=state.device).expand(*actions.shape[:-1], n)
        per_agent_state = state.unsqueeze(-2).expand(*actions.shape[:-1], state.shape[-1])
        return self.net(torch.cat([per_agent_state, actions, ids], dim=-1))


def one_hot(actions: torch.Tensor, n_actions: int) -> torch.Tensor:
    """``[...]`` action indices -> float one-hots ``[..., A]``."""
    return F.one_hot(actions, n_actions).float()


def per_agent_actions(onehot: torch.Tensor, *, hide_own: bool) -> torch.Tensor:
    """Joint action one-hots ``[..., n, A]`` -> ``[..., n, n*A]``, row ``a`` as agent ``a``'s critic sees it.

    COMA hides ``a``'s own action (``hide_own``): its critic answers for every own action at once,
    which is what the counterfactual baseline needs. MADDPG keeps it, and only ``a``'s own action
    carries gradient into ``a``'s value: the other agents' actions are given, not ``a``'s to change.
    """
    n = onehot.shape[-2]
    seen = onehot.unsqueeze(-3).expand(*onehot.shape[:-2], n, n, onehot.shape[-1])
    own = torch.eye(n, dtype=torch.bool, device=onehot.device).unsqueeze(-1)  # [n, n, 1]
    per_agent = torch.where(own, torch.zeros_like(seen) if hide_own else seen, seen.detach())
    return per_agent.flatten(-2)


def policy_log_probs(logits: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the softmax policy over available actions (unavailable: about -1e10)."""
    return torch.log_softmax(masked_logits(logits, avail), dim=-1)


def entropy(log_pi: torch.Tensor) -> torch.Tensor:
    """Entropy of each policy ``[..., A] -> [...]``; unavailable actions (probability 0) add nothing."""
    return -(log_pi.exp() * log_pi).sum(-1)


@dataclass(frozen=True)
class ActorCriticStats:
    """Diagnostics of one update; ``loss`` and ``grad_norm`` are the critic's, as for the Q-learner."""

    loss: float
    grad_norm: float
    q_taken_mean: float
    target_mean: float
    policy_loss: float
    policy_grad_norm: float
    entropy: float
    """Mean policy entropy over the real steps (nats): how much exploration is left."""


class ActorCriticLearner:
    """Actor, critic, an Adam optimiser for each, reward statistics and state; subclasses add targets
    (``self.targets``) and ``update``."""

    on_policy: ClassVar[bool]
    targets: TargetNetworks
    """Set by the subclass: which networks have target copies differs (COMA: the critic only)."""
    credit = None
    """Their critics learn from the state itself: no credit function, no credit to store."""

    def __init__(self, config: TrainConfig, info: EnvInfo, critic: nn.Module, device: torch.device) -> None:
        self.config, self.n_actions = config, info.n_actions
        self.agent = build_agent(config, info).to(device)
        self.critic = critic.to(device)
        self.agent_parameters = list(self.agent.parameters())
        self.critic_parameters = list(self.critic.parameters())
        self.agent_optimiser = FusedAdam(self.agent_parameters, config.lr)
        self.critic_optimiser = FusedAdam(self.critic_parameters, config.lr)
        self.reward_stats = RunningMeanStd()

    def behaviour(self, t_env: int) -> SamplePolicy:
        return SamplePolicy()

    def networks(self) -> dict[str, nn.Module]:
        return {"agent": self.agent, "critic": self.critic}

    def close(self) -> None:
        """Nothing to release besides the networks."""

    def rewards(self, batch: Episodes) -> torch.Tensor:
        """The batch's rewards, standardised by running statistics (updated with them) if configured."""
        if not self.config.standardise_rewards:
            return batch.reward
        self.reward_stats.update(batch.reward[batch.filled.bool()])
        return self.reward_stats.standardise(batch.reward)

    def critic_step(
        self, q_taken: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, float]:
        """One step on the critic's squared TD error over the real steps (``mask [B, T, 1]``)."""
        loss = masked_mse(q_taken, targets, mask.expand_as(q_taken))
        grad_norm = gradient_step(self.critic_optimiser, loss, self.critic_parameters, self.config.grad_clip)
        return {
            "loss": float(loss.detach()),
            "grad_norm": grad_norm,
            "q_taken_mean": float(masked_mean(q_taken.detach(), mask)),
            "target_mean": float(masked_mean(targets, mask)),
        }

    def actor_step(
        self, policy_loss: torch.Tensor, policy_entropy: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, float]:
        """One step on the actors' loss; ``policy_entropy [B, T, n]`` is reported over the real steps."""
        grad_norm = gradient_step(
            self.agent_optimiser, policy_loss, self.agent_parameters, self.config.grad_clip
        )
        return {
            "policy_loss": float(policy_loss.detach()),
            "policy_grad_norm": grad_norm,
            "entropy": float(masked_mean(policy_entropy.detach(), mask)),
        }

    def _parts(self) -> dict[str, nn.Module | FusedAdam | RunningMeanStd | TargetNetworks]:
        return {
            "agent": self.agent,
            "critic": self.critic,
            "targets": self.targets,
            "agent_optimiser": self.agent_optimiser,
            "critic_optimiser": self.critic_optimiser,
            "reward_stats": self.reward_stats,
        }

    def state_dict(self) -> dict[str, object]:
        return {name: part.state_dict() for name, part in self._parts().items()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        for name, part in self._parts().items():
            part.load_state_dict(state[name])
