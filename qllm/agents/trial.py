"""Trial training: each round's credit functions trained briefly beside equal weights, to see how they learn.

What a credit function is for is helping a team learn, and reading its code or its weights does not
show that. So, as Eureka does for LLM-written rewards, every valid candidate of a round (and the best
so far) is trained for a short budget, and so is the *reference*: equal weights, which is VDN, the null
credit function. The results go back to the chooser and the coder (:mod:`qllm.agents.messages`) and
can choose the round's best themselves (``--selection trial``,
:func:`qllm.agents.selection.rank_by_trial`).

Common random numbers: every subject of a run trains with the same seeds, and a trial's seed fixes
its network initialisation, its exploration, its environment resets and its evaluation episodes
(:mod:`qllm.rl.train`), so two subjects' curves differ only through the credit function. Differences
are taken seed by seed (paired) for that reason.

A trial is identified by its :attr:`TrialJob.key`: what is trained (:func:`function_identity` of its
source, or the reference), the seed and the trial settings. Identical functions are trained once, and a
finished trial is journalled in the trace as it ends, so a resumed run never repeats it. How a trial
ends decides what it means (:class:`TrialStatus`): a function whose training fails is ruled out; a
trial past its wall-clock budget, or lost with its worker (out of memory, a node lost), says nothing
about the function, never wins, and is trained again by a resumed run.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import shutil
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, Field, computed_field
from scipy import stats

from qllm.pysource import parse_python
from qllm.rl.config import TrainConfig, preset
from qllm.rl.logger import read_metrics, series
from qllm.rl.tfcaf import TFCAFError
from qllm.rl.train import TrainingError, train

if TYPE_CHECKING:
    from qllm.sweep.execute import Executor

REFERENCE = "equal-weights"
"""The subject name of the reference trial: every agent's weight 1 (VDN)."""
TRIALS_DIR = "trials"
TRIAL_PRESET = "qmix"
"""Trials use EPyMARL's QMIX settings, as ``qllm run`` trains the generated function; only the mixer,
the budget and the schedules scaled to it differ."""
CURVE_POINTS = 4
"""Greedy evaluations per trial: after 25, 50, 75 and 100% of its steps."""
CONFIDENCE = 0.95
"""Two results are within the noise when their difference is inside its 95% interval."""
RESOLUTION = 1e-6
"""Differences smaller than this fraction of the returns' scale are rounding, even with no other noise
(a deterministic game's greedy evaluation has none)."""


class TrialStatus(StrEnum):
    DONE = "done"
    FAILED = "failed"
    """Training itself failed: the credit function failed on new states, or an update went non-finite.
    The function is not fit to train with."""
    TIMED_OUT = "timed-out"
    """Past the wall-clock budget: says nothing about the function; trained again on resume."""
    LOST = "lost"
    """Anything else (the worker died, out of memory, a full disk): trained again on resume."""

    @property
    def final(self) -> bool:
        """Whether the result stands for the function (else a resumed run trains it again)."""
        return self in (TrialStatus.DONE, TrialStatus.FAILED)


class CurvePoint(BaseModel):
    """One greedy evaluation during a trial."""

    t_env: int
    mean: float
    std: float
    episodes: int


class Trial(BaseModel):
    """One subject trained with one seed: how it ended and its learning curve."""

    key: str
    subject: str
    """The credit function's :func:`function_identity`, or :data:`REFERENCE`."""
    seed: int
    status: TrialStatus
    curve: list[CurvePoint] = Field(default_factory=list)
    wall_s: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == TrialStatus.DONE and bool(self.curve)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def fitness(self) -> float | None:
        """Area under the greedy-return curve per step: the mean of the evenly spaced evaluations."""
        return statistics.fmean(p.mean for p in self.curve) if self.curve else None

    @property
    def fitness_se(self) -> float:
        """Standard error of :attr:`fitness` from the evaluation episodes alone."""
        variance = sum(p.std**2 / max(p.episodes, 1) for p in self.curve)
        return math.sqrt(variance) / max(len(self.curve), 1)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def final_return(self) -> float | None:
        """The greedy return at the end of the trial."""
        return self.curve[-1].mean if self.curve else None


