"""Roll out the current policy in ``N`` environments stepped together in this process.

Every step does one batched forward of the shared agent network for all agents of all environments
(on the learner's device), then steps each still-running environment in a plain Python loop: on two
cores that beats worker processes, and LBF/RWARE do not fit gymnasium's vector envs (facts.md).

How the network's outputs become actions is a strategy, an :class:`ActionSelector`: epsilon-greedy over
Q-values for the value-based learners (greedy, epsilon 0, for evaluation), or a sample from the policy
whose logits they are for the actor-critic learners. Both respect the available actions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import torch

from qllm.envs import EnvInfo, MultiAgentEnv, TimeStep, make_env
from qllm.rl.agent import RNNAgent
from qllm.rl.buffer import EpisodeBatch
from qllm.rl.policy import sample_actions


@dataclass(frozen=True)
class RolloutStats:
    returns: list[float]
    lengths: list[int]

    @property
    def steps(self) -> int:
        return sum(self.lengths)


def select_actions(
    q: torch.Tensor, avail: torch.Tensor, epsilon: float, generator: torch.Generator
) -> torch.Tensor:
    """Epsilon-greedy over available actions only: ``q, avail [E, n, A]`` -> ``[E, n]``."""
    greedy = q.masked_fill(~avail, -torch.inf).argmax(dim=-1)
    if epsilon <= 0:
        return greedy
    scores = torch.rand(avail.shape, generator=generator).masked_fill(~avail, -1.0)
    explore = torch.rand(greedy.shape, generator=generator) < epsilon
    return torch.where(explore, scores.argmax(dim=-1), greedy)


class ActionSelector(Protocol):
    """Turns the agent network's outputs ``[E, n, A]`` into actions ``[E, n]`` among ``avail``."""

    def __call__(
        self, outputs: torch.Tensor, avail: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class EpsilonGreedy:
    """Outputs are Q-values: the best available action, or with probability ``epsilon`` a random one."""

    epsilon: float

    def __call__(
        self, outputs: torch.Tensor, avail: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        return select_actions(outputs, avail, self.epsilon, generator)


@dataclass(frozen=True)
class SamplePolicy:
    """Outputs are policy logits: sample from their softmax over the available actions. Exploration is
    the policy's own randomness, so there is no epsilon (EPyMARL's ``soft_policies`` for COMA, and the
    Gumbel-softmax draw of its MADDPG controller, which samples the same distribution)."""

    def __call__(
        self, outputs: torch.Tensor, avail: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        return sample_actions(outputs, avail, generator)


GREEDY = EpsilonGreedy(0.0)
"""Evaluation: the best available action (for logits, the policy's most likely available action)."""


class StepInputs:
    """The agent network's inputs for one time step of ``E`` environments, ``[E, n, O + A + n]``
    (observation, one-hot of the last action, agent id: :func:`~qllm.rl.agent.agent_inputs`), kept in
    one preallocated array that each step overwrites instead of building new tensors."""

    def __init__(self, n_envs: int, info: EnvInfo) -> None:
        n, self.obs_dim, self.n_actions = info.n_agents, info.obs_dim, info.n_actions
        self.array = np.zeros((n_envs, n, self.obs_dim + self.n_actions + n), dtype=np.float32)
        self.array[:, :, self.obs_dim + self.n_actions :] = np.eye(n, dtype=np.float32)
        self.tensor = torch.from_numpy(self.array)
        """Shares the array's memory."""
        self._last_action = self.array[:, :, self.obs_dim : self.obs_dim + self.n_actions]
        self._envs, self._agents = np.indices((n_envs, n))

    def observe(self, obs: np.ndarray) -> None:
        self.array[:, :, : self.obs_dim] = obs

    def acted(self, actions: np.ndarray) -> None:
        """The joint actions ``[E, n]`` just taken become the next step's last actions."""
        self._last_action[:] = 0.0
        self._last_action[self._envs, self._agents, actions] = 1.0


class ParallelRunner:
    """Collects batches of whole episodes from ``n_envs`` environments of one task."""

    def __init__(self, task: str, n_envs: int) -> None:
        if n_envs < 1:
            raise ValueError(f"need at least one environment, got {n_envs}")
        self.envs: list[MultiAgentEnv] = [make_env(task) for _ in range(n_envs)]
        self.info = self.envs[0].info

    def close(self) -> None:
        for env in self.envs:
            env.close()

    @torch.no_grad()
    def run(
        self,
        agent: RNNAgent,
        seeds: list[int],
        behaviour: ActionSelector | float,
        generator: torch.Generator,
        device: torch.device,
    ) -> tuple[EpisodeBatch, RolloutStats]:
        """One episode per seed (at most ``n_envs`` seeds), acting with ``behaviour`` (a number is the
        epsilon of epsilon-greedy)."""
        select = EpsilonGreedy(float(behaviour)) if isinstance(behaviour, int | float) else behaviour
        if not 1 <= len(seeds) <= len(self.envs):
            raise ValueError(f"need 1 to {len(self.envs)} seeds (one per environment), got {len(seeds)}")
        info, n_envs = self.info, len(seeds)
        limit, n = info.episode_limit, info.n_agents
        batch = EpisodeBatch.zeros(n_envs, info)
        data = {f.name: getattr(batch, f.name).numpy() for f in fields(batch)}  # views: writes fill `batch`
        envs = self.envs[:n_envs]
        for e, (env, seed) in enumerate(zip(envs, seeds, strict=True)):
            self._store_state(data, e, 0, env.reset(seed=seed))
        active = np.ones(n_envs, dtype=bool)
        inputs = StepInputs(n_envs, info)
        hidden = agent.initial_hidden(n_envs * n, device)
        for t in range(limit):
            inputs.observe(data["obs"][:, t])
            outputs, hidden = agent.step(inputs.tensor.to(device), hidden)
            avail = torch.from_numpy(data["avail_actions"][:, t])
            actions = select(outputs.cpu(), avail, generator).numpy()
            for e in np.flatnonzero(active):
                ts = envs[e].step(actions[e])
                data["actions"][e, t] = actions[e]
                data["reward"][e, t] = ts.reward
                data["terminated"][e, t] = ts.terminated
                data["filled"][e, t] = 1.0
                self._store_state(data, e, t + 1, ts)
                active[e] = not ts.done
            if not active.any():
                break
            inputs.acted(actions)
        stats = RolloutStats(
            returns=(data["reward"] * data["filled"]).sum(1).tolist(),
            lengths=data["filled"].sum(1).astype(int).tolist(),
        )
        return batch, stats

    @staticmethod
    def _store_state(data: dict[str, np.ndarray], e: int, t: int, ts: TimeStep) -> None:
        data["obs"][e, t] = ts.obs
        data["state"][e, t] = ts.state
        data["avail_actions"][e, t] = ts.avail_actions
