"""MADDPG for discrete actions (Lowe et al., "Multi-Agent Actor-Critic for Mixed Cooperative-Competitive
Environments", NeurIPS 2017), in the Gumbel-softmax form EPyMARL uses for these benchmarks
(``PRESETS["maddpg"]``).

Deterministic policy gradients need actions the critic can be differentiated through; with discrete
actions the actor's sample is relaxed with the straight-through Gumbel-softmax (Jang et al. 2017): the
critic sees a one-hot action, and the gradient flows as if it had seen the soft sample.

- **Actors**: the shared GRU agent network, logits over the available actions. Acting samples from
  their softmax (the Gumbel-max draw of EPyMARL's controller); evaluation takes the most likely action.
- **Critic**: ``Q_a(s, u_1..u_n)``, one centralised value per agent from the state and the whole
  joint action (one network shared by the agents, agent id in). Off-policy, from the replay buffer.
- **Critic targets**: one step, ``r + gamma Q'_a(s', mu'(tau'))`` with the target actors' most likely
  actions ``mu'`` and the target critic ``Q'``; both targets are copied every
  ``target_update_interval`` episodes (soft updates with ``target_update="soft"``).
- **Actor loss**: ``-Q_a(s, u^-a, g_a)`` where every agent's action is a fresh Gumbel-softmax sample of
  the current policy and only ``a``'s own ``g_a`` carries gradient, plus ``policy_reg`` times the mean
  squared logit of the available actions (EPyMARL's ``reg``; it keeps the logits bounded).

Differences from EPyMARL's ``maddpg_learner``: padded steps after an episode's end are masked out of
both losses, and the actor also sees its last action (every agent network here does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from qllm.envs import EnvInfo
from qllm.envs.episodes import Episodes
from qllm.rl.actor_critic import (
    ActorCriticLearner,
    ActorCriticStats,
    CentralCritic,
    entropy,
    one_hot,
    per_agent_actions,
    policy_log_probs,
)
from qllm.rl.agent import episode_inputs
from qllm.rl.config import TrainConfig
from qllm.rl.learner import TargetNetworks, masked_mean, td_lambda_targets
from qllm.rl.policy import gumbel_softmax_hard, masked_logits


class MADDPGLearner(ActorCriticLearner):
    """One critic step then one actor step per replayed batch; target actor and critic."""

    on_policy: ClassVar[bool] = False

    def __init__(self, config: TrainConfig, info: EnvInfo, device: torch.device) -> None:
        super().__init__(config, info, CentralCritic(info, config.hidden_dim, 1), device)
        self.targets = TargetNetworks(config, self.agent, self.critic)
        self.target_agent, self.target_critic = self.targets.networks
        # The actor update's Gumbel noise: its own generator, saved with the learner for exact resume.
        self.generator = torch.Generator().manual_seed(config.seed)

    def value(self, critic: torch.nn.Module, state: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Each agent's value ``[..., n]`` of the joint action ``onehot [..., n, A]`` in ``state``."""
        return critic(state, per_agent_actions(onehot, hide_own=False)).squeeze(-1)

    def update(
        self,
        batch: Episodes,
        new_episodes: int,
        pending_credit: Callable[[], torch.Tensor] | None = None,
        after_unroll: Callable[[], None] | None = None,
    ) -> ActorCriticStats:
        """One update of the critic and the actors; ``pending_credit`` is never given (no credit function);
        ``after_unroll`` is called at once (no part of this update leaves a core free)."""
        if after_unroll is not None:
            after_unroll()
        cfg = self.config
        rewards = self.rewards(batch)
        mask = batch.filled.unsqueeze(-1)  # [B, T, 1]
        inputs = episode_inputs(batch, self.n_actions)

        # --- critic: Q_a(s, u) regressed on one-step targets from the target actors and critic -----
        q_taken = self.value(self.critic, batch.state[:, :-1], one_hot(batch.actions, self.n_actions))
        with torch.no_grad():
            target_logits = masked_logits(self.target_agent.unroll(inputs), batch.avail_actions)
            target_actions = one_hot(target_logits.argmax(dim=-1), self.n_actions)  # [B, T+1, n, A]
            values = self.value(self.target_critic, batch.state, target_actions)
            # td_lambda 0: replayed episodes come from older policies, so multi-step returns would be biased.
            targets = td_lambda_targets(
                rewards, batch.terminated, batch.filled, values, gamma=cfg.gamma, td_lambda=0.0
            )
        critic = self.critic_step(q_taken, targets, mask)

        # --- actors: ascend the critic through a Gumbel-softmax sample of each agent's own action ----
        logits = self.agent.unroll(inputs)[:, :-1]
        avail = batch.avail_actions[:, :-1]
        sampled = gumbel_softmax_hard(logits, avail, self.generator)
        q = self.value(self.critic, batch.state[:, :-1], sampled)
        regulariser = masked_mean(logits.pow(2), avail & mask.unsqueeze(-1).bool())
        policy_loss = -masked_mean(q, mask) + cfg.policy_reg * regulariser
        with torch.no_grad():
            policy_entropy = entropy(policy_log_probs(logits, avail))
        actor = self.actor_step(policy_loss, policy_entropy, mask)

        self.targets.update(new_episodes)
        return ActorCriticStats(**critic, **actor)

    def state_dict(self) -> dict[str, object]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"].cpu())  # map_location may have moved it
