"""Eval suites: named lists of cases (task, notes, K, L, repairs, seeds), one TOML file each.

Shipped suites live in ``qllm/evals/suites/``: ``smoke`` (minutes with the local model) and ``full``
(every family at the paper's budgets, with large-state tasks and tasks marked ``unseen`` that were never
looked at while the prompts were written). ``--suite PATH.toml`` runs a suite of your own. The shipped
suites are package data, read through :mod:`importlib.resources`, so a wheel install has them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from qllm.envs.tasks import TaskNameError, resolve_task
from qllm.files import read_toml

SUITES_DIR: Traversable = files("qllm.evals") / "suites"


class SuiteError(ValueError):
    """A suite that does not exist or cannot be read."""


@dataclass(frozen=True)
class EvalCase:
    task: str
    seeds: tuple[int, ...] = (0,)
    candidates: int = 3
    rounds: int = 3
    repairs: int = 2
    notes: str = ""
    unseen: bool = False
    """Never looked at while the prompts were written: a check against overfitting the prompts."""


@dataclass(frozen=True)
class EvalSuite:
    name: str
    description: str
    cases: tuple[EvalCase, ...]

    @property
    def runs(self) -> int:
        return sum(len(c.seeds) for c in self.cases)


def available_suites() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in SUITES_DIR.iterdir() if p.name.endswith(".toml"))


def _case(data: dict[str, Any], where: str) -> EvalCase:
    known = set(EvalCase.__dataclass_fields__)
    if "task" not in data or set(data) - known:
        raise SuiteError(f"{where}: a case needs `task` and may have {', '.join(sorted(known - {'task'}))}")
    try:
        task = resolve_task(data["task"]).name
    except TaskNameError as exc:
        raise SuiteError(f"{where}: {exc}") from None
    return EvalCase(**{**data, "task": task, "seeds": tuple(data.get("seeds", (0,)))})


def load_suite(name_or_path: str) -> EvalSuite:
    """A shipped suite by name, or a suite file by path."""
    path: Traversable = Path(name_or_path)
    if not Path(name_or_path).suffix:
        path = SUITES_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise SuiteError(f"no suite {name_or_path!r}; shipped suites: {', '.join(available_suites())}")
    data = read_toml(path, "suite", SuiteError)
    cases = tuple(_case(c, f"{path.name} case {i + 1}") for i, c in enumerate(data.get("case", [])))
    if not cases:
        raise SuiteError(f"suite {path} has no [[case]] entries")
    return EvalSuite(path.name.removesuffix(".toml"), data.get("description", ""), cases)
