"""Task specifications and the registry that turns a name a user types into an environment.

A *task* is one concrete, named configuration of an environment family (``mpe-spread-6``,
``lbf-2s-10x10-3p-3f``). Each family module exposes one :class:`TaskFamily` that can parse names and
list the concrete ones it knows; :func:`resolve_task` asks each family in turn, so adding a family is
one entry in :data:`FAMILIES` and nothing else.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from qllm.envs.contract import MultiAgentEnv


@dataclass(frozen=True)
class TaskSpec:
    """Everything known about a task before its environment is built."""

    name: str
    """Canonical name, e.g. ``mpe-spread-3``."""
    family: str
    """Family key: ``matrix``, ``mpe``, ``lbf`` or ``rware``."""
    summary: str
    """One line, for listings."""
    description: str
    """What happens in the task and what the team must achieve (a paragraph, no state layout)."""
    team: str
    """Who the controlled agents are."""
    reward: str
    """How the shared team reward is computed from the simulator's rewards."""
    factory: Callable[[], MultiAgentEnv]
    """Builds a fresh environment for this task."""
    opponent: str | None = None
    """Policy driving any agents outside the team, or None when there are none."""

    def make(self) -> MultiAgentEnv:
        return self.factory()


@dataclass(frozen=True)
class TaskFamily:
    """A family of tasks sharing one adapter."""

    key: str
    title: str
    patterns: tuple[str, ...]
    """Name patterns users can type, e.g. ``mpe-spread-<N>``."""
    parse: Callable[[str], TaskSpec | None]
    """Return the spec for a name of this family, None for a name it does not recognise. May raise
    :class:`TaskNameError` for a name of this family with bad parameters (e.g. ``matrix-penalty-500``)."""
    names: Callable[[], list[str]]
    """Concrete canonical names, for listings and did-you-mean suggestions."""
    examples: tuple[str, ...]
    """A few representative names, shown first in listings."""


class TaskNameError(ValueError):
    """A task name that no family recognises, or with parameters out of range."""


def families() -> tuple[TaskFamily, ...]:
    """All registered task families, in listing order."""
    # Imported here: the family modules import their simulators, which `import qllm.envs` should not.
    from qllm.envs import lbf, matrix, mpe, rware  # noqa: PLC0415

    return (matrix.FAMILY, mpe.FAMILY, lbf.FAMILY, rware.FAMILY)


def all_task_names() -> list[str]:
    return [name for fam in families() for name in fam.names()]


def resolve_task(name: str) -> TaskSpec:
    """The spec for a task name or a raw simulator id; :class:`TaskNameError` with suggestions if none."""
    cleaned = name.strip()
    for fam in families():
        spec = fam.parse(cleaned)
        if spec is not None:
            return spec
    suggestions = difflib.get_close_matches(cleaned, all_task_names(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
    raise TaskNameError(f"unknown task {name!r}.{hint} Run `qllm tasks list` to see every task.")


def make_env(name: str) -> MultiAgentEnv:
    """Build the environment for a task name."""
    return resolve_task(name).make()
