"""Task specifications and the registry that turns a name a user types into an environment.

A *task* is one concrete, named configuration of an environment family (``mpe-spread-6``,
``lbf-2s-10x10-3p-3f``). Each family exposes one :class:`TaskFamily` that can parse names and list the
concrete ones it knows; :func:`resolve_task` asks each family in turn. The four built-in families are
listed in :func:`families`; installed packages add their own through the ``qllm.tasks`` entry-point
group, and a one-off task is named by reference, ``package.module:factory``
(:mod:`qllm.envs.plugins`). Either way a plugged-in task is accepted everywhere a task name is.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from qllm.envs.contract import EnvInfo, MultiAgentEnv
from qllm.envs.probes import Probe, ProbeMaker

BUILT_IN = "built-in"
DEFAULT_TASK = "lbf-8x8-2p-2f"
"""The task every command and :class:`~qllm.rl.config.TrainConfig` use when none is named."""
DEFAULT_TRIAL_STEPS = 10_000
"""Trial budget of a task that names none (see :mod:`qllm.agents.trial`)."""


class TaskNameError(ValueError):
    """A task name that no family recognises, or with parameters out of range."""


class TaskPluginError(TaskNameError):
    """A plugged-in task that cannot be used: its module, factory or schema is broken (the message names
    the plugin and says what is wrong)."""


def describe_error(exc: BaseException) -> str:
    """A plugin's exception in one line: its type and message."""
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class TaskSpec:
    """Everything known about a task before its environment is built."""

    name: str
    """Canonical name, e.g. ``mpe-spread-3``."""
    family: str
    """Family key, e.g. ``matrix``, ``mpe``, ``lbf``, ``rware`` or a plugin's."""
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
    probes: ProbeMaker | None = None
    """The task's semantic probes (:mod:`qllm.envs.probes`); None when it has none."""
    trial_steps: int = DEFAULT_TRIAL_STEPS
    """Environment steps of a trial training run of a candidate credit function."""
    origin: str = BUILT_IN
    """Where the task comes from: ``built-in``, or the plugin that provides it."""

    def make(self) -> MultiAgentEnv:
        if self.origin == BUILT_IN:
            return self.factory()
        try:  # a plugin's bug is reported as the plugin's, in one line
            return self.factory()
        except TaskPluginError:
            raise
        except Exception as exc:
            raise TaskPluginError(
                f"task {self.name!r} ({self.origin}): building its environment failed: {describe_error(exc)}"
            ) from exc

    def semantic_probes(self) -> list[Probe] | None:
        """The task's probes, built on a fresh environment; None when the task declares none."""
        if self.probes is None:
            return None
        env = self.make()
        try:
            return list(self.probes(env))
        finally:
            env.close()


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
    origin: str = BUILT_IN
    """``built-in``, or the plugin that provides the family (set when it is loaded)."""

    @classmethod
    def of(cls, key: str, title: str, specs: Sequence[TaskSpec], examples: int = 4) -> TaskFamily:
        """A family of a fixed list of tasks (what most plugins need): each name is its own pattern."""
        by_name = {s.name: s for s in specs}
        if len(by_name) != len(specs):
            raise ValueError(f"family {key!r} lists a task name twice")
        return cls(
            key=key,
            title=title,
            patterns=tuple(by_name),
            parse=by_name.get,
            names=lambda: list(by_name),
            examples=tuple(list(by_name)[:examples]),
        )


@dataclass(frozen=True)
class Registry:
    """Every family that loaded, and one line per plugin that did not."""

    families: tuple[TaskFamily, ...]
    problems: tuple[str, ...] = field(default=())


def builtin_families() -> tuple[TaskFamily, ...]:
    """The four families that ship with qllm, in listing order."""
    # Imported here: lbf imports lbforaging, which `import qllm.envs` should not (mpe and rware import
    # theirs only when one of their environments is built or their names are listed).
    from qllm.envs import lbf, matrix, mpe, rware  # noqa: PLC0415

    return (matrix.FAMILY, mpe.FAMILY, lbf.FAMILY, rware.FAMILY)


def registry() -> Registry:
    """Built-in and installed families (plugins are loaded once per process)."""
    from qllm.envs.plugins import installed_plugins  # noqa: PLC0415

    plugins = installed_plugins()
    return Registry((*builtin_families(), *plugins.families), plugins.problems)


def families() -> tuple[TaskFamily, ...]:
    """All registered task families, built-in first."""
    return registry().families


def all_task_names() -> list[str]:
    return [name for fam in families() for name in fam.names()]


def resolve_task(name: str) -> TaskSpec:
    """The spec for a task name, a raw simulator id or a ``module:factory`` reference;
    :class:`TaskNameError` with suggestions if none."""
    cleaned = name.strip()
    if ":" in cleaned:
        from qllm.envs.plugins import resolve_reference  # noqa: PLC0415

        return resolve_reference(cleaned)
    found = registry()
    for fam in found.families:
        spec = fam.parse(cleaned)
        if spec is not None:
            return spec
    suggestions = difflib.get_close_matches(cleaned, all_task_names(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
    broken = (
        f" ({len(found.problems)} task plugin(s) failed to load: {found.problems[0]})"
        if found.problems
        else ""
    )
    raise TaskNameError(f"unknown task {name!r}.{hint} Run `qllm tasks list` to see every task.{broken}")


def make_env(name: str) -> MultiAgentEnv:
    """Build the environment for a task name."""
    return resolve_task(name).make()


def task_info(name: str) -> EnvInfo:
    """A task's sizes (agents, actions, observation and state widths, episode limit), from an environment
    built and closed for them."""
    env = make_env(name)
    try:
        return env.info
    finally:
        env.close()


def folder_name(task: str) -> str:
    """``task`` as part of a run folder's name: a ``module:factory`` reference's ``:`` becomes ``+``."""
    return re.sub(r"[^\w.+-]", "+", task)
