"""The one environment contract every cooperative task implements.

Modelled on EPyMARL's ``MultiAgentEnv``, reduced to what a value-decomposition learner and the credit
assignment graph need: per-agent observations, a described global state, available actions, one
shared team reward, and an episode limit. A step returns everything at once as a :class:`TimeStep`,
so callers never have to remember which getter to call after which method.

Adapters implement three small hooks (``_reset``, ``_step``, ``_observe``); the bookkeeping that must be
identical for every family (action validation, step counting, the episode limit, last-action
tracking) lives once, in :class:`MultiAgentEnv`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qllm.envs.schema import StateField, StateSchema

CHECKS = os.environ.get("QLLM_CHECKS", "") == "1"
"""Check every joint action and every time step against the contract (``QLLM_CHECKS=1``; the tests set
it). Off by default: the trainer only ever chooses available actions, and at several thousand steps
per second the checks cost more than the simulator's own step."""


@dataclass(frozen=True)
class EnvInfo:
    """Static facts about a task, fixed for the life of an environment."""

    task: str
    """Canonical task name, e.g. ``lbf-2s-10x10-3p-3f``."""
    n_agents: int
    """Number of agents in the cooperative team (opponents, if any, are part of the environment)."""
    n_actions: int
    """Discrete actions per agent (the same for every agent)."""
    obs_dim: int
    """Length of one agent's observation vector."""
    episode_limit: int
    """Maximum number of steps in an episode; reaching it truncates the episode."""
    agent_names: tuple[str, ...]
    """Names of the team's agents, in agent-index order."""
    action_names: tuple[str, ...]
    """Meaning of each action index."""
    schema: StateSchema
    """Layout and meaning of the global state."""

    @property
    def state_dim(self) -> int:
        return self.schema.size

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "n_agents": self.n_agents,
            "n_actions": self.n_actions,
            "obs_dim": self.obs_dim,
            "state_dim": self.state_dim,
            "episode_limit": self.episode_limit,
            "agent_names": list(self.agent_names),
            "action_names": list(self.action_names),
            "schema": self.schema.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvInfo:
        return cls(
            task=data["task"],
            n_agents=int(data["n_agents"]),
            n_actions=int(data["n_actions"]),
            obs_dim=int(data["obs_dim"]),
            episode_limit=int(data["episode_limit"]),
            agent_names=tuple(data["agent_names"]),
            action_names=tuple(data["action_names"]),
            schema=StateSchema.from_dict(data["schema"]),
        )


@dataclass(frozen=True)
class TimeStep:
    """What an agent team sees after ``reset`` or ``step``."""

    obs: np.ndarray
    """Per-agent observations, float32 ``[n_agents, obs_dim]``."""
    state: np.ndarray
    """Global state, float32 ``[state_dim]``, laid out by the task's :class:`StateSchema`."""
    avail_actions: np.ndarray
    """Which actions each agent may take next, bool ``[n_agents, n_actions]``."""
    reward: float = 0.0
    """Team reward of the transition that led here (0.0 after ``reset``)."""
    terminated: bool = False
    """The episode ended in a terminal state (do not bootstrap)."""
    truncated: bool = False
    """The episode hit its step limit (a learner may bootstrap from ``state``)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Family-specific extras, e.g. per-agent rewards; never needed to learn."""

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


def last_action_field(n_agents: int, action_names: tuple[str, ...], entity: str = "agent") -> StateField:
    """The ``last_action`` state field: the one-hots :class:`MultiAgentEnv` tracks for every family."""
    return StateField(
        "last_action",
        entity,
        n_agents,
        action_names,
        f"one-hot of the action each {entity} took at the previous step; all zeros at the first step",
        low=0,
        high=1,
    )


