"""Level-based foraging (``lbforaging``): agents with levels load food whose level they can jointly meet.

Any registered vector-observation id works (``Foraging[-Ns]-AxA-Pp-Ff[-coop]-v3``), typed either raw or
as ``lbf-[Ns-]AxA-Pp-Ff[-coop]``. LBF has no global state of its own; this adapter builds one from the
simulator's players and food field. Foods never move, so each food keeps the slot it was given at
reset (row-major order of the field); an eaten food, and a slot left empty because the simulator could
not place every food, reads ``row = col = -1`` and ``level = 0`` (the convention LBF's own observations
use for unseen food).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from functools import partial
from typing import Any

import gymnasium as gym
import lbforaging  # noqa: F401  (registers the Foraging-* ids with gymnasium)
import numpy as np
from lbforaging.foraging.environment import Action, ForagingEnv

from qllm.envs.contract import EnvInfo, MultiAgentEnv, last_action_field
from qllm.envs.probes import Probe, zero_values
from qllm.envs.schema import StateField, StateSchema
from qllm.envs.tasks import TaskFamily, TaskSpec

ACTIONS = tuple(Action)  # NONE NORTH SOUTH WEST EAST LOAD, values 0 to 5
ACTION_NAMES = tuple(a.name for a in ACTIONS)
AVAILABLE_ACTIONS = np.array(
    [[mask >> a.value & 1 for a in ACTIONS] for mask in range(1 << len(ACTIONS))], dtype=bool
)
"""The availability row of each mask of valid actions (:attr:`ForagingWithoutObservations.valid_masks`)."""
ID_PATTERN = re.compile(r"Foraging(-\d+s)?-\d+x\d+-\d+p-\d+f(-coop)?-v3")
EMPTY_FOOD = -1.0
TRIAL_STEPS = 10_000
"""Trial budget (see :mod:`qllm.agents.trial`): one round takes one to two minutes on two cores."""


class LBFEnv(MultiAgentEnv):
    """Adapter from a gymnasium ``ForagingEnv`` to the contract."""

    def __init__(self, task: str, env_id: str):
        self.env = ForagingWithoutObservations.made(env_id)
        env = self.env
        rows, cols = env.field_size
        n, n_food = len(env.players), env.max_num_food
        max_player_level = int(env.max_player_level.max())
        self.max_food_level = self._max_food_level()
        schema = StateSchema(
            (
                StateField(
                    "agent_position",
                    "agent",
                    n,
                    ("row", "col"),
                    f"each agent's grid cell; row 0 is the top (NORTH decreases row), rows 0..{rows - 1}, "
                    f"cols 0..{cols - 1}",
                    low=0,
                    high=max(rows, cols) - 1,
                ),
                StateField(
                    "agent_level",
                    "agent",
                    n,
                    ("level",),
                    "each agent's level; agents loading the same food together add their levels",
                    low=1,
                    high=max_player_level,
                ),
                StateField(
                    "food_position",
                    "food",
                    n_food,
                    ("row", "col"),
                    "each food's grid cell (foods never move); -1, -1 once the food has been eaten",
                    low=EMPTY_FOOD,
                    high=max(rows, cols) - 1,
                ),
                StateField(
                    "food_level",
                    "food",
                    n_food,
                    ("level",),
                    "each food's level: it is collected when adjacent agents choosing LOAD at the same step "
                    "have levels summing to at least this; 0 once the food has been eaten",
                    low=0,
                    high=self.max_food_level,
                ),
                last_action_field(n, ACTION_NAMES),
            )
        )
        super().__init__(
            EnvInfo(
                task=task,
                n_agents=n,
                n_actions=len(ACTION_NAMES),
                obs_dim=env.observation_space[0].shape[0],
                episode_limit=env._max_episode_steps,
                agent_names=tuple(f"agent_{i}" for i in range(n)),
                action_names=ACTION_NAMES,
                schema=schema,
            )
        )
        self._food_cells = np.full((n_food, 2), -1, dtype=np.int64)
        self._placed_flat = np.zeros(0, dtype=np.intp)  # where the placed foods lie in the flat field
        self._agent_levels = np.zeros((n, 1), dtype=np.float32)  # set at reset: levels never change

    def _max_food_level(self) -> int:
        env = self.env
        if env.max_food_level is not None:
            return int(env.max_food_level.max())
        # lbforaging then sets food levels to the sum of the (up to) three lowest player levels.
        return int(env.max_player_level.max()) * min(3, len(env.players))

    def _reset(self, seed: int | None) -> None:
        # lbforaging places new players around the *previous* episode's player positions, so the same
        # seed would give a different episode after another one. Forget them first.
        for player in self.env.players:
            player.position = None
        self.env.reset(seed=seed)
        cells = np.argwhere(self.env.field > 0)  # row-major, fixed for the episode
        self._food_cells[:] = -1
        self._food_cells[: len(cells)] = cells
        self._placed_flat = np.ravel_multi_index(tuple(cells.T), self.env.field.shape)
        self._agent_levels[:, 0] = [p.level for p in self.env.players]

    def _step(self, actions: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        _, rewards, _, _, _ = self.env.step([int(a) for a in actions])
        all_eaten = not self.env.field.any()
        return float(sum(rewards)), all_eaten, {"agent_rewards": [float(r) for r in rewards]}

    def _observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Every step of every environment goes through here: arrays are built whole, not element-wise.
        env = self.env
        levels = np.zeros(len(self._food_cells), dtype=np.float32)
        levels[: len(self._placed_flat)] = env.field.take(self._placed_flat)  # the placed foods' levels now
        food_position = self._food_cells.astype(np.float32)
        food_position[levels == 0] = EMPTY_FOOD
        state = self._pack_state(
            {
                "agent_position": np.array([p.position for p in env.players], dtype=np.float32),
                "agent_level": self._agent_levels,
                "food_position": food_position,
                "food_level": levels[:, None],
                "last_action": self._last_action,
            }
        )
        obs = agent_observations(env)
        avail = AVAILABLE_ACTIONS[env.valid_masks]  # a new array, one row per player
        return obs, state, avail

    def close(self) -> None:
        self.env.close()


class ForagingWithoutObservations(ForagingEnv):
    """lbforaging's environment, leaving the agents' observations to the adapter (:func:`agent_observations`).

    ``step`` and ``reset`` end by building every agent's observation through a Python object per agent
    and a check of each array against its space (``_make_gym_obs``): about 140 of the 190 us a step of
    lbf-8x8-2p-2f took on this project's machines. The adapter builds the same arrays from the same
    fields, in 20-25 us, when it reads them (``reports/training-speed/lbf_observations.py`` measures
    both). Its valid actions come from an equivalent of lbforaging's method on plain ints
    (:meth:`_gen_valid_moves`). Everything else is lbforaging's own.
    """

    valid_masks: list[int]
    """Each player's valid actions as a bit mask (bit ``a`` for action value ``a``), set with them."""

    @classmethod
    def made(cls, env_id: str) -> ForagingWithoutObservations:
        """The environment ``gym.make(env_id)`` would build (unwrapped), as this class."""
        kwargs = gym.spec(env_id).kwargs
        if kwargs.get("grid_observation"):
            raise ValueError(f"{env_id}: grid observations are not supported, only vector ones")
        return cls(**kwargs)

    def _make_gym_obs(self) -> tuple[()]:
        return ()

    def _gen_valid_moves(self) -> None:
        """Each player's valid actions, the lists lbforaging's own method makes (``_is_valid_action`` for
        every action, on numpy scalars of the field: about 20 of the 40 us of lbforaging's step), from the
        field read once as Python ints; and the same as :attr:`valid_masks`, from which the adapter
        indexes its availability rows."""
        field, last_row, last_col = self.field.tolist(), self.rows - 1, self.cols - 1
        valid_actions, valid_masks = {}, []
        for player in self.players:
            row, col = player.position
            adjacent_food = (  # lbforaging's adjacent_food: clamped at the border (onto the player's cell)
                field[max(row - 1, 0)][col]
                + field[min(row + 1, last_row)][col]
                + field[row][max(col - 1, 0)]
                + field[row][min(col + 1, last_col)]
            )
            valid = (  # in the order of Action's values
                True,  # NONE
                row > 0 and field[row - 1][col] == 0,  # NORTH
                row < last_row and field[row + 1][col] == 0,  # SOUTH
                col > 0 and field[row][col - 1] == 0,  # WEST
                col < last_col and field[row][col + 1] == 0,  # EAST
                adjacent_food > 0,  # LOAD
            )
            valid_actions[player] = [action for action, ok in zip(ACTIONS, valid, strict=True) if ok]
            valid_masks.append(sum(1 << value for value, ok in enumerate(valid) if ok))
        self._valid_actions, self.valid_masks = valid_actions, valid_masks


