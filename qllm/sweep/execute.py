"""Run a sweep to completion: whatever is unfinished, on an executor, with retries and a ledger.

Finished means the run folder holds its final model. Everything else is (re)submitted on every call:
a run that was interrupted continues from its latest checkpoint, one that never checkpointed starts
over, one that failed is retried up to ``retries`` times and then reported (the sweep goes on without
it). So an interrupted sweep resumes by running the same command again, repeating no finished run.

Executors only move jobs to wherever they run: :class:`InlineExecutor` runs them in this process, one
after another (tests, debugging); :mod:`qllm.sweep.ray_executor` on Ray. A job is anything with a
name that can run itself and say how it failed (:class:`Job`): a sweep's training runs
(:class:`RunJob`), and the generation graph's trial trainings (:class:`qllm.agents.trial.TrialJob`).
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from qllm.agents import Models
from qllm.agents.run import Listener
from qllm.rl.config import TrainConfig
from qllm.rl.train import CHECKPOINT_DIR, FINAL_MODEL, Progress, checkpoints, train
from qllm.sweep.credit import prepare_credit_functions
from qllm.sweep.plan import LEDGER_FILE, RUNS_DIR, RunKey, SweepPlan

ProgressReport = Callable[[str, int], None]
"""Called by a training run with its name and the environment steps it has done."""
ResultT_co = TypeVar("ResultT_co", covariant=True)


class Job(Protocol[ResultT_co]):
    """Work an executor can run anywhere: plain data that runs itself (and never raises)."""

    @property
    def name(self) -> str: ...

    def run(self, report: ProgressReport | None = None) -> ResultT_co:
        """Do the work, reporting progress; a failure is the result, not an exception."""
        ...

    def failure(self, error: str) -> ResultT_co:
        """The result when the worker running the job died before it could say."""
        ...


@dataclass(frozen=True)
class RunJob:
    """One attempt at one run: everything a worker needs, as plain data (it may cross processes)."""

    name: str
    config: dict[str, Any]
    run_dir: str
    attempt: int

    def run(self, report: ProgressReport | None = None) -> RunRecord:
        return train_job(self, report)

    def failure(self, error: str) -> RunRecord:
        return RunRecord(self.name, self.attempt, "failed", 0.0, error=error)


@dataclass(frozen=True)
class RunRecord:
    """A ledger line: how one attempt ended."""

    run: str
    attempt: int
    status: Literal["done", "failed"]
    seconds: float
    final_return: float | None = None
    error: str | None = None
    finished: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))


class Executor(Protocol):
    """Where jobs run."""

    def submit(self, job: Job[Any]) -> None: ...

    def wait(self, timeout: float) -> list[tuple[Any, Any]]:
        """``(job, result)`` for the jobs that ended since the last call (waiting up to ``timeout``
        seconds for one)."""
        ...

    def progress(self) -> dict[str, int]:
        """Environment steps done by each job in progress."""
        ...

    def close(self) -> None: ...


def is_finished(run_dir: Path) -> bool:
    return (run_dir / FINAL_MODEL).is_file()


def train_job(job: RunJob, report: ProgressReport | None = None) -> RunRecord:
    """Train (or continue) one run and say how it ended; a failure is returned, not raised."""
    start = time.monotonic()
    run_dir = Path(job.run_dir)
    try:
        result = _train(job, run_dir, report)
    except Exception as exc:  # any failure of one run is recorded; the sweep goes on
        error = "".join(traceback.format_exception_only(exc)).strip()
        return RunRecord(job.name, job.attempt, "failed", time.monotonic() - start, error=error)
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)  # a finished run is never resumed
    return RunRecord(job.name, job.attempt, "done", time.monotonic() - start, result)


def _train(job: RunJob, run_dir: Path, report: ProgressReport | None) -> float:
    config = TrainConfig.from_dict(job.config)
    resume = run_dir if checkpoints(run_dir) else None
    if resume is None and run_dir.exists():
        shutil.rmtree(run_dir)  # started, but saved nothing to continue from
    on_progress = None if report is None else _throttled(job.name, report)
    result = train(config, run_dir.parent, resume=resume, on_progress=on_progress, run_name=run_dir.name)
    return result.final_test_return


def _throttled(name: str, report: ProgressReport, seconds: float = 1.0) -> Callable[[Progress], None]:
    last = 0.0

    def on_progress(progress: Progress) -> None:
        nonlocal last
        if time.monotonic() - last >= seconds:
            last = time.monotonic()
            report(name, progress.t_env)

    return on_progress


class InlineExecutor:
    """Runs each submitted job in this process, in order, when asked to wait."""

    def __init__(self) -> None:
        self.queue: list[Job[Any]] = []
        self.running: dict[str, int] = {}

    def submit(self, job: Job[Any]) -> None:
        self.queue.append(job)

    def wait(self, timeout: float) -> list[tuple[Any, Any]]:
        if not self.queue:
            return []
        job = self.queue.pop(0)
        result = job.run(self.running.__setitem__)
        self.running.pop(job.name, None)
        return [(job, result)]

    def progress(self) -> dict[str, int]:
        return dict(self.running)

    def close(self) -> None:
        self.queue.clear()


class Ledger:
    """``ledger.jsonl``: every attempt that ended, appended as it ends (never rewritten)."""

    def __init__(self, sweep_dir: Path) -> None:
        self.path = sweep_dir / LEDGER_FILE

    def append(self, record: RunRecord) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(asdict(record)) + "\n")

    def records(self) -> list[RunRecord]:
        if not self.path.is_file():
            return []
        return [RunRecord(**json.loads(line)) for line in self.path.read_text().splitlines() if line.strip()]

    def attempts(self) -> Counter[str]:
        """Attempts recorded per run."""
        return Counter(record.run for record in self.records())


@dataclass
class SweepStatus:
    """Where a sweep stands; passed to ``on_update`` whenever it changes."""

    budgets: dict[str, int]
    """Every run of the sweep -> its budget in environment steps."""
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    running: dict[str, int] = field(default_factory=dict)
    """Runs in progress (submitted and not ended) -> environment steps done."""
    ended: list[RunRecord] = field(default_factory=list)
    """Every attempt that ended in this call, in order (failed attempts that were retried included)."""

    @property
    def total_runs(self) -> int:
        return len(self.budgets)

    @property
    def steps_done(self) -> int:
        return sum(self.budgets[name] for name in self.done) + sum(self.running.values())

    @property
    def steps_total(self) -> int:
        return sum(self.budgets.values()) - sum(self.budgets[name] for name in self.failed)


def run_sweep(
    sweep_dir: Path,
    executor: Executor,
    *,
    retries: int = 1,
    on_update: Callable[[SweepStatus], None] | None = None,
    models: Models | None = None,
    listener: Listener | None = None,
    poll_seconds: float = 1.0,
) -> SweepStatus:
    """Finish the sweep in ``sweep_dir``: generate its missing credit functions, then train every
    unfinished run on ``executor``. Returns the final status; failed runs are listed, not raised."""
    sweep_dir = sweep_dir.resolve()  # workers may run elsewhere: every path they get is absolute
    plan = SweepPlan.load(sweep_dir)
    credit_files = prepare_credit_functions(sweep_dir, plan, models=models, listener=listener)
    ledger = Ledger(sweep_dir)
    status = SweepStatus(budgets={key.name: plan.steps_for(key.task) for key in plan.runs()})
    attempts = ledger.attempts()
    for key in plan.runs():
        run_dir = sweep_dir / RUNS_DIR / key.name
        if is_finished(run_dir):
            shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
            status.done.append(key.name)
            continue
        executor.submit(_job(plan, key, run_dir, credit_files, attempts[key.name] + 1))
        status.running[key.name] = 0
    _notify(on_update, status)
    tries = dict.fromkeys(status.running, 1)  # attempts in this call; the ledger numbers them across calls
    while status.running:
        for job, record in executor.wait(poll_seconds):
            ledger.append(record)
            status.ended.append(record)
            if record.status == "done":
                status.done.append(job.name)
            elif tries[job.name] <= retries:
                tries[job.name] += 1
                status.running[job.name] = 0
                executor.submit(replace(job, attempt=job.attempt + 1))  # resumes from its checkpoint
                continue
            else:
                status.failed.append(job.name)
            del status.running[job.name]
        for name, steps in executor.progress().items():
            if name in status.running:
                status.running[name] = steps
        _notify(on_update, status)
    return status


def _job(plan: SweepPlan, key: RunKey, run_dir: Path, credit_files: dict[str, Path], attempt: int) -> RunJob:
    config = plan.config(key, credit_files.get(key.task))
    return RunJob(key.name, config.to_dict(), str(run_dir), attempt)


def _notify(on_update: Callable[[SweepStatus], None] | None, status: SweepStatus) -> None:
    if on_update is not None:
        on_update(status)
