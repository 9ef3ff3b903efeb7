"""Robotic warehouse (``rware``): robots fetch requested shelves, carry them to a goal, and return them.

Any registered vector-observation id works (``rware-<size>-<N>ag[-easy|-hard]-v2``), typed raw or
without the ``-v2`` suffix. The simulator is built with ``RewardType.GLOBAL`` so that every delivery
rewards the whole team. The global state is read from the simulator's agents, request queue and goals.
Coordinates follow rware's own convention: ``x`` is the column, ``y`` the row, ``y = 0`` is the top row
and moving FORWARD while facing UP decreases ``y``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from functools import cache, partial
from types import ModuleType
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from qllm.envs.contract import EnvInfo, MultiAgentEnv, last_action_field
from qllm.envs.probes import Probe
from qllm.envs.schema import StateField, StateSchema
from qllm.envs.tasks import TaskFamily, TaskSpec

if TYPE_CHECKING:
    from rware.warehouse import Warehouse

ID_PATTERN = re.compile(r"rware-(tiny|small|medium|large)-\d+ag(-easy|-hard)?-v2")
TRIAL_STEPS = 10_000
"""Trial budget (see :mod:`qllm.agents.trial`)."""


@cache
def simulator() -> ModuleType:
    """``rware.warehouse``, imported (and the rware-* ids registered with gymnasium) on first use: a
    process training another family's task never pays the 0.2 s."""
    import rware.warehouse  # noqa: PLC0415  (the package registers the rware-* ids with gymnasium)

    return rware.warehouse


def action_names() -> tuple[str, ...]:
    return tuple(a.name for a in simulator().Action)  # NOOP FORWARD LEFT RIGHT TOGGLE_LOAD


def directions() -> tuple[str, ...]:
    return tuple(d.name.lower() for d in simulator().Direction)  # up down left right


