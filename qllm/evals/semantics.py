"""Semantic probes: crafted states where the task's mechanics say which agent deserves more credit.

A credit function can pass every sandbox check and still assign credit backwards. Each probe is one
global state built field by field through the task's schema, with a *favoured* and an *other* agent:
the function passes the probe when ``w_favoured(s) > w_other(s)``. Probes are derived from the rules of
each family, never from a model's output:

- **LBF**: an agent next to a live food whose last action was LOAD vs an idle agent far from any food.
- **MPE spread**: an agent close to a landmark no one covers vs an agent far from every landmark (the
  other agents sit on the remaining landmarks).
- **MPE tag**: the predator next to the prey vs the predator farthest from it.
- **MPE adversary**: the good agent next to the goal landmark vs one far from it.
- **RWARE**: a robot carrying a requested shelf next to a goal vs an empty robot far away.
- **Matrix games**: after a miscoordinated joint action from which exactly one agent can reach the
  optimum by changing its own action, that agent vs the other.

Every ordered pair of agents is probed where roles can be swapped, so a function that merely prefers
agent 0 scores about one half.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from qllm.envs.contract import EnvInfo, MultiAgentEnv
from qllm.envs.schema import StateSchema


@dataclass(frozen=True)
class Probe:
    """One crafted state and the agent the task's mechanics favour in it."""

    name: str
    state: np.ndarray
    favoured: int
    other: int


def _values(schema: StateSchema) -> dict[str, np.ndarray]:
    """All-zero values of every field, to be filled in."""
    return {f.name: np.zeros(f.shape, dtype=np.float32) for f in schema}


