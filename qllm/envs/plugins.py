"""Tasks from outside qllm: installed plugin packages, and one-off ``module:factory`` references.

An installed package adds task families by declaring an entry point in the ``qllm.tasks`` group of its
``pyproject.toml``; the object it names is a :class:`~qllm.envs.tasks.TaskFamily`, or a function of no
arguments returning one::

    [project.entry-points."qllm.tasks"]
    coordgrid = "qllm_coordination_grid:FAMILY"

A one-off task needs no package: ``--task mymodule:make_task`` imports ``mymodule`` (from the current
directory too, as ``python -m`` would) and uses the :class:`~qllm.envs.tasks.TaskSpec` it names, or the
one a function of no arguments returns. The reference itself is the task's name, so run folders, sweeps
and trials built from it resolve it the same way.

Plugins are user code: every way one can break (it does not import, names the wrong kind of object,
raises, reuses a built-in name) ends in one line naming the plugin. A broken installed plugin never
stops the built-in tasks from working: it is left out, and ``qllm tasks list`` says why.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from dataclasses import replace
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import numpy as np

from qllm.envs.contract import MultiAgentEnv
from qllm.envs.tasks import (
    BUILT_IN,
    Registry,
    TaskFamily,
    TaskNameError,
    TaskPluginError,
    TaskSpec,
    builtin_families,
    describe_error,
)

ENTRY_POINT_GROUP = "qllm.tasks"
ONE_OFF = "one-off reference"
CHECK_EPISODES = 3
"""Random episodes ``qllm tasks show`` plays on a plugged-in task to check it against its schema."""


def _made(target: Any, kind: type) -> Any:
    """``target`` itself when it is a ``kind``, else what calling it (a factory of no arguments) returns."""
    return target() if callable(target) and not isinstance(target, kind) else target


def _stamp(spec: TaskSpec | None, origin: str) -> TaskSpec | None:
    return None if spec is None else replace(spec, origin=origin)


def _guarded_parse(family: TaskFamily, origin: str) -> Callable[[str], TaskSpec | None]:
    """The family's ``parse``, with its specs stamped with their origin and its crashes reported as the
    plugin's."""

    def parse(name: str) -> TaskSpec | None:
        try:
            return _stamp(family.parse(name), origin)
        except TaskNameError:
            raise
        except Exception as exc:
            raise TaskPluginError(
                f"{origin}: parsing task name {name!r} failed: {describe_error(exc)}"
            ) from exc

    return parse


def _origin(entry_point: EntryPoint) -> str:
    dist = entry_point.dist
    package = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"plugin {entry_point.name!r}{package}"


def load_family(entry_point: EntryPoint, taken: dict[str, TaskFamily]) -> TaskFamily:
    """The family an entry point names, checked against the families already ``taken`` (by key)."""
    origin = _origin(entry_point)
    try:
        family = _made(entry_point.load(), TaskFamily)
    except Exception as exc:
        raise TaskPluginError(
            f"{origin} ({entry_point.value}) failed to load: {describe_error(exc)}"
        ) from exc
    if not isinstance(family, TaskFamily):
        raise TaskPluginError(
            f"{origin} ({entry_point.value}) names an object of type {type(family).__name__}, not a "
            "qllm.envs.TaskFamily"
        )
    if family.key in taken:
        raise TaskPluginError(f"{origin}: family key {family.key!r} is taken by {taken[family.key].origin}")
    try:
        names = family.names()
    except Exception as exc:
        raise TaskPluginError(f"{origin}: listing its tasks failed: {describe_error(exc)}") from exc
    for name in names:
        for other in taken.values():
            if other.origin == BUILT_IN and other.parse(name) is not None:
                raise TaskPluginError(f"{origin}: task name {name!r} is a built-in {other.key} task's")
    return replace(family, origin=origin, parse=_guarded_parse(family, origin))


@functools.cache
def installed_plugins() -> Registry:
    """The families of every ``qllm.tasks`` entry point, in name order, and one line per broken one."""
    taken = {f.key: f for f in builtin_families()}
    loaded, problems = [], []
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            family = load_family(entry_point, taken)
        except TaskPluginError as exc:
            problems.append(str(exc))
            continue
        taken[family.key] = family
        loaded.append(family)
    return Registry(tuple(loaded), tuple(problems))


def check_task(env: MultiAgentEnv, episodes: int = CHECK_EPISODES, seed: int = 0) -> int:
    """Play ``episodes`` episodes of ``env`` with uniformly random available actions, so that a plugin's
    errors (a failing step, states outside the declared schema) show at once; the number of states seen."""
    rng = np.random.default_rng(seed)
    states = 0
    for episode in range(episodes):
        step = env.reset(seed=seed + episode)
        states += 1
        while not step.done:
            scores = np.where(step.avail_actions, rng.random(step.avail_actions.shape), -1.0)
            step = env.step(scores.argmax(axis=1))
            states += 1
    return states


class _RenamedFactory:
    """Builds the referenced task's environment under the reference's name (picklable, unlike a lambda)."""

    def __init__(self, factory: Callable[[], MultiAgentEnv], name: str) -> None:
        self.factory, self.name = factory, name

    def __call__(self) -> MultiAgentEnv:
        env = self.factory()
        env.info = replace(env.info, task=self.name)
        return env


def resolve_reference(reference: str) -> TaskSpec:
    """The task a ``package.module:attribute`` reference names (see the module docstring)."""
    module_name, _, attribute = reference.partition(":")
    origin = f"task reference {reference!r}"
    if not module_name or not attribute.isidentifier():
        raise TaskNameError(f"{origin} is not of the form package.module:factory")
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # as `python -m` does; after installed packages, so it shadows none
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise TaskPluginError(
            f"{origin}: no module named {exc.name!r} (install it, or run from the folder that holds it)"
        ) from exc
    except Exception as exc:
        raise TaskPluginError(f"{origin}: importing {module_name} failed: {describe_error(exc)}") from exc
    if not hasattr(module, attribute):
        raise TaskPluginError(f"{origin}: module {module_name} has no attribute {attribute!r}")
    target = getattr(module, attribute)
    try:
        spec = _made(target, TaskSpec)
    except Exception as exc:
        raise TaskPluginError(f"{origin}: {attribute}() raised {describe_error(exc)}") from exc
    if not isinstance(spec, TaskSpec):
        raise TaskPluginError(
            f"{origin} names an object of type {type(spec).__name__}, not a qllm.envs.TaskSpec"
        )
    renamed = _RenamedFactory(spec.factory, reference)
    return replace(spec, name=reference, origin=ONE_OFF, factory=renamed)
