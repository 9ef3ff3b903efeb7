"""Multi-agent particle environments (PettingZoo MPE, now the ``mpe2`` package), discrete actions.

Three scenarios, each with the team the learner controls and, where the scenario has one, an opponent
(:mod:`qllm.envs.opponents`), scripted or EPyMARL's pretrained network as the task's name says:

- ``mpe-spread-<N>``: N agents must cover N landmarks without colliding. No opponent.
- ``mpe-adversary`` / ``mpe-adversary-pretrained``: two good agents (the team) know which of two
  landmarks is the goal; one adversary does not. The scripted adversary always moves towards the good
  agent nearest to it, on the bet that the good agents lead it to the goal.
- ``mpe-tag`` / ``mpe-tag-pretrained``: three slower predators (the team) chase one faster prey among
  two obstacles. The scripted prey flees the nearest predator and turns back towards the centre near
  the arena edge.

The state's positions and velocities are read from the simulator's world, not from the agents'
observations.
"""

from __future__ import annotations

import importlib
import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from qllm.envs.contract import EnvInfo, MultiAgentEnv
from qllm.envs.opponents import (
    PREY_EDGE,
    Opponent,
    OpponentKind,
    OpponentView,
    chase_nearest_team_agent,
    flee_nearest_team_agent,
    pretrained_adversary,
    pretrained_prey,
)
from qllm.envs.probes import Probe, zero_values
from qllm.envs.schema import StateField, StateSchema
from qllm.envs.tasks import TaskFamily, TaskNameError, TaskSpec

EPISODE_LIMIT = 25
ACTION_NAMES = ("no_op", "move_left", "move_right", "move_down", "move_up")
MAX_SPREAD_AGENTS = 30
TRIAL_STEPS = 5_000
"""Trial budget (see :mod:`qllm.agents.trial`): 200 episodes."""


@dataclass(frozen=True)
class Scenario:
    """How one MPE scenario maps onto the contract."""

    make: Callable[[], Any]
    """Builds the PettingZoo parallel env."""
    team_prefix: str
    """Name prefix of the controlled agents (``agent`` or ``adversary`` in MPE's own naming)."""
    shared_reward: bool
    """True when every team agent already receives the same reward (then the team reward is that value);
    False when rewards differ per agent (then the team reward is their sum, as EPyMARL does)."""
    opponent: Opponent | None
    fields: Callable[[Any, Sequence[Any], Sequence[Any]], dict[str, np.ndarray]]
    """Values of every state field, from (world, team agents, other agents)."""


