"""qllm task plugin for the coordination grid (:mod:`qllm_coordination_grid.env`).

Everything qllm needs beyond the environment is declared here: the state schema (what each number of
``CoordinationGrid.state()`` means), who the team is, how its reward is aggregated, the semantic probes,
and the family of task names. ``pyproject.toml`` names :data:`FAMILY` in the ``qllm.tasks`` entry-point
group, which is how ``qllm`` finds it once the package is installed.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

from qllm.envs import MultiAgentEnv, TaskFamily, TaskSpec
from qllm.envs.adapter import DeclaredField, EnvTask, TeamReward
from qllm.envs.probes import Probe, zero_values
from qllm_coordination_grid.env import ACTION_NAMES, HOLD_REWARD, CoordinationGrid

NAME = re.compile(r"coordgrid-(\d+)x\1-(\d+)ag")
SIZES, AGENTS = range(3, 9), range(2, 5)
EPISODE_LIMIT = 25


def probes(env: MultiAgentEnv) -> Iterator[Probe]:
    """The agent holding the goal over one in the farthest corner from it (the others on the goal too):
    holding the goal is what earns the team reward now and what the gathering needs."""
    schema, n = env.info.schema, env.info.n_agents
    size = int(schema["goal_position"].high) + 1
    for a, b in itertools.permutations(range(n), 2):
        v = zero_values(schema)
        v["goal_position"][0] = (size // 2, size // 2)
        v["agent_position"][:] = v["goal_position"][0]
        v["agent_position"][b] = (0, 0)
        yield Probe(f"holding the goal: agent {a} over distant agent {b}", schema.pack(v), a, b)


def task(size: int, n_agents: int) -> TaskSpec:
    cell = f"grid cell; row 0 is the top (up decreases row), rows and cols 0..{size - 1}"
    return EnvTask(
        name=f"coordgrid-{size}x{size}-{n_agents}ag",
        family="coordgrid",
        make=lambda: CoordinationGrid(size, n_agents, EPISODE_LIMIT),
        summary=f"{size}x{size} grid, {n_agents} agents gather on one goal cell",
        description=(
            f"{n_agents} agents on a {size}x{size} grid with one goal cell, all placed at random. Every step "
            "each agent stays or moves one cell up, down, left or right (not off the grid). An agent on "
            f"the goal earns {HOLD_REWARD} per step; when all agents stand on the goal at once the team "
            f"earns 1 and the episode ends, otherwise it ends after {EPISODE_LIMIT} steps. Agents must "
            "gather, and one that leaves the goal early delays everyone."
        ),
        episode_limit=EPISODE_LIMIT,
        state=(
            DeclaredField(
                name="agent_position",
                entity="agent",
                count=n_agents,
                features=("row", "col"),
                meaning=f"each agent's {cell}",
                low=0,
                high=size - 1,
            ),
            DeclaredField(
                name="goal_position",
                entity="goal",
                features=("row", "col"),
                meaning=f"the goal's {cell}; fixed during an episode",
                low=0,
                high=size - 1,
            ),
        ),
        team_reward=TeamReward.SUM,
        reward_text=f"each agent on the goal gets {HOLD_REWARD} a step; all on it at once: 1/{n_agents} each",
        action_names=ACTION_NAMES,
        probes=probes,
        trial_steps=5_000,
    ).spec()


def parse(name: str) -> TaskSpec | None:
    match = NAME.fullmatch(name)
    if match is None:
        return None
    size, n_agents = int(match.group(1)), int(match.group(2))
    if size not in SIZES or n_agents not in AGENTS or n_agents >= size * size:
        return None
    return task(size, n_agents)


FAMILY = TaskFamily(
    key="coordgrid",
    title="Coordination grid (example plugin)",
    patterns=(
        f"coordgrid-<S>x<S>-<N>ag (S in {SIZES.start}..{SIZES[-1]}, N in {AGENTS.start}..{AGENTS[-1]})",
    ),
    parse=parse,
    names=lambda: [f"coordgrid-{s}x{s}-{n}ag" for s in (4, 5, 6) for n in (2, 3)],
    examples=("coordgrid-5x5-2ag", "coordgrid-6x6-3ag"),
)