def agent_observations(env: ForagingEnv) -> np.ndarray:
    """Every agent's vector observation ``[n, obs_dim]``, equal to lbforaging's ``_make_gym_obs``.

    Agent ``i`` sees the window of the field within ``sight`` cells of it (clipped to the field), in
    coordinates relative to the window's corner: each food in it (row, col, level; row-major order),
    then itself and each other agent whose relative position lies in ``[0, 2 * sight]`` on both axes
    (row, col and, where levels are observed, level; itself first). Unused slots read -1, -1, 0.
    Plain Python on a handful of numbers: a numpy pass over these tiny arrays took longer.
    """
    sight, (rows, cols) = env.sight, env.field.shape
    foods = [(row, col, int(env.field[row, col])) for row, col in zip(*env.field.nonzero(), strict=True)]
    agents = [(*p.position, p.level) for p in env.players]
    food_slots, agent_slots = env.max_num_food, len(agents)
    width = 3 if env._observe_agent_levels else 2
    observations = []
    for i, (row, col, _) in enumerate(agents):
        top, left = max(row - sight, 0), max(col - sight, 0)  # the window's corner
        bottom, right = min(row + sight, rows - 1), min(col + sight, cols - 1)
        seen_foods = [
            (r - top, c - left, level) for r, c, level in foods if top <= r <= bottom and left <= c <= right
        ]
        seen_agents = [
            (r - top, c - left, level)[:width]
            for r, c, level in (agents[i], *agents[:i], *agents[i + 1 :])
            if 0 <= r - top <= 2 * sight and 0 <= c - left <= 2 * sight
        ]
        observation = [v for food in seen_foods for v in food]
        observation += [-1, -1, 0] * (food_slots - len(seen_foods))
        observation += [v for agent in seen_agents for v in agent]
        observation += [-1, -1, 0][:width] * (agent_slots - len(seen_agents))
        observations.append(observation)
    return np.array(observations, dtype=np.float32)


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


