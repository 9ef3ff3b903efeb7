"""Opponents in the MPE scenarios that have one: scripted policies, and EPyMARL's pretrained networks.

An opponent is not learned by qllm: at every step it sees what its own agent sees (:class:`OpponentView`:
the simulator's world, itself, the team, and its own observation) and picks one of MPE's five discrete
moves. Two kinds play (:class:`OpponentKind`), and a task's name says which:

- **scripted** (``mpe-adversary``, ``mpe-tag``): deterministic rules written here, documented in each
  task's description. The adversary heads for the nearest good agent; the prey flees the nearest
  predator and turns back inwards near the arena's edge.
- **pretrained** (``mpe-adversary-pretrained``, ``mpe-tag-pretrained``): the networks EPyMARL ships and
  the QLLM paper's Table 1 uses through EPyMARL (``qllm/envs/pretrained/``, Apache-2.0, with their
  attribution). Each is BatchNorm over the observation, two ReLU layers and a linear output; the opponent
  plays the argmax of its outputs for its current observation, as EPyMARL's wrappers do. The forward
  pass runs in numpy (float32), a few microseconds per step.

The networks' five outputs are moves in the original OpenAI MPE's order, where output 1 pushes along
+x and 3 along +y (``u[0] = a[1] - a[2]``, ``u[1] = a[3] - a[4]``), while mpe2's (and PettingZoo's)
discrete actions 1 and 3 are move_left and move_down (PettingZoo issue #1143 describes the two orders).
So an output is mapped to the mpe2 action that moves the same way (:data:`OPENAI_MPE_MOVES`). Played
without that mapping, as EPyMARL's wrappers pass them, the prey runs into the predators and the
adversary away from the goal: worse than random (``benchmarks/mpe_opponents.py`` measures both, see
``reports/pretrained-opponents``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

import numpy as np

PREY_EDGE = 0.8
"""Past this distance from the centre, the scripted prey's flight also pulls it back inwards (the
scenario penalises prey for leaving the screen at |x| > 0.9)."""
BATCH_NORM_EPS = 1e-5
"""``torch.nn.BatchNorm1d``'s default, which the pretrained networks were trained with."""
OPENAI_MPE_MOVES = (0, 2, 1, 4, 3)
"""mpe2's discrete action for each output of a pretrained network: no-op, then +x (mpe2's move_right),
-x (move_left), +y (move_up), -y (move_down)."""
AS_OUTPUT = (0, 1, 2, 3, 4)
"""Outputs taken as mpe2 actions unchanged, as EPyMARL's wrappers take them (for comparison only)."""


class OpponentKind(StrEnum):
    SCRIPTED = "scripted"
    PRETRAINED = "pretrained"


@dataclass(frozen=True)
class OpponentView:
    """What an opponent acts on at one step."""

    world: Any
    """The MPE world (positions and velocities of every entity)."""
    me: Any
    """The opponent's own MPE agent."""
    team: Sequence[Any]
    """The agents qllm's learner controls."""
    observation: np.ndarray
    """The opponent's own observation, as the environment gives it to that agent."""


Opponent = Callable[[OpponentView], int]


def move_towards(direction: np.ndarray) -> int:
    """The discrete MPE move (1 left, 2 right, 3 down, 4 up) best aligned with ``direction``."""
    dx, dy = float(direction[0]), float(direction[1])
    if dx == 0.0 and dy == 0.0:
        return 0
    if abs(dx) >= abs(dy):
        return 2 if dx > 0 else 1
    return 4 if dy > 0 else 3


def chase_nearest_team_agent(view: OpponentView) -> int:
    """Scripted MPE adversary: head for the nearest team agent."""
    deltas = [a.state.p_pos - view.me.state.p_pos for a in view.team]
    return move_towards(min(deltas, key=lambda d: float(np.hypot(*d))))


def flee_nearest_team_agent(view: OpponentView) -> int:
    """Scripted MPE prey: run from the nearest predator, turning inwards near the arena edge."""
    pos = view.me.state.p_pos
    away = min((pos - a.state.p_pos for a in view.team), key=lambda d: float(np.hypot(*d)))
    away = away / max(float(np.hypot(*away)), 1e-6)
    inwards = -pos * (np.abs(pos) > PREY_EDGE)
    return move_towards(away + 2.0 * inwards)


@dataclass(frozen=True)
class PretrainedPolicy:
    """A pretrained opponent network, evaluated in numpy: normalise, two ReLU layers, argmax."""

    name: str
    mean: np.ndarray
    scale: np.ndarray
    """BatchNorm's running statistics and affine weights folded into ``(x - mean) * scale + shift``."""
    shift: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    """``(weight [out, in], bias [out])`` of the three linear layers."""
    moves: tuple[int, ...] = OPENAI_MPE_MOVES
    """The mpe2 action played for each output."""

    @property
    def obs_dim(self) -> int:
        return self.mean.shape[0]

    @classmethod
    @functools.cache
    def load(cls, name: str) -> PretrainedPolicy:
        """``qllm/envs/pretrained/{name}.pt``, a policy ``state_dict`` (tensors only)."""
        import torch  # noqa: PLC0415  (only where a pretrained opponent plays)

        with resources.as_file(resources.files("qllm.envs") / "pretrained" / f"{name}.pt") as path:
            state = torch.load(path, map_location="cpu", weights_only=True)
        array = {key: value.numpy().astype(np.float32) for key, value in state.items() if value.ndim > 0}
        scale = array["in_fn.weight"] / np.sqrt(array["in_fn.running_var"] + BATCH_NORM_EPS)
        layers = tuple((array[f"fc{k}.weight"], array[f"fc{k}.bias"]) for k in (1, 2, 3))
        return cls(name, array["in_fn.running_mean"], scale, array["in_fn.bias"], layers)

    def logits(self, observation: np.ndarray) -> np.ndarray:
        hidden = (np.asarray(observation, dtype=np.float32) - self.mean) * self.scale + self.shift
        for weight, bias in self.layers[:-1]:
            hidden = np.maximum(weight @ hidden + bias, 0.0)
        weight, bias = self.layers[-1]
        return weight @ hidden + bias

    def __call__(self, view: OpponentView) -> int:
        if view.observation.shape != (self.obs_dim,):
            raise ValueError(
                f"the pretrained {self.name} network reads an observation of {self.obs_dim} numbers, "
                f"but its agent observes {view.observation.shape}"
            )
        return self.moves[int(np.argmax(self.logits(view.observation)))]


def pretrained_adversary() -> PretrainedPolicy:
    """EPyMARL's simple_adversary adversary (observation 8: both landmarks and both good agents,
    relative to itself)."""
    return PretrainedPolicy.load("epymarl_adversary")


def pretrained_prey() -> PretrainedPolicy:
    """EPyMARL's simple_tag prey (observation 14: its velocity and position, the obstacles and the
    predators relative to itself)."""
    return PretrainedPolicy.load("epymarl_prey")
