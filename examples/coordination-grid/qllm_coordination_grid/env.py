"""The coordination grid: a small PettingZoo ``ParallelEnv`` written for this example, unrelated to qllm.

``n`` agents start on distinct random cells of a ``size x size`` grid with one goal cell. Each step
every agent stays or moves one cell (moves off the grid are masked out). An agent standing on the goal
earns a small reward each step; when every agent stands on it at once, each earns ``1 / n`` and the
episode ends. So the team must gather, and an agent that leaves the goal early costs everyone.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

MOVES = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
ACTION_NAMES = ("stay", "up", "down", "left", "right")
HOLD_REWARD = 0.02
"""Per step, to an agent on the goal: enough to learn to hold it, small beside the gathering reward."""


class CoordinationGrid(ParallelEnv):
    metadata: ClassVar[dict[str, Any]] = {"name": "coordination_grid_v0"}

    def __init__(self, size: int = 5, n_agents: int = 2, max_steps: int = 25) -> None:
        self.size, self.n, self.max_steps = size, n_agents, max_steps
        self.possible_agents = [f"agent_{i}" for i in range(n_agents)]
        self.agents: list[str] = []
        obs_dim = 2 * n_agents + 2
        self._observation_space = spaces.Dict(
            {
                "observation": spaces.Box(-1.0, 1.0, (obs_dim,), dtype=np.float32),
                "action_mask": spaces.MultiBinary(len(MOVES)),
            }
        )
        self._action_space = spaces.Discrete(len(MOVES))
        self.positions = np.zeros((n_agents, 2), dtype=np.int64)
        self.goal = np.zeros(2, dtype=np.int64)
        self.t = 0

    def observation_space(self, agent: str) -> spaces.Space:
        return self._observation_space

    def action_space(self, agent: str) -> spaces.Space:
        return self._action_space

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        rng = np.random.default_rng(seed)
        cells = rng.choice(self.size * self.size, size=self.n + 1, replace=False)
        self.goal = np.array(divmod(int(cells[0]), self.size))
        self.positions = np.array([divmod(int(c), self.size) for c in cells[1:]])
        self.agents, self.t = list(self.possible_agents), 0
        return self._observations(), {a: {} for a in self.agents}

    def step(self, actions: dict[str, int]) -> tuple[dict, dict, dict, dict, dict]:
        for i, agent in enumerate(self.possible_agents):
            move = MOVES[int(actions[agent])]
            self.positions[i] = np.clip(self.positions[i] + move, 0, self.size - 1)
        self.t += 1
        on_goal = (self.positions == self.goal).all(axis=1)
        gathered = bool(on_goal.all())
        rewards = {
            a: (1.0 / self.n if gathered else HOLD_REWARD * float(on_goal[i]))
            for i, a in enumerate(self.possible_agents)
        }
        truncated = not gathered and self.t >= self.max_steps
        terminations = dict.fromkeys(self.possible_agents, gathered)
        truncations = dict.fromkeys(self.possible_agents, truncated)
        observations = self._observations()
        if gathered or truncated:
            self.agents = []
        return observations, rewards, terminations, truncations, {a: {} for a in self.possible_agents}

    def state(self) -> np.ndarray:
        """Every agent's (row, col), then the goal's: in cells."""
        return np.concatenate([self.positions.reshape(-1), self.goal]).astype(np.float32)

    def _observations(self) -> dict[str, Any]:
        scale = max(self.size - 1, 1)
        out = {}
        for i, agent in enumerate(self.possible_agents):
            others = np.delete(self.positions, i, axis=0) - self.positions[i]
            vector = np.concatenate([self.positions[i] / scale, (self.goal - self.positions[i]) / scale,
                                     others.reshape(-1) / scale])  # fmt: skip
            mask = np.array(
                [0 <= r < self.size and 0 <= c < self.size for r, c in self.positions[i] + np.array(MOVES)],
                dtype=np.int8,
            )
            out[agent] = {"observation": vector.astype(np.float32), "action_mask": mask}
        return out
