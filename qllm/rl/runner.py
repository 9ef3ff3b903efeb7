"""Roll out the current policy in ``N`` environments stepped together in this process.

The episodes are collected by :func:`qllm.envs.episodes.rollout`, the loop that recordings use too.
Every step does one batched forward of the shared agent network for all agents of all environments
(an :class:`~qllm.rl.agent.Actor`: numpy on CPU, torch on the learner's GPU; from preallocated inputs),
then steps each still-running environment in a plain Python loop: on two cores that beats worker
processes (measured), and LBF/RWARE do not fit gymnasium's vector envs (their rewards are lists).

How the network's outputs become actions is a strategy, an :class:`ActionSelector`: epsilon-greedy over
Q-values for the value-based learners (greedy, epsilon 0, for evaluation), or a sample from the policy
whose logits they are for the actor-critic learners. Both respect the available actions.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from qllm.envs import EnvInfo, MultiAgentEnv, make_env
from qllm.envs.episodes import Episodes, finish, rollout_steps
from qllm.rl.agent import RNNAgent
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
    """Epsilon-greedy over available actions only: ``q, avail [E, n, A]`` (CPU) -> ``[E, n]``.

    The arithmetic is numpy's (a few microseconds where torch's small-tensor calls cost tens, on every
    step); the random numbers are still drawn from ``generator``, in the same order, so runs are the
    same as with torch throughout (argmax takes the first maximum in both)."""
    blocked = ~avail.numpy()
    greedy = np.where(blocked, -np.inf, q.detach().numpy()).argmax(axis=-1)
    if epsilon <= 0:
        return torch.from_numpy(greedy)
    scores = torch.rand(avail.shape, generator=generator).numpy()
    scores[blocked] = -1.0
    explore = torch.rand(greedy.shape, generator=generator).numpy() < epsilon
    return torch.from_numpy(np.where(explore, scores.argmax(axis=-1), greedy))


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

    def run(
        self,
        agent: RNNAgent,
        seeds: list[int],
        behaviour: ActionSelector | float,
        generator: torch.Generator,
        device: torch.device,
    ) -> tuple[Episodes, RolloutStats]:
        """One episode per seed (at most ``n_envs`` seeds), acting with ``behaviour`` (a number is the
        epsilon of epsilon-greedy)."""
        return finish(self.run_steps(agent, seeds, behaviour, generator, device))

    @torch.no_grad()
    def run_steps(
        self,
        agent: RNNAgent,
        seeds: list[int],
        behaviour: ActionSelector | float,
        generator: torch.Generator,
        device: torch.device,
    ) -> Generator[None, None, tuple[Episodes, RolloutStats]]:
        """:meth:`run` a step at a time (:func:`~qllm.envs.episodes.rollout_steps`). The agent's weights are
        read as each step uses them (a CPU actor holds views of them): leave them be until the end."""
        select = EpsilonGreedy(float(behaviour)) if isinstance(behaviour, int | float) else behaviour
        if not 1 <= len(seeds) <= len(self.envs):
            raise ValueError(f"need 1 to {len(self.envs)} seeds (one per environment), got {len(seeds)}")
        inputs = StepInputs(len(seeds), self.info)
        actor = agent.actor(len(seeds) * self.info.n_agents, device)

        def act(t: int, obs: np.ndarray, avail_actions: np.ndarray) -> np.ndarray:
            inputs.observe(obs)
            outputs = actor.step(inputs.array)
            actions = select(outputs, torch.from_numpy(avail_actions), generator).numpy()
            inputs.acted(actions)  # the network has read this step's inputs: the next step's last actions
            return actions

        episodes = yield from rollout_steps(self.envs[: len(seeds)], seeds, act)
        reward, filled = episodes.reward.numpy(), episodes.filled.numpy()
        stats = RolloutStats(
            returns=(reward * filled).sum(1).tolist(), lengths=filled.sum(1).astype(int).tolist()
        )
        return episodes, stats