class MultiAgentEnv(ABC):
    """A cooperative team of ``n_agents`` acting simultaneously with discrete actions."""

    info: EnvInfo

    def __init__(self, info: EnvInfo) -> None:
        self.info = info
        self._t = 0
        self._done = True
        # One-hot of each agent's previous action; zeros at the start of an episode. Several schemas
        # expose it as the `last_action` field, so it is tracked here once for every family.
        self._last_action = np.zeros((info.n_agents, info.n_actions), dtype=np.float32)
        self._avail = np.ones((info.n_agents, info.n_actions), dtype=bool)
        self._agents = np.arange(info.n_agents)

    # --- public API -------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> TimeStep:
        """Start a new episode. The same ``seed`` and actions always give the same episode."""
        self._t = 0
        self._done = False
        self._last_action[:] = 0.0
        self._reset(seed)
        return self._timestep()

    def step(self, actions: Sequence[int] | np.ndarray) -> TimeStep:
        """Apply one joint action (one index per agent) and return the next time step."""
        if self._done:
            raise RuntimeError("step() called on a finished episode: call reset() first")
        joint = self._validate(actions) if CHECKS else np.asarray(actions, dtype=np.int64)
        self._last_action[:] = 0.0
        self._last_action[self._agents, joint] = 1.0
        reward, terminated, info = self._step(joint)
        self._t += 1
        truncated = not terminated and self._t >= self.info.episode_limit
        self._done = terminated or truncated
        return self._timestep(reward=reward, terminated=terminated, truncated=truncated, info=info)

    @property
    def t(self) -> int:
        """Steps taken in the current episode."""
        return self._t

    def close(self) -> None:  # noqa: B027  (optional hook: most simulators hold nothing to release)
        """Release simulator resources (renderers, windows)."""

    # --- hooks for adapters -----------------------------------------------------------------------

    @abstractmethod
    def _reset(self, seed: int | None) -> None:
        """Reset the underlying simulator (seeded when ``seed`` is not None)."""

    @abstractmethod
    def _step(self, actions: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        """Advance the simulator; return (team reward, terminated, info)."""

    @abstractmethod
    def _observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Current (obs ``[n, obs_dim]``, state ``[state_dim]``, avail_actions ``[n, n_actions]``)."""

    # --- internals --------------------------------------------------------------------------------

    def _validate(self, actions: Sequence[int] | np.ndarray) -> np.ndarray:
        joint = np.asarray(actions)
        n, n_actions = self.info.n_agents, self.info.n_actions
        if joint.shape != (n,) or not np.issubdtype(joint.dtype, np.integer):
            raise ValueError(f"expected {n} integer actions, got {joint.tolist()!r}")
        if joint.min() < 0 or joint.max() >= n_actions:
            raise ValueError(f"actions must be in [0, {n_actions}), got {joint.tolist()}")
        unavailable = np.flatnonzero(~self._avail[self._agents, joint])
        if unavailable.size:
            raise ValueError(
                f"agents {unavailable.tolist()} chose unavailable actions "
                f"{[self.info.action_names[joint[i]] for i in unavailable]}"
            )
        return joint.astype(np.int64)

    def _timestep(self, **kwargs: Any) -> TimeStep:
        obs, state, avail = self._observe()
        if CHECKS:
            self._check_observation(obs, state, avail)
        self._avail = avail  # what the next step() validates against
        return TimeStep(obs=obs, state=state, avail_actions=avail, **kwargs)

    def _pack_state(self, values: dict[str, Any]) -> np.ndarray:
        """The flat state from one value per schema field, for ``_observe`` (checked in debug mode)."""
        return self.info.schema.pack(values, check=CHECKS)

    def _check_observation(self, obs: np.ndarray, state: np.ndarray, avail: np.ndarray) -> None:
        info = self.info
        expected = {
            "obs": (obs, (info.n_agents, info.obs_dim), np.float32),
            "state": (state, (info.state_dim,), np.float32),
            "avail_actions": (avail, (info.n_agents, info.n_actions), np.bool_),
        }
        for name, (value, shape, dtype) in expected.items():
            if value.shape != shape or value.dtype != dtype:
                raise ValueError(
                    f"{type(self).__name__} returned {name} of shape {value.shape} and dtype {value.dtype}, "
                    f"the contract says {shape} {np.dtype(dtype)}"
                )
        if not avail.any(axis=1).all():
            raise ValueError(f"agents {np.flatnonzero(~avail.any(axis=1)).tolist()} have no available action")
