"""COMA: counterfactual multi-agent policy gradients (Foerster et al., "Counterfactual Multi-Agent
Policy Gradients", AAAI 2018), with EPyMARL's settings (``PRESETS["coma"]``).

Decentralised actors, one centralised critic, on-policy: each update learns once from the episodes
just collected, then they are discarded.

- **Actors**: the shared GRU agent network; agent ``a``'s policy ``pi_a(u | tau_a)`` is the softmax of
  its logits over the available actions (unavailable ones get probability 0).
- **Critic**: ``Q_a(s, u^-a, .)``: from the state and the *other* agents' actions, one value for each
  of ``a``'s own actions, so one forward pass gives every counterfactual of ``a``.
- **Counterfactual baseline**: ``b_a = sum_u' pi_a(u') Q_a(s, (u^-a, u'))``, the value of ``a``'s
  average action with everyone else's fixed. The advantage ``A_a = Q_a(s, u) - b_a`` says how much
  ``a``'s own choice added: its share of the team reward, without a per-agent reward.
- **Critic targets**: TD(lambda) (the paper's and pymarl's choice) from a target critic that is
  copied every ``target_update_interval`` episodes. They bootstrap from the expected value
  ``V_a(s) = sum_u pi_a(u) Q'_a(s, u^-a, u)`` (the baseline under the target critic). The state after
  an episode's last step has no joint action; there the other agents' most likely actions stand in.
- **Actor loss**: ``-(A_a log pi_a(u_a) + entropy_coef H(pi_a))``, averaged over agents and real steps.

Differences from EPyMARL's ``coma_learner``: lambda-returns instead of 10-step returns, and the actor
also sees its last action (every agent network here does).
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


def counterfactual_baseline(q: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """``b = sum_u pi(u) Q(u)``: ``q, pi [..., A]`` (one agent's Q for each own action, the others'
    actions fixed, and its policy) -> ``[...]``."""
    return (pi * q).sum(dim=-1)


def counterfactual_advantage(q: torch.Tensor, pi: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``A = Q(u) - sum_u' pi(u') Q(u')`` for the taken ``actions [...]``; ``q, pi [..., A]``."""
    q_taken = q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    return q_taken - counterfactual_baseline(q, pi)


def joint_actions_at_states(batch: Episodes, pi: torch.Tensor) -> torch.Tensor:
    """The joint action at each of the ``T + 1`` states ``[B, T+1, n]``: the one taken where a step
    happened, else (after the last step, and padding) each agent's most likely action under ``pi``."""
    acted = torch.cat([batch.filled, torch.zeros_like(batch.filled[:, :1])], dim=1).bool()
    taken = torch.cat([batch.actions, torch.zeros_like(batch.actions[:, :1])], dim=1)
    return torch.where(acted.unsqueeze(-1), taken, pi.argmax(dim=-1))


class COMALearner(ActorCriticLearner):
    """One critic step then one actor step per batch of fresh episodes."""

    on_policy: ClassVar[bool] = True

    def __init__(self, config: TrainConfig, info: EnvInfo, device: torch.device) -> None:
        super().__init__(config, info, CentralCritic(info, config.hidden_dim, info.n_actions), device)
        self.targets = TargetNetworks(config, self.critic)
        (self.target_critic,) = self.targets.networks

    def update(
        self,
        batch: Episodes,
        new_episodes: int,
        pending_credit: Callable[[], torch.Tensor] | None = None,
        after_unroll: Callable[[], None] | None = None,
    ) -> ActorCriticStats:
        """One update of the critic and the actors; ``pending_credit`` is never given (no credit function);
        ``after_unroll`` is called at once, if given (an on-policy learner's batches are collected in line,
        so the training loop gives none)."""
        if after_unroll is not None:
            after_unroll()
        cfg = self.config
        rewards = self.rewards(batch)
        mask = batch.filled.unsqueeze(-1)  # [B, T, 1]: every agent acts at every real step
        log_pi = policy_log_probs(
            self.agent.unroll(episode_inputs(batch, self.n_actions)), batch.avail_actions
        )
        pi = log_pi.exp()  # [B, T+1, n, A]

        # --- critic: Q_a(s, u^-a, .) regressed on TD(lambda) targets from the target critic --------
        joint = joint_actions_at_states(batch, pi.detach())
        critic_inputs = per_agent_actions(one_hot(joint, self.n_actions), hide_own=True)
        q = self.critic(batch.state, critic_inputs)  # [B, T+1, n, A]
        with torch.no_grad():
            values = counterfactual_baseline(self.target_critic(batch.state, critic_inputs), pi)
            targets = td_lambda_targets(
                rewards, batch.terminated, batch.filled, values, gamma=cfg.gamma, td_lambda=cfg.td_lambda
            )  # [B, T, n]
        q_taken = q[:, :-1].gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
        critic = self.critic_step(q_taken, targets, mask)

        # --- actors: policy gradient with the counterfactual advantage ----------------------------
        # The critic's values from before its step, as in EPyMARL; the advantage is a constant here.
        advantage = counterfactual_advantage(q[:, :-1].detach(), pi[:, :-1].detach(), batch.actions)
        log_pi_taken = log_pi[:, :-1].gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
        policy_entropy = entropy(log_pi[:, :-1])
        policy_loss = -masked_mean(advantage * log_pi_taken + cfg.entropy_coef * policy_entropy, mask)
        actor = self.actor_step(policy_loss, policy_entropy, mask)

        self.targets.update(new_episodes)
        return ActorCriticStats(**critic, **actor)