class MPEEnv(MultiAgentEnv):
    """Adapter from an ``mpe2`` parallel environment to the contract."""

    def __init__(self, task: str, scenario: Scenario, schema: StateSchema):
        self.scenario = scenario
        self.env = scenario.make()
        self.world = self.env.unwrapped.world
        self.env.reset(seed=0)  # agents and spaces exist only after a reset
        names = self.env.possible_agents
        self.team_names = tuple(n for n in names if n.startswith(scenario.team_prefix))
        self.other_names = tuple(n for n in names if n not in self.team_names)
        by_name = {a.name: a for a in self.world.agents}
        self.team = [by_name[n] for n in self.team_names]
        self.others = [by_name[n] for n in self.other_names]
        obs_dims = {self.env.observation_space(n).shape[0] for n in self.team_names}
        if len(obs_dims) != 1:
            raise ValueError(f"{task}: team agents have different observation sizes {obs_dims}")
        super().__init__(
            EnvInfo(
                task=task,
                n_agents=len(self.team_names),
                n_actions=len(ACTION_NAMES),
                obs_dim=obs_dims.pop(),
                episode_limit=EPISODE_LIMIT,
                agent_names=self.team_names,
                action_names=ACTION_NAMES,
                schema=schema,
            )
        )
        self._obs: dict[str, np.ndarray] = {}

    def _reset(self, seed: int | None) -> None:
        self._obs, _ = self.env.reset(seed=seed)

    def _step(self, actions: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        joint = {name: int(a) for name, a in zip(self.team_names, actions, strict=True)}
        for name, opponent in zip(self.other_names, self.others, strict=True):
            view = OpponentView(self.world, opponent, self.team, self._obs[name])
            joint[name] = self.scenario.opponent(view)
        self._obs, rewards, terminations, _, _ = self.env.step(joint)
        team_rewards = [float(rewards[n]) for n in self.team_names]
        reward = team_rewards[0] if self.scenario.shared_reward else sum(team_rewards)
        terminated = any(terminations[n] for n in self.team_names)
        return reward, terminated, {"agent_rewards": team_rewards}

    def _observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        obs = np.stack([self._obs[n] for n in self.team_names]).astype(np.float32)
        state = self._pack_state(self.scenario.fields(self.world, self.team, self.others))
        avail = np.ones((self.info.n_agents, self.info.n_actions), dtype=bool)
        return obs, state, avail

    def close(self) -> None:
        self.env.close()


# --- state fields ---------------------------------------------------------------------------------

XY = ("x", "y")
VXY = ("vx", "vy")
POSITION_NOTE = "world coordinates; entities start in [-1, 1] and the visible arena is about [-1.5, 1.5]"


def _positions(entities: Sequence[Any]) -> np.ndarray:
    return np.stack([e.state.p_pos for e in entities])


def _velocities(entities: Sequence[Any]) -> np.ndarray:
    return np.stack([e.state.p_vel for e in entities])


def _position_field(name: str, entity: str, count: int, what: str) -> StateField:
    return StateField(name, entity, count, XY, f"{what} position ({POSITION_NOTE})")


def _velocity_field(name: str, entity: str, count: int, what: str) -> StateField:
    return StateField(name, entity, count, VXY, f"{what} velocity (world units per second)")


def _spread_fields(world: Any, team: Sequence[Any], others: Sequence[Any]) -> dict[str, np.ndarray]:
    return {
        "agent_position": _positions(team),
        "agent_velocity": _velocities(team),
        "landmark_position": _positions(world.landmarks),
    }


def _adversary_fields(world: Any, team: Sequence[Any], others: Sequence[Any]) -> dict[str, np.ndarray]:
    goal = team[0].goal_a
    return {
        "agent_position": _positions(team),
        "agent_velocity": _velocities(team),
        "adversary_position": _positions(others),
        "adversary_velocity": _velocities(others),
        "landmark_position": _positions(world.landmarks),
        "landmark_is_goal": np.array([[float(lm is goal)] for lm in world.landmarks]),
    }


def _tag_fields(world: Any, team: Sequence[Any], others: Sequence[Any]) -> dict[str, np.ndarray]:
    return {
        "agent_position": _positions(team),
        "agent_velocity": _velocities(team),
        "prey_position": _positions(others),
        "prey_velocity": _velocities(others),
        "obstacle_position": _positions(world.landmarks),
    }


# --- semantic probes (see qllm.envs.probes) -------------------------------------------------------


def spread_probes(env: MultiAgentEnv) -> Iterator[Probe]:
    """An agent close to a landmark no one covers over an agent far from every landmark (the other
    agents sit on the remaining landmarks)."""
    schema, n = env.info.schema, env.info.n_agents
    angles = np.linspace(0, 2 * np.pi, schema["landmark_position"].count, endpoint=False)
    landmarks = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 0.8
    for a, b in itertools.permutations(range(n), 2):
        v = zero_values(schema)
        v["landmark_position"][:] = landmarks
        covering = [k for k in range(n) if k not in (a, b)]
        for k, landmark in zip(covering, range(2, n), strict=True):
            v["agent_position"][k] = landmarks[landmark]  # landmarks 2.. are covered
        v["agent_position"][a] = landmarks[0] * 0.9  # close to uncovered landmark 0
        v["agent_position"][b] = (3.0, 3.0)  # far from every landmark
        yield Probe(f"near an uncovered landmark: agent {a} over distant agent {b}", schema.pack(v), a, b)


def tag_probes(env: MultiAgentEnv) -> Iterator[Probe]:
    """The predator next to the prey over the predator farthest from it."""
    schema = env.info.schema
    for a, b in itertools.permutations(range(env.info.n_agents), 2):
        v = zero_values(schema)
        v["prey_position"][0] = (0.0, 0.0)
        v["agent_position"][:] = (-0.8, 0.8)
        v["agent_position"][a] = (0.15, 0.0)
        v["agent_position"][b] = (1.2, -1.2)
        v["obstacle_position"][:] = (0.8, 0.8)
        yield Probe(f"next to the prey: predator {a} over distant predator {b}", schema.pack(v), a, b)


def adversary_probes(env: MultiAgentEnv) -> Iterator[Probe]:
    """The good agent next to the goal landmark over one far from it."""
    schema = env.info.schema
    for a, b in itertools.permutations(range(env.info.n_agents), 2):
        v = zero_values(schema)
        v["landmark_position"][:] = ((0.5, 0.5), (-0.5, -0.5))
        v["landmark_is_goal"][0] = 1
        v["adversary_position"][0] = (-0.5, 0.5)
        v["agent_position"][a] = (0.45, 0.5)
        v["agent_position"][b] = (-1.2, -1.2)
        yield Probe(f"next to the goal: agent {a} over distant agent {b}", schema.pack(v), a, b)


# --- tasks ----------------------------------------------------------------------------------------


def parallel_env(scenario: str, **settings: Any) -> Any:
    """``mpe2.<scenario>.parallel_env(**settings)``, importing mpe2 when an environment is built, not when a
    task name is parsed (every task name is tried against this family first)."""
    return importlib.import_module(f"mpe2.{scenario}").parallel_env(**settings)


def _spread_spec(n: int) -> TaskSpec:
    name = f"mpe-spread-{n}"
    schema = StateSchema(
        (
            _position_field("agent_position", "agent", n, "each agent's"),
            _velocity_field("agent_velocity", "agent", n, "each agent's"),
            _position_field("landmark_position", "landmark", n, "each landmark's (fixed during an episode)"),
        )
    )
    scenario = Scenario(
        make=partial(parallel_env, "simple_spread_v3", N=n, max_cycles=EPISODE_LIMIT),
        team_prefix="agent",
        shared_reward=False,
        opponent=None,
        fields=_spread_fields,
    )
    return TaskSpec(
        name=name,
        family="mpe",
        summary=f"cooperative navigation: {n} agents cover {n} landmarks",
        description=(
            f"{n} agents and {n} landmarks in a 2-D arena with simple physics (agents accelerate with 4 "
            "move actions and are damped). The team should spread out so that every landmark is "
            "occupied by some agent, while agents avoid bumping into each other. "
            f"Episodes last {EPISODE_LIMIT} steps."
        ),
        team=f"agent_0 .. agent_{n - 1}, all controlled",
        reward=(
            "sum over agents of mpe2's per-agent reward (local_ratio 0.5): each agent gets half of the "
            "global term -sum over landmarks of the distance from that landmark to its nearest agent, "
            "plus half of -1 per other agent it collides with"
        ),
        factory=partial(MPEEnv, name, scenario, schema),
        probes=spread_probes,
        trial_steps=TRIAL_STEPS,
    )


def _adversary_spec(kind: OpponentKind) -> TaskSpec:
    name = "mpe-adversary" if kind == OpponentKind.SCRIPTED else "mpe-adversary-pretrained"
    schema = StateSchema(
        (
            _position_field("agent_position", "agent", 2, "each good (team) agent's"),
            _velocity_field("agent_velocity", "agent", 2, "each good (team) agent's"),
            _position_field("adversary_position", "adversary", 1, "the adversary's"),
            _velocity_field("adversary_velocity", "adversary", 1, "the adversary's"),
            _position_field("landmark_position", "landmark", 2, "each landmark's (fixed during an episode)"),
            StateField(
                "landmark_is_goal",
                "landmark",
                2,
                ("is_goal",),
                "1 for the goal landmark, 0 for the decoy (the team knows this; the adversary does not)",
                low=0.0,
                high=1.0,
            ),
        )
    )
    scenario = Scenario(
        make=partial(parallel_env, "simple_adversary_v3", N=2, max_cycles=EPISODE_LIMIT),
        team_prefix="agent",
        shared_reward=True,
        opponent=chase_nearest_team_agent if kind == OpponentKind.SCRIPTED else pretrained_adversary(),
        fields=_adversary_fields,
    )
    return TaskSpec(
        name=name,
        family="mpe",
        summary="physical deception: 2 agents guard a goal landmark from 1 adversary",
        description=(
            "Two good agents and one adversary move among two landmarks, one of which is the goal. The "
            "good agents know which landmark is the goal; the adversary does not and tries to reach it "
            "anyway. The team wants one of its agents close to the goal while keeping the adversary far "
            "from it, which usually means splitting up to cover both landmarks as a decoy. "
            f"Episodes last {EPISODE_LIMIT} steps."
        ),
        team="agent_0 and agent_1 (the good agents), controlled",
        reward=(
            "the good agents' shared reward: -(distance from the goal to the nearest good agent) "
            "+ (distance from the adversary to the goal)"
        ),
        opponent=(
            "scripted adversary: always moves towards the good agent nearest to it"
            if kind == OpponentKind.SCRIPTED
            else PRETRAINED_OPPONENT.format(what="adversary")
        ),
        factory=partial(MPEEnv, name, scenario, schema),
        probes=adversary_probes,
        trial_steps=TRIAL_STEPS,
    )


def _tag_spec(kind: OpponentKind) -> TaskSpec:
    name = "mpe-tag" if kind == OpponentKind.SCRIPTED else "mpe-tag-pretrained"
    schema = StateSchema(
        (
            _position_field("agent_position", "predator", 3, "each predator's (the team)"),
            _velocity_field("agent_velocity", "predator", 3, "each predator's (the team)"),
            _position_field("prey_position", "prey", 1, "the prey's"),
            _velocity_field("prey_velocity", "prey", 1, "the prey's"),
            _position_field("obstacle_position", "obstacle", 2, "each obstacle's (fixed, radius 0.2)"),
        )
    )
    scenario = Scenario(
        make=partial(parallel_env, "simple_tag_v3", max_cycles=EPISODE_LIMIT),
        team_prefix="adversary",
        shared_reward=True,
        opponent=flee_nearest_team_agent if kind == OpponentKind.SCRIPTED else pretrained_prey(),
        fields=_tag_fields,
    )
    return TaskSpec(
        name=name,
        family="mpe",
        summary="predator-prey: 3 predators chase 1 faster prey among 2 obstacles",
        description=(
            "Three predators (the team, slower: max speed 1.0) chase one prey (faster: max speed 1.3) in "
            "an arena with two large obstacles. The team is rewarded each time a predator touches the "
            "prey, so it must corner the prey together rather than chase it one by one. "
            f"Episodes last {EPISODE_LIMIT} steps."
        ),
        team="adversary_0 .. adversary_2 in MPE's naming (the predators), controlled",
        reward="the predators' shared reward: +10 for every predator touching the prey at that step",
        opponent=(
            "scripted prey: flees the nearest predator, pulled back towards the centre when beyond "
            f"|x| or |y| > {PREY_EDGE}"
            if kind == OpponentKind.SCRIPTED
            else PRETRAINED_OPPONENT.format(what="prey")
        ),
        factory=partial(MPEEnv, name, scenario, schema),
        probes=tag_probes,
        trial_steps=TRIAL_STEPS,
    )


PRETRAINED_OPPONENT = (
    "pretrained {what}: EPyMARL's network (Apache-2.0), playing the move it scores highest for its own "
    "observation"
)

RAW_IDS = {
    "simple_spread_v3": "mpe-spread-3",
    "simple_adversary_v3": "mpe-adversary",
    "simple_tag_v3": "mpe-tag",
}


def parse(name: str) -> TaskSpec | None:
    name = RAW_IDS.get(name, name)
    match = re.fullmatch(r"mpe-(adversary|tag)(-pretrained)?", name)
    if match:
        kind = OpponentKind.PRETRAINED if match.group(2) else OpponentKind.SCRIPTED
        return _adversary_spec(kind) if match.group(1) == "adversary" else _tag_spec(kind)
    if name == "mpe-spread":
        return _spread_spec(3)
    match = re.fullmatch(r"mpe-spread-(\d+)", name)
    if match:
        n = int(match.group(1))
        if not 1 <= n <= MAX_SPREAD_AGENTS:
            raise TaskNameError(f"mpe-spread needs 1..{MAX_SPREAD_AGENTS} agents, got {n}")
        return _spread_spec(n)
    return None


def names() -> list[str]:
    return [
        *(f"mpe-spread-{n}" for n in (3, 6, 10, 15)),
        "mpe-adversary",
        "mpe-adversary-pretrained",
        "mpe-tag",
        "mpe-tag-pretrained",
    ]


FAMILY = TaskFamily(
    key="mpe",
    title="Multi-agent particle environments (mpe2)",
    patterns=(
        "mpe-spread-<N> (N agents and landmarks)",
        "mpe-adversary[-pretrained]",
        "mpe-tag[-pretrained]",
        *RAW_IDS,
    ),
    parse=parse,
    names=names,
    examples=("mpe-spread-3", "mpe-spread-10", "mpe-adversary", "mpe-tag"),
)
