"""Semantic probes: crafted states where a task's mechanics say which agent deserves more credit.

A credit function can pass every sandbox check and still assign credit backwards. A probe is one global
state built field by field through the task's schema, with a *favoured* and an *other* agent: a function
passes the probe when ``w_favoured(s) > w_other(s)``. Probes are derived from the rules of a task, never
from a model's output, so they belong to the task: each :class:`~qllm.envs.tasks.TaskSpec` names its
:data:`ProbeMaker` (the built-in families' are beside their adapters; a plugin may declare none, and its
evals then run without the semantic scorers).

Probe every ordered pair of agents where roles can be swapped, so that a function that merely prefers
agent 0 scores about one half.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from qllm.envs.schema import StateSchema

if TYPE_CHECKING:
    from qllm.envs.contract import MultiAgentEnv


@dataclass(frozen=True)
class Probe:
    """One crafted state and the agent the task's mechanics favour in it."""

    name: str
    state: np.ndarray
    favoured: int
    other: int


ProbeMaker = Callable[["MultiAgentEnv"], Iterable[Probe]]
"""A task's probes, from a freshly built environment of it (for tasks whose probes start from a real
state, such as a warehouse's goal cells)."""


def zero_values(schema: StateSchema) -> dict[str, np.ndarray]:
    """All-zero values of every field of ``schema``, to be filled in and packed."""
    return {f.name: np.zeros(f.shape, dtype=np.float32) for f in schema}