def _far_cells(size: int, count: int) -> list[tuple[int, int]]:
    corners = [
        (0, 0),
        (0, size - 1),
        (size - 1, 0),
        (size - 1, size - 1),
        (0, size // 2),
        (size - 1, size // 2),
    ]
    return [corners[k % len(corners)] for k in range(count)]


def lbf_probes(info: EnvInfo) -> Iterator[Probe]:
    schema = info.schema
    size = int(schema["agent_position"].high) + 1
    load = info.action_names.index("LOAD")
    for a, b in itertools.permutations(range(info.n_agents), 2):
        v = _values(schema)
        v["food_position"][:] = -1  # every food eaten but the first
        v["food_position"][0] = (size // 2, size // 2)
        v["food_level"][0] = 1
        v["agent_level"][:] = 1
        others = [k for k in range(info.n_agents) if k != a]
        for k, cell in zip(others, _far_cells(size, len(others)), strict=True):
            v["agent_position"][k] = cell
            v["last_action"][k, 0] = 1  # NONE
        v["agent_position"][a] = (size // 2, size // 2 - 1)  # west of the food
        v["last_action"][a, load] = 1
        yield Probe(f"loading next to food: agent {a} over idle agent {b}", schema.pack(v), a, b)


def spread_probes(info: EnvInfo) -> Iterator[Probe]:
    schema = info.schema
    n = info.n_agents
    angles = np.linspace(0, 2 * np.pi, schema["landmark_position"].count, endpoint=False)
    landmarks = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 0.8
    for a, b in itertools.permutations(range(n), 2):
        v = _values(schema)
        v["landmark_position"][:] = landmarks
        covering = [k for k in range(n) if k not in (a, b)]
        for k, landmark in zip(covering, range(2, n), strict=True):
            v["agent_position"][k] = landmarks[landmark]  # landmarks 2.. are covered
        v["agent_position"][a] = landmarks[0] * 0.9  # close to uncovered landmark 0
        v["agent_position"][b] = (3.0, 3.0)  # far from every landmark
        yield Probe(f"near an uncovered landmark: agent {a} over distant agent {b}", schema.pack(v), a, b)


def tag_probes(info: EnvInfo) -> Iterator[Probe]:
    schema = info.schema
    for a, b in itertools.permutations(range(info.n_agents), 2):
        v = _values(schema)
        v["prey_position"][0] = (0.0, 0.0)
        v["agent_position"][:] = (-0.8, 0.8)
        v["agent_position"][a] = (0.15, 0.0)
        v["agent_position"][b] = (1.2, -1.2)
        if "obstacle_position" in schema.names:
            v["obstacle_position"][:] = (0.8, 0.8)
        yield Probe(f"next to the prey: predator {a} over distant predator {b}", schema.pack(v), a, b)


def adversary_probes(info: EnvInfo) -> Iterator[Probe]:
    schema = info.schema
    for a, b in itertools.permutations(range(info.n_agents), 2):
        v = _values(schema)
        v["landmark_position"][:] = ((0.5, 0.5), (-0.5, -0.5))
        v["landmark_is_goal"][0] = 1
        v["adversary_position"][0] = (-0.5, 0.5)
        v["agent_position"][a] = (0.45, 0.5)
        v["agent_position"][b] = (-1.2, -1.2)
        yield Probe(f"next to the goal: agent {a} over distant agent {b}", schema.pack(v), a, b)


def rware_probes(info: EnvInfo, base: np.ndarray) -> Iterator[Probe]:
    """From a real initial state (for the warehouse's own goal cells)."""
    schema = info.schema
    for a, b in itertools.permutations(range(info.n_agents), 2):
        v = {name: value.copy() for name, value in schema.unpack(base).items()}
        goal_x, goal_y = v["goal_position"][0]
        v["agent_carrying"][:] = 0
        v["requested_shelf_carried"][:] = 0
        v["agent_position"][:] = (0, 0)
        v["agent_position"][a] = (goal_x, goal_y - 1)  # one step above a goal cell
        v["agent_direction"][a] = (0, 1, 0, 0)  # facing down, towards it
        v["agent_carrying"][a] = (1, 1)  # carrying a requested shelf
        v["requested_shelf_position"][0] = v["agent_position"][a]
        v["requested_shelf_carried"][0] = 1
        yield Probe(f"delivering a requested shelf: robot {a} over empty robot {b}", schema.pack(v), a, b)


def matrix_probes(info: EnvInfo, payoff: np.ndarray) -> Iterator[Probe]:
    schema = info.schema
    optima = [tuple(int(x) for x in o) for o in np.argwhere(payoff == payoff.max())]

    def reaches_alone(agent: int, joint: tuple[int, int]) -> bool:
        other = 1 - agent
        return any(joint[other] == o[other] and joint[agent] != o[agent] for o in optima)

    for joint in itertools.product(range(payoff.shape[0]), range(payoff.shape[1])):
        can_reach = [agent for agent in (0, 1) if reaches_alone(agent, joint)]
        if len(can_reach) != 1:
            continue
        v = _values(schema)
        v["last_joint_action"][0, joint[0] * payoff.shape[1] + joint[1]] = 1
        agent = can_reach[0]
        name = f"after joint action {joint}: only agent {agent} can reach an optimum by changing its action"
        yield Probe(name, schema.pack(v), agent, 1 - agent)


ProbeMaker = Callable[[MultiAgentEnv], Iterator[Probe]]
_BY_SCHEMA: tuple[tuple[frozenset[str], ProbeMaker], ...] = (
    (frozenset({"food_position", "food_level", "last_action"}), lambda env: lbf_probes(env.info)),
    (frozenset({"prey_position"}), lambda env: tag_probes(env.info)),
    (frozenset({"adversary_position", "landmark_is_goal"}), lambda env: adversary_probes(env.info)),
    (frozenset({"landmark_position"}), lambda env: spread_probes(env.info)),
    (
        frozenset({"agent_carrying", "requested_shelf_position", "goal_position"}),
        lambda env: rware_probes(env.info, env.reset(seed=0).state),
    ),
)
"""Families recognised by the fields their state has, most specific first."""


def probes_for(env: MultiAgentEnv) -> list[Probe]:
    """The semantic probes of ``env``'s task ([] for a task family without any)."""
    payoff = getattr(env, "payoff", None)
    if payoff is not None:
        return list(matrix_probes(env.info, np.asarray(payoff)))
    names = set(env.info.schema.names)
    for needed, maker in _BY_SCHEMA:
        if needed <= names:
            return list(maker(env))
    return []