def probes(env: MultiAgentEnv) -> Iterator[Probe]:
    """An agent next to a live food whose last action was LOAD over an idle agent far from any food."""
    info = env.info
    schema = info.schema
    size = int(schema["agent_position"].high) + 1
    load = info.action_names.index("LOAD")
    for a, b in itertools.permutations(range(info.n_agents), 2):
        v = zero_values(schema)
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


def _describe(env_id: str) -> dict[str, str]:
    kwargs = gym.spec(env_id).kwargs
    size = kwargs["field_size"][0]
    players, foods = kwargs["players"], kwargs["max_num_food"]
    sight = kwargs["sight"]
    seeing = "the whole grid" if sight >= size else f"only cells within {sight} steps of itself"
    coop = (
        " In this -coop variant every food's level equals the sum of the three lowest agent levels (all "
        "agents' levels when there are at most three), so no agent can collect food alone."
        if kwargs["force_coop"]
        else ""
    )
    return {
        "summary": f"{size}x{size} grid, {players} agents, {foods} foods" + (" (coop)" if coop else ""),
        "description": (
            f"{players} agents and {foods} foods on a {size}x{size} grid. Agents and foods have levels. "
            "Agents move one cell per step (NORTH/SOUTH/WEST/EAST) and collect a food by choosing LOAD "
            "while standing next to it (not diagonally); the food is collected only when the levels of "
            "all adjacent agents that chose LOAD at that step add up to at least the food's level. "
            f"Each agent observes {seeing}. The episode ends when every food is collected or after "
            f"{kwargs['max_episode_steps']} steps.{coop}"
        ),
    }


def parse(name: str) -> TaskSpec | None:
    env_id = f"Foraging-{name.removeprefix('lbf-')}-v3" if name.startswith("lbf-") else name
    if not ID_PATTERN.fullmatch(env_id) or env_id not in gym.registry:
        return None
    canonical = "lbf-" + env_id.removeprefix("Foraging-").removesuffix("-v3")
    return TaskSpec(
        name=canonical,
        family="lbf",
        team="every agent on the grid, all controlled",
        reward=(
            "sum of the agents' rewards: a collected food gives each loading agent (its level x the food's "
            "level), normalised so that collecting every food in an episode totals 1"
        ),
        factory=partial(LBFEnv, canonical, env_id),
        probes=probes,
        trial_steps=TRIAL_STEPS,
        **_describe(env_id),
    )


def names() -> list[str]:
    ids = (env_id for env_id in gym.registry if ID_PATTERN.fullmatch(env_id))
    return sorted("lbf-" + i.removeprefix("Foraging-").removesuffix("-v3") for i in ids)


FAMILY = TaskFamily(
    key="lbf",
    title="Level-based foraging (lbforaging)",
    patterns=("lbf-[<S>s-]<A>x<A>-<P>p-<F>f[-coop]", "Foraging-...-v3 (raw gymnasium id)"),
    parse=parse,
    names=names,
    examples=("lbf-8x8-2p-2f", "lbf-2s-10x10-3p-3f", "lbf-8x8-2p-2f-coop", "lbf-15x15-4p-3f"),
)
