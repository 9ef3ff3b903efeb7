"""Your own environment behind the contract: a PettingZoo ``ParallelEnv``, or a gymnasium environment
with the tuple-of-agents convention (LBF's and RWARE's), with a state schema you declare.

An :class:`EnvTask` says everything qllm needs that an environment does not: what its global state
means (:class:`DeclaredField` s, or a function that computes it), who the team is, how the team reward
is aggregated, what drives the agents outside the team, and how long an episode is. ``task.spec()`` is
the :class:`~qllm.envs.tasks.TaskSpec` a plugin hands to qllm::

    EnvTask(
        name="my-grid",
        make=lambda: MyParallelEnv(size=5),
        description="Two agents must ...",
        episode_limit=25,
        state=(
            DeclaredField(name="agent_position", entity="agent", count=2, features=("row", "col"),
                          meaning="each agent's cell", low=0, high=4),
            DeclaredField(name="goal_position", entity="goal", features=("row", "col"),
                          meaning="the goal's cell", low=0, high=4),
        ),
    ).spec()

By default the state is the environment's own ``state()`` vector: fields in order tile it exactly, or
each field names its ``at`` slice of it. ``state_fn(env)`` replaces it, returning that vector or one
array per field name.

A declaration is checked against the environment, not trusted: a state of the wrong size or shape is
refused when the environment is built, and every state it produces is checked against the declared
ranges (NaN included), so a field that is not what it says stops recording or training at once with
one line naming the field, instead of misleading the LLM that reads the schema. (The built-in adapters
check only in debug mode; a declaration is new code, and the check costs microseconds per step.)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any

import gymnasium as gym
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from qllm.envs.contract import EnvInfo, MultiAgentEnv
from qllm.envs.probes import ProbeMaker
from qllm.envs.schema import StateField, StateSchema
from qllm.envs.tasks import DEFAULT_TRIAL_STEPS, TaskPluginError, TaskSpec

OpponentPolicy = Callable[[str, Any, np.ndarray, np.random.Generator], int]
"""Chooses the action of one agent outside the team from (its name, its observation, its available
actions as a bool mask, a generator seeded with the episode)."""


class TeamReward(StrEnum):
    """How the team's reward is made from its agents' rewards."""

    SUM = "sum"
    """Their sum (EPyMARL's convention for environments with per-agent rewards)."""
    MEAN = "mean"
    SHARED = "shared"
    """Every team agent receives the same reward, which is the team's (checked at every step)."""


REWARD_TEXT = {
    TeamReward.SUM: "the sum of the team agents' rewards",
    TeamReward.MEAN: "the mean of the team agents' rewards",
    TeamReward.SHARED: "the reward every team agent receives (the same for all)",
}


class StateMismatchError(TaskPluginError):
    """The environment's states are not what the declared schema says."""


class DeclaredField(BaseModel):
    """One field of the global state: ``count`` entities (rows) by ``features`` (columns)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    meaning: str
    entity: str = "value"
    """What one row is: ``agent``, ``landmark``, ..."""
    count: int = Field(default=1, ge=1)
    features: tuple[str, ...] = ("value",)
    low: float = -math.inf
    high: float = math.inf
    at: tuple[int, int] | None = None
    """Where the field lies in the environment's state vector (``start, stop``); None: right after the
    previous field."""

    @property
    def size(self) -> int:
        return self.count * len(self.features)

    def state_field(self) -> StateField:
        return StateField(
            self.name, self.entity, self.count, self.features, self.meaning, low=self.low, high=self.high
        )


class EnvTask(BaseModel):
    """A task made from your own environment (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    make: Callable[[], Any]
    """Builds the PettingZoo ``ParallelEnv`` or gymnasium environment (no arguments)."""
    description: str
    """What happens in the task and what the team must achieve (for people and for the LLM)."""
    episode_limit: int = Field(ge=1)
    """Steps in an episode at most; the environment may end it earlier, never truncate it earlier."""
    state: tuple[DeclaredField, ...] = Field(min_length=1)
    summary: str = ""
    family: str = "custom"
    team: tuple[str, ...] | None = None
    """The PettingZoo agents the learner controls, in order; None: every agent."""
    team_text: str | None = None
    team_reward: TeamReward = TeamReward.SUM
    reward_text: str | None = None
    """How the rewards arise, in words; the aggregation is added to it."""
    opponent: OpponentPolicy | None = None
    """Drives the agents outside the team; None: uniformly random among their available actions."""
    opponent_text: str | None = None
    state_fn: Callable[[Any], Any] | None = None
    """Computes the state from the environment (a vector, or one array per field name); None: the
    environment's own ``state()``."""
    avail_actions_fn: Callable[[Any], Any] | None = None
    """Available actions ``[n_team, n_actions]`` from the environment; None: from ``action_mask`` in the
    observations (a dict observation) or the infos, else every action."""
    action_names: tuple[str, ...] | None = None
    probes: ProbeMaker | None = None
    trial_steps: int = Field(default=DEFAULT_TRIAL_STEPS, ge=1)

    @model_validator(mode="after")
    def _schema_is_valid(self) -> EnvTask:
        self.schema()  # names, duplicates and ranges are checked by StateSchema
        return self

    def schema(self) -> StateSchema:
        return StateSchema(tuple(f.state_field() for f in self.state))

    def spec(self) -> TaskSpec:
        team = self.team_text or (
            f"{', '.join(self.team)}, controlled" if self.team else "every agent, controlled"
        )
        reward = REWARD_TEXT[self.team_reward]
        opponent = self.opponent_text
        if opponent is None and self.team is not None:
            opponent = (
                "the plugin's opponent policy" if self.opponent else "uniformly random available actions"
            )
        return TaskSpec(
            name=self.name,
            family=self.family,
            summary=self.summary or self.description.split(". ")[0][:80],
            description=self.description,
            team=team,
            reward=f"{self.reward_text}; the team reward is {reward}" if self.reward_text else reward,
            factory=lambda: DeclaredEnv(self),
            opponent=opponent,
            probes=self.probes,
            trial_steps=self.trial_steps,
        )


# --- the two conventions ----------------------------------------------------------------------------


def _observation_and_mask(obs: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """PettingZoo's masked-observation convention: ``{"observation": ..., "action_mask": ...}``."""
    if isinstance(obs, Mapping) and "observation" in obs:
        mask = obs.get("action_mask")
        return np.asarray(obs["observation"], dtype=np.float32).reshape(-1), (
            None if mask is None else np.asarray(mask, dtype=bool)
        )
    return np.asarray(obs, dtype=np.float32).reshape(-1), None


class _Driver(ABC):
    """One convention's reset and step, in terms of agent names."""

    agents: tuple[str, ...]
    """Every agent, in the environment's order."""
    team: tuple[str, ...]
    """The controlled agents, in agent-index order."""
    n_actions: int
    action_spaces: dict[str, gym.spaces.Discrete]

    @abstractmethod
    def reset(self, seed: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(observations, infos) by agent."""

    @abstractmethod
    def step(
        self, actions: dict[str, int]
    ) -> tuple[dict[str, Any], dict[str, float], bool, bool, dict[str, Any]]:
        """(observations, team rewards, terminated, truncated, infos), by agent where per agent."""


class _ParallelDriver(_Driver):
    def __init__(self, env: Any, name: str, team: tuple[str, ...] | None) -> None:
        self.env = env
        self.agents = tuple(env.possible_agents)
        unknown = sorted(set(team or ()) - set(self.agents))
        if unknown:
            raise TaskPluginError(f"task {name!r}: team agents {unknown} are not among {list(self.agents)}")
        self.team = tuple(team or self.agents)
        sizes = {int(env.action_space(a).n) for a in self.team}
        if len(sizes) != 1:
            raise TaskPluginError(
                f"task {name!r}: team agents have different numbers of actions {sorted(sizes)}"
            )
        self.n_actions = sizes.pop()
        self.action_spaces = {a: env.action_space(a) for a in self.agents}

    def reset(self, seed: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
        obs, infos = self.env.reset(seed=seed)
        return dict(obs), dict(infos or {})

    def step(
        self, actions: dict[str, int]
    ) -> tuple[dict[str, Any], dict[str, float], bool, bool, dict[str, Any]]:
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        terminated = any(bool(terminations.get(a, False)) for a in self.team)
        truncated = any(bool(truncations.get(a, False)) for a in self.team)
        return (
            dict(obs),
            {a: float(rewards.get(a, 0.0)) for a in self.team},
            terminated,
            truncated,
            dict(infos),
        )


class _TupleDriver(_Driver):
    """gymnasium with one entry per agent in observations, actions and rewards (``lbforaging``, ``rware``)."""

    def __init__(self, env: gym.Env, name: str, team: tuple[str, ...] | None) -> None:
        if team is not None:
            raise TaskPluginError(
                f"task {name!r}: a tuple-of-agents environment has no agent names; leave team unset"
            )
        self.env = env
        spaces = env.action_space
        if not isinstance(spaces, gym.spaces.Tuple) or not all(
            isinstance(s, gym.spaces.Discrete) for s in spaces
        ):
            raise TaskPluginError(f"task {name!r}: the action space is {spaces}, not a Tuple of Discrete")
        self.agents = self.team = tuple(f"agent_{i}" for i in range(len(spaces)))
        self.action_spaces = dict(zip(self.agents, spaces, strict=True))
        sizes = {int(s.n) for s in spaces}
        if len(sizes) != 1:
            raise TaskPluginError(f"task {name!r}: agents have different numbers of actions {sorted(sizes)}")
        self.n_actions = sizes.pop()

    def reset(self, seed: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
        obs, info = self.env.reset(seed=seed)
        return dict(zip(self.agents, obs, strict=True)), self._infos(info)

    def step(
        self, actions: dict[str, int]
    ) -> tuple[dict[str, Any], dict[str, float], bool, bool, dict[str, Any]]:
        obs, rewards, terminated, truncated, info = self.env.step([actions[a] for a in self.agents])
        return (
            dict(zip(self.agents, obs, strict=True)),
            {a: float(r) for a, r in zip(self.agents, np.ravel(rewards), strict=True)},
            bool(np.all(terminated)),
            bool(np.any(truncated)),
            self._infos(info),
        )

    def _infos(self, info: Any) -> dict[str, Any]:
        mask = (info or {}).get("action_mask")
        return {} if mask is None else {a: {"action_mask": m} for a, m in zip(self.agents, mask, strict=True)}


def _driver(env: Any, name: str, team: tuple[str, ...] | None) -> _Driver:
    if hasattr(env, "possible_agents"):
        return _ParallelDriver(env, name, team)
    if isinstance(env, gym.Env):
        return _TupleDriver(env, name, team)
    raise TaskPluginError(
        f"task {name!r}: make() returned a {type(env).__name__}, neither a PettingZoo ParallelEnv nor a "
        "gymnasium environment"
    )


# --- the adapter --------------------------------------------------------------------------------------


class DeclaredEnv(MultiAgentEnv):
    """An environment of an :class:`EnvTask`, behind the contract."""

    def __init__(self, task: EnvTask) -> None:
        self.task = task
        self.env = task.make()
        self.driver = _driver(self.env, task.name, task.team)
        schema = task.schema()
        self._obs, self._infos = self.driver.reset(seed=0)  # agents and spaces exist only after a reset
        obs_sizes = {_observation_and_mask(self._obs[a])[0].size for a in self.driver.team}
        if len(obs_sizes) != 1:
            raise TaskPluginError(
                f"task {task.name!r}: team agents observe different sizes {sorted(obs_sizes)}"
            )
        names = task.action_names or tuple(f"action_{k}" for k in range(self.driver.n_actions))
        if len(names) != self.driver.n_actions:
            raise TaskPluginError(
                f"task {task.name!r}: {len(names)} action names for {self.driver.n_actions} actions"
            )
        super().__init__(
            EnvInfo(
                task=task.name,
                n_agents=len(self.driver.team),
                n_actions=self.driver.n_actions,
                obs_dim=obs_sizes.pop(),
                episode_limit=task.episode_limit,
                agent_names=self.driver.team,
                action_names=names,
                schema=schema,
            )
        )
        self._low = np.concatenate([np.full(f.size, f.low, dtype=np.float32) for f in schema])
        self._high = np.concatenate([np.full(f.size, f.high, dtype=np.float32) for f in schema])
        first = self._read_source()
        # A vector is gathered by index (checked against its length once, here); a mapping is packed by
        # field name and checked field by field at every state.
        self._gather = None if isinstance(first, Mapping) else self._source_indices(first.size)
        # How many entries a state vector must have for the gather: found once, checked at every state.
        self._needed = 0 if self._gather is None else int(self._gather.max()) + 1
        self._rng = np.random.default_rng(0)

    # --- the state, checked against the declaration ---------------------------------------------------

    def _mismatch(self, message: str) -> StateMismatchError:
        return StateMismatchError(f"task {self.task.name!r}: {message}")

    def _read_source(self) -> np.ndarray | Mapping[str, Any]:
        """What ``state_fn`` (or the environment's ``state()``) gives: a flat vector, or arrays by field."""
        source = self.task.state_fn(self.env) if self.task.state_fn else self.env.state()
        return source if isinstance(source, Mapping) else np.asarray(source, dtype=np.float32).reshape(-1)

    def _source_indices(self, length: int) -> np.ndarray:
        """Where each state entry comes from in a state vector of ``length`` numbers."""
        parts, start = [], 0
        for f in self.task.state:
            if f.at is not None:
                start, stop = f.at
                if stop - start != f.size:
                    raise self._mismatch(
                        f"state field {f.name!r} declares {f.count} x {len(f.features)} = {f.size} numbers "
                        f"but its slice {start}:{stop} holds {stop - start}"
                    )
            stop = start + f.size
            if stop > length:
                raise self._mismatch(
                    f"state field {f.name!r} needs entries {start}:{stop} of the environment's state, which "
                    f"has {length}"
                )
            parts.append(np.arange(start, stop))
            start = stop
        declared = sum(f.size for f in self.task.state)
        if all(f.at is None for f in self.task.state) and declared != length:
            raise self._mismatch(
                f"the declared fields hold {declared} numbers, the environment's state has {length} "
                "(declare every part, or give each field its `at` slice)"
            )
        return np.concatenate(parts)

    def _state(self) -> np.ndarray:
        source = self._read_source()
        if isinstance(source, Mapping):
            return self._pack_fields(source)
        if self._gather is None:
            raise self._mismatch("state_fn returned a vector after returning arrays by field name")
        if source.size < self._needed:
            raise self._mismatch(f"the environment's state now has {source.size} numbers, it had more before")
        return source[self._gather]

    def _pack_fields(self, values: Mapping[str, Any]) -> np.ndarray:
        for f in self.info.schema:
            if f.name not in values:
                raise self._mismatch(f"state_fn returned no value for state field {f.name!r}")
            if np.size(values[f.name]) != f.size:
                raise self._mismatch(
                    f"state field {f.name!r} is declared {f.count} x {len(f.features)} but state_fn gave "
                    f"shape {np.shape(values[f.name])}"
                )
        shaped = {f.name: np.reshape(values[f.name], f.shape) for f in self.info.schema}
        return self.info.schema.pack(shaped, check=False)  # names and sizes checked just above

    def _check_ranges(self, state: np.ndarray) -> None:
        inside = (state >= self._low) & (state <= self._high)  # False for NaN too
        if inside.all():
            return
        k = int(np.flatnonzero(~inside)[0])
        f = next(f for f in self.info.schema if f.slice.start <= k < f.slice.stop)
        row, column = divmod(k - f.slice.start, len(f.features))
        where = f"{f.entity} {row} {f.features[column]}" if f.count > 1 else f.features[column]
        raise self._mismatch(
            f"state field {f.name!r} ({where}) is {state[k]:g} at step {self.t}, outside its declared range "
            f"{f.range_text()}"
        )

    # --- the contract's hooks -------------------------------------------------------------------------

    def _reset(self, seed: int | None) -> None:
        self._rng = np.random.default_rng(seed)
        self._obs, self._infos = self.driver.reset(seed)

    def _step(self, actions: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        joint = {a: int(k) for a, k in zip(self.driver.team, actions, strict=True)}
        for agent in self.driver.agents:
            if agent not in joint and agent in self._obs:
                joint[agent] = self._opponent_action(agent)
        self._obs, rewards, terminated, truncated, self._infos = self.driver.step(joint)
        if truncated and not terminated and self.t + 1 < self.info.episode_limit:
            raise TaskPluginError(
                f"task {self.task.name!r}: the environment truncated the episode at step {self.t + 1}, "
                f"before the declared episode_limit {self.info.episode_limit}: declare "
                f"episode_limit={self.t + 1}"
            )
        team_rewards = [rewards[a] for a in self.driver.team]
        return self._team_reward(team_rewards), terminated, {"agent_rewards": team_rewards}

    def _team_reward(self, rewards: Sequence[float]) -> float:
        if self.task.team_reward == TeamReward.SUM:
            return float(sum(rewards))
        if self.task.team_reward == TeamReward.MEAN:
            return float(np.mean(rewards))
        if max(rewards) != min(rewards):
            raise TaskPluginError(
                f"task {self.task.name!r}: team_reward is shared but the team's rewards differ at step "
                f"{self.t + 1}: {list(rewards)} (declare team_reward sum or mean)"
            )
        return float(rewards[0])

    def _mask(self, agent: str, n_actions: int) -> np.ndarray:
        _, mask = _observation_and_mask(self._obs.get(agent))
        if mask is None:
            mask = (self._infos.get(agent) or {}).get("action_mask")
        return (
            np.ones(n_actions, dtype=bool)
            if mask is None
            else np.asarray(mask, dtype=bool).reshape(n_actions)
        )

    def _opponent_action(self, agent: str) -> int:
        mask = self._mask(agent, int(self.driver.action_spaces[agent].n))
        if self.task.opponent is not None:
            return int(self.task.opponent(agent, self._obs[agent], mask, self._rng))
        return int(self._rng.choice(np.flatnonzero(mask)))

    def _observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        team = self.driver.team
        obs = np.stack([_observation_and_mask(self._obs[a])[0] for a in team])
        state = self._state()
        self._check_ranges(state)
        if self.task.avail_actions_fn is not None:
            avail = np.asarray(self.task.avail_actions_fn(self.env), dtype=bool).reshape(len(team), -1)
        else:
            avail = np.stack([self._mask(a, self.info.n_actions) for a in team])
        if not avail.any(axis=1).all():
            raise TaskPluginError(
                f"task {self.task.name!r}: an agent has no available action at step {self.t}"
            )
        return obs, state, avail

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if close is not None:
            close()