@dataclass(frozen=True)
class TrialSettings:
    """How candidates are trained on trial (from :class:`~qllm.agents.context.GenerationSettings`)."""

    task: str
    steps: int
    seeds: tuple[int, ...]
    timeout_s: float
    """Wall-clock seconds one trial may take; past it the trial ends as timed out."""

    def config(self, seed: int, credit_file: Path | None) -> TrainConfig:
        """The training config of one trial: the reference (no file) trains VDN, a candidate its file."""
        return preset(
            TRIAL_PRESET,
            task=self.task,
            seed=seed,
            steps=self.steps,
            device="cpu",  # one device for every subject: the same seed must give the same numbers
            mixer="vdn" if credit_file is None else "tfcaf",
            tfcaf=None if credit_file is None else str(credit_file.resolve()),
            preset="trial",
            epsilon_anneal_steps=max(1, self.steps // 2),
            eval_interval=max(1, self.steps // CURVE_POINTS),
            checkpoint_interval=self.steps + 1,  # a trial is atomic: it is redone, never resumed
            log_interval=max(1, self.steps // CURVE_POINTS),
        )

    def fingerprint(self) -> str:
        """What, besides subject and seed, decides a trial's result (part of its key)."""
        config = self.config(0, None).to_dict()
        del config["seed"], config["mixer"], config["tfcaf"]
        return json.dumps(config, sort_keys=True)


def function_identity(source: str) -> str:
    """SHA-256 of what a credit-function file does: its code without comments and docstrings, so two
    candidates that differ only in those (each file's docstring names its candidate) are one function."""
    tree = parse_python(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.unparse(tree).encode()).hexdigest()


def trial_key(subject: str, seed: int, settings: TrialSettings) -> str:
    payload = json.dumps([subject, seed, settings.fingerprint()])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


# --- one trial, as a job for the sweep's executors (in this process, or a Ray worker) ---------------


class TrialTimeoutError(RuntimeError):
    """A trial ran past its wall-clock budget."""


@dataclass(frozen=True)
class TrialJob:
    """One trial as plain data (it may cross processes); ``run`` trains it and never raises."""

    name: str
    key: str
    subject: str
    seed: int
    config: dict[str, Any]
    run_dir: str
    timeout_s: float

    def run(self, report: Callable[[str, int], None] | None = None) -> Trial:
        run_dir = Path(self.run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)  # a trial interrupted earlier starts over
        start = time.monotonic()

        last_report = 0.0

        def on_progress(progress: Any) -> None:
            nonlocal last_report
            now = time.monotonic()
            if report is not None and now - last_report >= 1.0:
                last_report = now
                report(self.name, progress.t_env)
            if now - start > self.timeout_s:
                raise TrialTimeoutError(f"trial ran past its budget of {self.timeout_s:g} s")

        config = TrainConfig.from_dict(self.config)
        try:
            train(config, run_dir.parent, on_progress=on_progress, run_name=run_dir.name)
        except TrialTimeoutError as exc:
            return self._ended(TrialStatus.TIMED_OUT, start, error=str(exc))
        except (TrainingError, TFCAFError) as exc:  # the function's own failure
            return self._ended(TrialStatus.FAILED, start, error=_one_line(exc))
        except Exception as exc:  # anything else is the machine's, not the function's
            return self._ended(TrialStatus.LOST, start, error=_one_line(exc))
        return self._ended(TrialStatus.DONE, start, curve=read_curve(run_dir, config.eval_interval))

    def failure(self, error: str) -> Trial:
        """The result of a trial whose worker died (out of memory, killed, node lost)."""
        return Trial(key=self.key, subject=self.subject, seed=self.seed, status=TrialStatus.LOST, error=error)

    def _ended(self, status: TrialStatus, start: float, **result: Any) -> Trial:
        wall = time.monotonic() - start
        return Trial(key=self.key, subject=self.subject, seed=self.seed, status=status, wall_s=wall, **result)


def _one_line(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(exc)).strip()


def read_curve(run_dir: Path, interval: int) -> list[CurvePoint]:
    """The greedy evaluations a training run logged every ``interval`` steps: the first at or past each
    multiple of it (the run's end is the last). The trainer also evaluates after its first batch; that
    one is left out, so that every trial's curve has its points at the same fractions of the budget."""
    rows = read_metrics(run_dir / "metrics.csv")
    steps, means = series(rows, "eval/return_mean")
    _, stds = series(rows, "eval/return_std")
    _, episodes = series(rows, "eval/episodes")
    logged = [
        CurvePoint(t_env=t, mean=m, std=s, episodes=int(n))
        for t, m, s, n in zip(steps, means, stds, episodes, strict=True)
    ]
    if not logged:
        return []
    # The first evaluation at or past each quarter (one batch of episodes may overshoot one, or two).
    quarters = [
        next((p for p in logged if p.t_env >= k * interval), logged[-1]) for k in range(1, CURVE_POINTS + 1)
    ]
    return quarters


# --- comparing subjects, seed by seed ---------------------------------------------------------------


class Difference(BaseModel):
    """``a - b`` in fitness, paired over the seeds both finished, with its noise."""

    mean: float
    noise: float
    """Half-width of the difference's 95% interval: Student's t on the seed-to-seed spread (two seeds or
    more) or the normal one on the evaluation episodes' standard error, whichever is wider, and never
    below :data:`RESOLUTION` of the returns' scale. With one seed it holds the evaluation noise only."""
    seeds: int

    @property
    def beyond_noise(self) -> bool:
        return abs(self.mean) > self.noise

    def verdict(self) -> str:
        if not self.beyond_noise:
            return "within the noise"
        return "better" if self.mean > 0 else "worse"


def _fitness(trial: Trial) -> float:
    if trial.fitness is None:
        raise ValueError(f"trial {trial.key} has no curve")
    return trial.fitness


def paired_difference(a: Sequence[Trial], b: Sequence[Trial]) -> Difference | None:
    """Fitness of ``a`` minus ``b`` over the seeds where both trials finished (None if there are none)."""
    by_seed = {t.seed: t for t in b if t.ok}
    pairs = [(t, by_seed[t.seed]) for t in a if t.ok and t.seed in by_seed]
    if not pairs:
        return None
    diffs = [_fitness(x) - _fitness(y) for x, y in pairs]
    n = len(diffs)
    seed_half = 0.0
    if n > 1:
        seed_half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * statistics.stdev(diffs) / math.sqrt(n)
    eval_se = math.sqrt(sum(x.fitness_se**2 + y.fitness_se**2 for x, y in pairs)) / n
    eval_half = float(stats.norm.ppf(0.5 + CONFIDENCE / 2)) * eval_se
    scale = max(abs(_fitness(t)) for pair in pairs for t in pair)
    noise = max(seed_half, eval_half, RESOLUTION * max(scale, 1.0))
    return Difference(mean=statistics.fmean(diffs), noise=noise, seeds=n)


class TrialSummary(BaseModel):
    """One subject's trials across seeds, against the reference: what the prompts and the trace show."""

    subject: str
    seeds: int
    finished: int
    """Trials that ended normally (failed and timed-out ones are not averaged)."""
    failed: int = 0
    """Trials in which training itself failed (the credit function failed on new states, or an update
    went non-finite): such a function is not fit to train with, whatever its other trials did."""
    returns: list[float] = Field(default_factory=list)
    """Mean greedy return at 25, 50, 75 and 100% of the trial, over the finished seeds."""
    fitness: float | None = None
    """Mean area under the curve per step, over the finished seeds."""
    vs_reference: Difference | None = None
    problem: str = ""
    """Why trials did not finish, when some did not."""

    @property
    def beats_reference(self) -> bool:
        """Better than equal weights beyond the noise, on every seed the trials were given."""
        d = self.vs_reference
        return self.finished == self.seeds and d is not None and d.beyond_noise and d.mean > 0


def summarise(trials: Sequence[Trial], subject: str) -> TrialSummary:
    """The summary of ``subject``'s trials among ``trials`` (which hold the reference's too)."""
    mine = [t for t in trials if t.subject == subject]
    done = [t for t in mine if t.ok]
    unfinished = sorted((t for t in mine if not t.ok), key=lambda t: t.status != TrialStatus.FAILED)
    problem = f"{unfinished[0].status}: {unfinished[0].error}" if unfinished else ""
    failed = sum(t.status == TrialStatus.FAILED for t in mine)
    if not done:
        return TrialSummary(subject=subject, seeds=len(mine), finished=0, failed=failed, problem=problem)
    points = min(len(t.curve) for t in done)
    returns = [statistics.fmean(t.curve[k].mean for t in done) for k in range(points)]
    reference = [t for t in trials if t.subject == REFERENCE]
    return TrialSummary(
        subject=subject,
        seeds=len(mine),
        finished=len(done),
        failed=failed,
        returns=returns,
        fitness=statistics.fmean(_fitness(t) for t in done),
        vs_reference=None if subject == REFERENCE else paired_difference(done, reference),
        problem=problem,
    )


# --- the bench: which trials a round needs, run on an executor, journalled in the trace --------------


class TrialExecutorKind(StrEnum):
    RAY = "ray"
    """A local Ray instance (one trial per core), or the cluster at ``trial_address``."""
    INLINE = "inline"
    """In this process, one after another."""


class TrialJournal(Protocol):
    """Where finished trials are recorded and found again (the run's trace)."""

    def record_trial(self, trial: Trial) -> None: ...

    def recorded_trial(self, key: str) -> Trial | None: ...


STALL_GRACE_S = 120.0
"""Beyond a trial's budget, how long the bench waits for any trial to end before giving up on the rest."""


class TrialBench:
    """Trains the subjects a round needs, each once per seed, on an executor started on first use."""

    def __init__(
        self,
        settings: TrialSettings,
        run_dir: Path,
        journal: TrialJournal,
        executor: TrialExecutorKind = TrialExecutorKind.RAY,
        address: str | None = None,
    ) -> None:
        self.settings, self.run_dir, self.journal = settings, run_dir / TRIALS_DIR, journal
        self.kind, self.address = executor, address
        self._executor: Executor | None = None

    def run(self, subjects: dict[str, str | None], done: Sequence[Trial] = ()) -> list[Trial]:
        """The trials of ``subjects`` (subject -> source; ``None`` for the reference) that are not in
        ``done``: from the journal when an earlier, interrupted run finished them, else trained now."""
        known = {t.key for t in done}
        results: list[Trial] = []
        jobs: list[TrialJob] = []
        for subject, source in subjects.items():
            for seed in self.settings.seeds:
                key = trial_key(subject, seed, self.settings)
                if key in known:
                    continue
                known.add(key)
                recorded = self.journal.recorded_trial(key)
                if recorded is not None:
                    results.append(recorded)
                else:
                    jobs.append(self._job(key, subject, seed, source))
        return results + self._train(jobs)

    def _job(self, key: str, subject: str, seed: int, source: str | None) -> TrialJob:
        name = f"{subject[:12]}__s{seed}"
        credit_file = None
        if source is not None:
            credit_file = self.run_dir / f"{subject[:12]}.py"
            credit_file.parent.mkdir(parents=True, exist_ok=True)
            credit_file.write_text(source)
        config = self.settings.config(seed, credit_file).to_dict()
        run_dir = (self.run_dir / name).resolve()  # a worker may run elsewhere: absolute paths only
        return TrialJob(name, key, subject, seed, config, str(run_dir), self.settings.timeout_s)

    def _train(self, jobs: list[TrialJob]) -> list[Trial]:
        if not jobs:
            return []
        executor = self._start()
        for job in jobs:
            executor.submit(job)
        pending = {job.key: job for job in jobs}
        finished: list[Trial] = []
        last_end = time.monotonic()
        while pending:
            for _, trial in executor.wait(1.0):
                if pending.pop(trial.key, None) is None:
                    continue  # left over from an earlier, interrupted call
                self.journal.record_trial(trial)  # journalled as it ends: a kill loses only unfinished ones
                finished.append(trial)
                last_end = time.monotonic()
            if pending and time.monotonic() - last_end > self.settings.timeout_s + STALL_GRACE_S:
                # Nothing ended for longer than one trial may take: the executor is not running them (a
                # cluster with no free CPU, say). Give up on those; a resumed run tries them again.
                for job in pending.values():
                    trial = job.failure("no result from the executor within the trial budget")
                    self.journal.record_trial(trial)
                    finished.append(trial)
                self.close()
                break
        return finished

    def _start(self) -> Executor:
        if self._executor is None:
            if self.kind == TrialExecutorKind.INLINE:
                from qllm.sweep.execute import InlineExecutor  # noqa: PLC0415 - the sweep imports the graph

                self._executor = InlineExecutor()
            else:
                from qllm.sweep.ray_executor import RayExecutor  # noqa: PLC0415 - Ray starts only when used

                self._executor = RayExecutor(self.address)
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
            self._executor = None
