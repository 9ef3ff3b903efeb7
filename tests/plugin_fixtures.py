"""Task plugins for the tests, good and broken, named by ``module:attribute`` references and by entry
points made in the tests (the example package under ``examples/`` is the installed, working one)."""

from __future__ import annotations

import math
from dataclasses import replace

import gymnasium as gym
import lbforaging  # noqa: F401  (registers the Foraging-* ids)
import numpy as np
from qllm_coordination_grid import task as coordination_task
from qllm_coordination_grid.env import CoordinationGrid

from qllm.envs import TaskFamily, TaskSpec
from qllm.envs.adapter import DeclaredField, EnvTask

POSITIONS = DeclaredField(
    name="agent_position", entity="agent", count=2, features=("row", "col"), meaning="cells", low=0, high=4
)
GOAL = DeclaredField(
    name="goal_position", entity="goal", features=("row", "col"), meaning="cell", low=0, high=4
)


def grid_task(*fields: DeclaredField, **changes: object) -> TaskSpec:
    """The coordination grid with a state declared as ``fields`` (and no probes)."""
    settings = {
        "name": "grid",
        "make": lambda: CoordinationGrid(5, 2, 25),
        "description": "Two agents gather on a goal.",
        "episode_limit": 25,
        "state": fields or (POSITIONS, GOAL),
    }
    return EnvTask(**{**settings, **changes}).spec()


def no_probes() -> TaskSpec:
    return grid_task()


def short_schema() -> TaskSpec:
    return grid_task(POSITIONS)  # the goal's two numbers are not declared


def narrow_range() -> TaskSpec:
    return grid_task(POSITIONS.model_copy(update={"high": 2}), GOAL)


def nan_state() -> TaskSpec:
    def state(env: CoordinationGrid) -> np.ndarray:
        values = env.state()
        values[4] = math.nan if env.t >= 3 else values[4]
        return values

    return grid_task(state_fn=state)


def failing_factory() -> TaskSpec:
    def make() -> CoordinationGrid:
        raise RuntimeError("the simulator's licence server is down")

    return grid_task(make=make)


def raises() -> TaskSpec:
    raise ImportError("needs mujoco")


NOT_A_SPEC = 42


def lbf_tuple() -> TaskSpec:
    """lbforaging through the generic tuple-of-agents adapter, with a ``state_fn`` giving field arrays."""

    def state(env: gym.Env) -> dict[str, np.ndarray]:
        inner = env.unwrapped
        return {
            "agent_position": np.array([p.position for p in inner.players], dtype=np.float32),
            "agent_level": np.array([[p.level] for p in inner.players], dtype=np.float32),
        }

    return EnvTask(
        name="lbf-generic",
        make=lambda: gym.make("Foraging-5x5-2p-1f-v3", disable_env_checker=True),
        description="LBF, adapted generically.",
        episode_limit=50,
        state=(
            DeclaredField(
                name="agent_position",
                entity="agent",
                count=2,
                features=("row", "col"),
                meaning="cells",
                low=0,
                high=4,
            ),
            DeclaredField(name="agent_level", entity="agent", count=2, meaning="levels", low=1, high=2),
        ),
        state_fn=state,
    ).spec()


def solo_with_opponent() -> TaskSpec:
    """One controlled agent; the other is the default random opponent."""
    return grid_task(team=("agent_0",))


# --- entry-point targets ----------------------------------------------------------------------------

COLLIDING_NAMES = TaskFamily(
    key="mygrid",
    title="A family claiming a built-in name",
    patterns=("lbf-8x8-2p-2f",),
    parse=lambda name: None,
    names=lambda: ["lbf-8x8-2p-2f"],
    examples=(),
)
COLLIDING_KEY = TaskFamily.of("mpe", "Another mpe", [coordination_task(4, 2)])
GOOD_FAMILY = TaskFamily.of("tinygrid", "Tiny grids", [replace(coordination_task(3, 2), name="tinygrid-3x3")])


def long_limit() -> TaskSpec:
    """Declares 30 steps; the environment truncates at 25."""
    return grid_task(episode_limit=30)
