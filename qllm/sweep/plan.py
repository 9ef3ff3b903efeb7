"""What a sweep is: every (task, preset, seed) trained at one budget, fixed once in ``sweep.json``.

A sweep folder holds everything about it, so it can be resumed, moved and reported on::

    SWEEP/
      sweep.json                  the plan (this module)
      artifacts/TASK.py           the credit function the tfcaf presets train with on TASK
      artifacts/generate/TASK/    the generation run that wrote it (when the sweep generated it)
      runs/TASK__PRESET__SEED/    one training run folder (``qllm.rl.train``), named by its key
      ledger.jsonl                one line per finished or failed attempt

The plan is written when the sweep is created and never changes, except to add seeds
(:meth:`SweepPlan.with_seeds`); resuming reads it back. Run keys are
ordered seed-major (every task and preset of seed 0 first), so a sweep stopped early already has a
complete comparison of its first seeds.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qllm.envs import TaskNameError, resolve_task
from qllm.envs.tasks import folder_name
from qllm.rl.config import PRESETS, TrainConfig, preset

SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"
ARTIFACTS_DIR = "artifacts"
LEDGER_FILE = "ledger.jsonl"
CHECKPOINTS_PER_RUN = 4
"""An interrupted run loses at most this fraction of its budget (unless ``checkpoint_interval`` is set)."""
EVALUATIONS_PER_RUN = 10
"""Points on each learning curve (unless ``eval_interval`` is set)."""


class SweepError(ValueError):
    """A sweep that cannot be created or resumed as asked."""


@dataclass(frozen=True, order=True)
class RunKey:
    """One training run of a sweep."""

    task: str
    preset: str
    seed: int

    @property
    def name(self) -> str:
        """The run's folder name under ``runs/`` (also how the ledger refers to it)."""
        return f"{folder_name(self.task)}__{self.preset}__{self.seed}"


@dataclass(frozen=True)
class SweepPlan:
    tasks: tuple[str, ...]
    presets: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    """Training budget of every run, in environment steps (unless ``task_steps`` names its task)."""
    task_steps: dict[str, int] = field(default_factory=dict)
    """Task -> its own budget (a one-step matrix game needs far fewer steps than foraging)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Training settings applied on top of every preset (e.g. one exploration schedule for all)."""
    credit_files: dict[str, str] = field(default_factory=dict)
    """Task -> credit-function file given by the user; the other tasks' functions are generated."""
    generation: dict[str, Any] = field(default_factory=dict)
    """Generation settings (without the task) used to write the missing credit functions."""

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        if not (self.tasks and self.presets and self.seeds):
            raise SweepError("a sweep needs at least one task, one preset and one seed")
        if min([self.steps, *self.task_steps.values()]) < 1:
            raise SweepError("every budget must be at least 1 step")
        unknown = [name for name in self.presets if name not in PRESETS]
        if unknown:
            raise SweepError(f"unknown presets {unknown}; choose from {', '.join(PRESETS)}")
        for task in self.tasks:
            try:
                resolve_task(task)
            except TaskNameError as exc:
                raise SweepError(str(exc)) from None
        for what, tasks in (("credit functions", self.credit_files), ("budgets", self.task_steps)):
            stray = sorted(set(tasks) - set(self.tasks))
            if stray:
                raise SweepError(f"{what} given for tasks outside the sweep: {stray}")
        for name in ("task", "preset", "seed", "steps", "tfcaf"):
            if name in self.overrides:
                raise SweepError(f"{name!r} is set by the sweep itself, not by an override")
        TrainConfig().replace(**self.overrides)  # unknown setting names fail here, before anything runs

    @property
    def credit_presets(self) -> tuple[str, ...]:
        """The presets that train with a credit function (the tfcaf mixer)."""
        return tuple(name for name in self.presets if PRESETS[name].get("mixer") == "tfcaf")

    def with_seeds(self, seeds: int) -> SweepPlan:
        """This plan with seeds ``0..seeds-1``: more runs of the same tasks, presets, budgets and credit
        functions. A plan never loses runs: fewer seeds than it has are refused."""
        if self.seeds != tuple(range(len(self.seeds))):
            raise SweepError(f"the sweep's seeds are {list(self.seeds)}, not 0..N-1: no seeds can be added")
        if seeds < len(self.seeds):
            raise SweepError(
                f"the sweep already has {len(self.seeds)} seeds; a sweep adds seeds but never drops runs"
            )
        return dataclasses.replace(self, seeds=tuple(range(seeds)))

    def runs(self) -> list[RunKey]:
        return [RunKey(t, p, s) for s in self.seeds for t in self.tasks for p in self.presets]

    def steps_for(self, task: str) -> int:
        return self.task_steps.get(task, self.steps)

    def config(self, key: RunKey, credit_file: Path | None) -> TrainConfig:
        """The training config of one run; ``credit_file`` for the tfcaf presets."""
        steps = self.steps_for(key.task)
        schedule = {
            "eval_interval": max(1, steps // EVALUATIONS_PER_RUN),
            "checkpoint_interval": max(1, steps // CHECKPOINTS_PER_RUN),
        }
        tfcaf = str(credit_file) if key.preset in self.credit_presets and credit_file else None
        return preset(
            key.preset,
            **{**schedule, **self.overrides},
            task=key.task,
            seed=key.seed,
            steps=steps,
            tfcaf=tfcaf,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepPlan:
        return cls(
            tasks=tuple(data["tasks"]),
            presets=tuple(data["presets"]),
            seeds=tuple(int(s) for s in data["seeds"]),
            steps=int(data["steps"]),
            task_steps={task: int(n) for task, n in data.get("task_steps", {}).items()},
            overrides=dict(data.get("overrides", {})),
            credit_files=dict(data.get("credit_files", {})),
            generation=dict(data.get("generation", {})),
        )

    def save(self, sweep_dir: Path) -> None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, sweep_dir: Path) -> SweepPlan:
        path = sweep_dir / SWEEP_FILE
        if not path.is_file():
            raise SweepError(f"{sweep_dir} is not a sweep folder (no {SWEEP_FILE})")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError) as exc:
            raise SweepError(f"{path} is not a sweep this version of qllm can read: {exc}") from None


def canonical_task(name: str) -> str:
    try:
        return resolve_task(name).name
    except TaskNameError as exc:
        raise SweepError(str(exc)) from None