class RwareEnv(MultiAgentEnv):
    """Adapter from a gymnasium ``Warehouse`` (global reward) to the contract."""

    def __init__(self, task: str, env_id: str):
        reward_type = simulator().RewardType.GLOBAL
        self.env: Warehouse = gym.make(env_id, reward_type=reward_type, disable_env_checker=True).unwrapped
        self.directions = directions()
        actions = action_names()
        env = self.env
        height, width = env.grid_size
        n, n_requests = env.n_agents, env.request_queue_size
        xy_meaning = f"x = column 0..{width - 1}, y = row 0..{height - 1} (y = 0 is the top row)"
        schema = StateSchema(
            (
                StateField(
                    "agent_position",
                    "agent",
                    n,
                    ("x", "y"),
                    f"each robot's cell; {xy_meaning}",
                    low=0,
                    high=max(width, height) - 1,
                ),
                StateField(
                    "agent_direction",
                    "agent",
                    n,
                    self.directions,
                    "one-hot of the direction each robot faces (FORWARD moves one cell that way)",
                    low=0,
                    high=1,
                ),
                StateField(
                    "agent_carrying",
                    "agent",
                    n,
                    ("carrying_shelf", "carrying_requested_shelf"),
                    "1 if the robot carries a shelf; 1 if that shelf is currently requested",
                    low=0,
                    high=1,
                ),
                StateField(
                    "requested_shelf_position",
                    "requested shelf",
                    n_requests,
                    ("x", "y"),
                    f"cell of each currently requested shelf (moves with the robot carrying it); "
                    f"{xy_meaning}. A delivered request is replaced by a new random shelf",
                    low=0,
                    high=max(width, height) - 1,
                ),
                StateField(
                    "requested_shelf_carried",
                    "requested shelf",
                    n_requests,
                    ("carried",),
                    "1 if a robot is carrying this requested shelf",
                    low=0,
                    high=1,
                ),
                StateField(
                    "goal_position",
                    "goal",
                    len(env.goals),
                    ("x", "y"),
                    f"delivery cells (fixed); bringing a requested shelf here delivers it; {xy_meaning}",
                    low=0,
                    high=max(width, height) - 1,
                ),
                last_action_field(n, actions),
            )
        )
        super().__init__(
            EnvInfo(
                task=task,
                n_agents=n,
                n_actions=len(actions),
                obs_dim=env.observation_space[0].shape[0],
                episode_limit=env.max_steps,
                agent_names=tuple(f"agent_{i}" for i in range(n)),
                action_names=actions,
                schema=schema,
            )
        )
        self._obs: tuple[np.ndarray, ...] = ()

    def _reset(self, seed: int | None) -> None:
        self._obs, _ = self.env.reset(seed=seed)

    def _step(self, actions: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        self._obs, rewards, _, _, _ = self.env.step([int(a) for a in actions])
        # GLOBAL rewards give every agent +1 per delivery: the team reward is one copy of it.
        return float(rewards[0]), False, {"deliveries": int(rewards[0])}

    def _observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        env = self.env
        requested = env.request_queue
        carried = {id(a.carrying_shelf) for a in env.agents if a.carrying_shelf is not None}
        requested_ids = {id(s) for s in requested}
        direction = np.zeros((len(env.agents), len(self.directions)), dtype=np.float32)
        direction[np.arange(len(env.agents)), [a.dir.value for a in env.agents]] = 1.0
        state = self._pack_state(
            {
                "agent_position": [(a.x, a.y) for a in env.agents],
                "agent_direction": direction,
                "agent_carrying": [
                    (a.carrying_shelf is not None, id(a.carrying_shelf) in requested_ids) for a in env.agents
                ],
                "requested_shelf_position": [(s.x, s.y) for s in requested],
                "requested_shelf_carried": [[id(s) in carried] for s in requested],
                "goal_position": env.goals,
                "last_action": self._last_action,
            }
        )
        obs = np.stack(self._obs).astype(np.float32)
        avail = np.ones((self.info.n_agents, self.info.n_actions), dtype=bool)
        return obs, state, avail

    def close(self) -> None:
        self.env.close()


def probes(env: MultiAgentEnv) -> Iterator[Probe]:
    """A robot carrying a requested shelf next to a goal over an empty robot far away, from a real initial
    state (for the warehouse's own goal cells)."""
    info = env.info
    schema = info.schema
    base = env.reset(seed=0).state
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


def _describe(env_id: str) -> dict[str, str]:
    kwargs = gym.spec(env_id).kwargs
    size = env_id.split("-")[1]
    n, requests = kwargs["n_agents"], kwargs["request_queue_size"]
    return {
        "summary": f"{size} warehouse, {n} robots, {requests} requested shelves at a time",
        "description": (
            f"{n} robots in a {size} warehouse grid of shelf blocks separated by corridors. At any time "
            f"{requests} shelves are requested. A robot can turn LEFT/RIGHT, move FORWARD, and "
            "TOGGLE_LOAD to pick up the shelf under it or put its shelf down (only off the corridors). "
            "A loaded robot cannot pass under other shelves, only along corridors. Delivering a requested "
            "shelf to a goal cell earns reward, and a new shelf is requested; the robot should then return "
            "the shelf to an empty shelf cell to free the corridors. Rewards are sparse: random play "
            f"rarely delivers anything. Episodes last {kwargs['max_steps']} steps."
        ),
    }


def parse(name: str) -> TaskSpec | None:
    env_id = name if name.endswith("-v2") else f"{name}-v2"
    if not ID_PATTERN.fullmatch(env_id):
        return None
    simulator()  # its ids registered
    if env_id not in gym.registry:
        return None
    canonical = env_id.removesuffix("-v2")
    return TaskSpec(
        name=canonical,
        family="rware",
        team="every robot in the warehouse, all controlled",
        reward="+1 to the team for each requested shelf delivered to a goal cell (rware's GLOBAL reward)",
        factory=partial(RwareEnv, canonical, env_id),
        probes=probes,
        trial_steps=TRIAL_STEPS,
        **_describe(env_id),
    )


def names() -> list[str]:
    simulator()  # its ids registered
    return sorted(i.removesuffix("-v2") for i in gym.registry if ID_PATTERN.fullmatch(i))


FAMILY = TaskFamily(
    key="rware",
    title="Robotic warehouse (rware)",
    patterns=("rware-<tiny|small|medium|large>-<N>ag[-easy|-hard]", "rware-...-v2 (raw gymnasium id)"),
    parse=parse,
    names=names,
    examples=("rware-tiny-2ag", "rware-tiny-4ag", "rware-small-4ag", "rware-tiny-2ag-hard"),
)
