"""Sweeps: the plan, resuming without repeating finished runs (in process and on Ray), retries, and
the report's statistics and files."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qllm.agents import Models
from qllm.cli import app
from qllm.rl.train import FINAL_MODEL
from qllm.sweep.execute import InlineExecutor, Ledger, RunJob, RunRecord, run_sweep
from qllm.sweep.plan import RUNS_DIR, RunKey, SweepError, SweepPlan
from qllm.sweep.report import Curve, band, difference_ci, mean_ci, reproduce_command, verdict, write_report
from tests.graph_fakes import GOOD, evaluation, scripted

SOFTMAX_CREDIT = """import torch


def credit_assignment(agents_q, state):
    n = agents_q.shape[1]
    weights = torch.softmax(state[:, :n], dim=1) * n
    return (weights * agents_q).sum(dim=1, keepdim=True)
"""
BROKEN_CREDIT = """import torch


def credit_assignment(agents_q, state):
    return agents_q.sum(dim=1, keepdim=True) * float("nan")
"""
TINY = {"eval_episodes": 2, "batch_size": 4, "envs": 2}
"""Settings that make a run take about a second."""


def tiny_plan(**changes: object) -> SweepPlan:
    fields = {"tasks": ("matrix-climbing",), "presets": ("vdn", "qmix"), "seeds": (0, 1), "steps": 200}
    return SweepPlan(**{**fields, "overrides": TINY, **changes})


class InterruptedExecutor(InlineExecutor):
    """Trains ``runs`` runs, then is interrupted as Ctrl-C would interrupt it."""

    def __init__(self, runs: int) -> None:
        super().__init__()
        self.left = runs

    def wait(self, timeout: float) -> list[tuple[RunJob, RunRecord]]:
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return super().wait(timeout)


class RecordingExecutor(InlineExecutor):
    """Remembers every job it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.submitted: list[RunJob] = []

    def submit(self, job: RunJob) -> None:
        self.submitted.append(job)
        super().submit(job)


# --- the plan ---------------------------------------------------------------------------------------


def test_plan_round_trips_and_orders_runs_seed_major(tmp_path: Path) -> None:
    plan = tiny_plan(task_steps={"matrix-climbing": 100})
    plan.save(tmp_path)
    assert SweepPlan.load(tmp_path) == plan
    assert [k.name for k in plan.runs()[:2]] == ["matrix-climbing__vdn__0", "matrix-climbing__qmix__0"]
    config = plan.config(RunKey("matrix-climbing", "qmix", 1), credit_file=None)
    assert (config.steps, config.seed, config.eval_episodes) == (100, 1, 2)
    assert config.eval_interval == 10 and config.checkpoint_interval == 25  # from the task's own budget


def test_only_credit_presets_get_the_credit_file(tmp_path: Path) -> None:
    plan = tiny_plan(presets=("qmix", "riit-qllm"))
    assert plan.credit_presets == ("riit-qllm",)
    assert plan.config(RunKey("matrix-climbing", "qmix", 0), tmp_path / "f.py").tfcaf is None
    assert plan.config(RunKey("matrix-climbing", "riit-qllm", 0), tmp_path / "f.py").tfcaf == str(
        tmp_path / "f.py"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"presets": ("qmix", "qmixx")}, "unknown presets ['qmixx']"),
        ({"tasks": ("lbf-nope",)}, "lbf-nope"),
        ({"seeds": ()}, "at least one"),
        ({"task_steps": {"mpe-spread-3": 10}}, "budgets given for tasks outside the sweep"),
        ({"overrides": {"seed": 3}}, "set by the sweep itself"),
        ({"overrides": {"epsilon_anneal": 3}}, "unknown training settings"),
        ({"steps": 0}, "at least 1 step"),
    ],
)
def test_a_bad_plan_is_refused_before_anything_runs(changes: dict, message: str) -> None:
    with pytest.raises((SweepError, ValueError), match=message.replace("[", r"\[").replace("]", r"\]")):
        tiny_plan(**changes)


def test_a_folder_without_a_plan_is_not_a_sweep(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match="not a sweep folder"):
        SweepPlan.load(tmp_path)


# --- running and resuming -------------------------------------------------------------------------


def test_an_interrupted_sweep_resumes_without_repeating_finished_runs(tmp_path: Path) -> None:
    tiny_plan().save(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(tmp_path, InterruptedExecutor(runs=2))
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / RUNS_DIR).glob(f"*/{FINAL_MODEL}")}
    assert len(finished) == 2

    executor = RecordingExecutor()
    status = run_sweep(tmp_path, executor)

    assert sorted(job.name for job in executor.submitted) == sorted(
        {k.name for k in tiny_plan().runs()} - set(finished)
    )
    assert sorted(status.done) == sorted(k.name for k in tiny_plan().runs()) and not status.failed
    for name, mtime in finished.items():  # untouched, not retrained
        assert (tmp_path / RUNS_DIR / name / FINAL_MODEL).stat().st_mtime_ns == mtime
    assert sorted(r.run for r in Ledger(tmp_path).records()) == sorted(k.name for k in tiny_plan().runs())
    assert not list((tmp_path / RUNS_DIR).glob("*/checkpoints"))  # finished runs keep no checkpoints


def test_a_failing_run_is_retried_then_reported_and_the_others_finish(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text(BROKEN_CREDIT)
    sweep = tmp_path / "sweep"
    tiny_plan(presets=("vdn", "qllm"), seeds=(0,), credit_files={"matrix-climbing": str(broken)}).save(sweep)

    status = run_sweep(sweep, InlineExecutor(), retries=1)

    assert status.done == ["matrix-climbing__vdn__0"]
    assert status.failed == ["matrix-climbing__qllm__0"]
    attempts = [r for r in Ledger(sweep).records() if r.run == "matrix-climbing__qllm__0"]
    assert [(r.attempt, r.status) for r in attempts] == [(1, "failed"), (2, "failed")]
    assert "failed validation" in attempts[0].error

    again = run_sweep(sweep, InlineExecutor(), retries=0)  # running the sweep again tries it again
    assert again.failed == ["matrix-climbing__qllm__0"] and again.done == ["matrix-climbing__vdn__0"]
    assert Ledger(sweep).attempts()["matrix-climbing__qllm__0"] == 3


def test_a_missing_credit_function_is_generated_once_with_the_graph(tmp_path: Path) -> None:
    generation = {
        "mode": "code",
        "selection": "evaluator",
        "candidates": 1,
        "rounds": 1,
        "record_episodes": 3,
    }
    tiny_plan(presets=("qllm",), seeds=(0,), generation=generation).save(tmp_path)

    status = run_sweep(tmp_path, InlineExecutor(), models=Models(scripted([GOOD]), scripted([evaluation()])))

    assert status.done == ["matrix-climbing__qllm__0"]
    assert "return 1.0 + i" in (tmp_path / "artifacts" / "matrix-climbing.py").read_text()
    # Resuming never calls the graph again: these fakes have no replies left.
    assert run_sweep(tmp_path, InlineExecutor(), models=Models(scripted([]), scripted([]))).done


def _ledger_lines(sweep: Path) -> int:
    return len(Ledger(sweep).records())


def test_a_sweep_on_ray_stopped_with_kill_resumes_and_completes(tmp_path: Path) -> None:
    """The real thing: `qllm sweep` on a local Ray instance, stopped by `kill` (SIGTERM, which a sweep
    in the background receives even where SIGINT is ignored), then run again."""
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "qllm.cli", "sweep", str(sweep)]
    plan = ["--tasks", "matrix-climbing", "--mixers", "vdn,qmix", "--seeds", "2", "--steps", "6000"]
    settings = [f"--set={name}={value}" for name, value in TINY.items()]
    first = subprocess.Popen(
        [*command, *plan, *settings, "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    # One worker trains the runs one after another, each for a few seconds: stopping right after the
    # first one ends lands in the middle of the second.
    while _ledger_lines(sweep) < 1 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGTERM)
    output = first.communicate(timeout=60)[0].decode()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (sweep / RUNS_DIR).glob(f"*/{FINAL_MODEL}")}
    assert first.returncode == 130 and "resume with: qllm sweep" in output, output
    assert 1 <= len(finished) < 4

    second = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)  # folder alone

    assert second.returncode == 0, second.stdout + second.stderr
    assert "Resuming" in second.stdout and "4 runs done" in second.stdout
    for name, mtime in finished.items():
        assert (sweep / RUNS_DIR / name / FINAL_MODEL).stat().st_mtime_ns == mtime
    # A run whose end the driver had not yet recorded when interrupted is finished without a ledger line.
    done = [r.run for r in Ledger(sweep).records() if r.status == "done"]
    assert len(done) == len(set(done)) and set(done) | set(finished) == {k.name for k in tiny_plan().runs()}


# --- the report -------------------------------------------------------------------------------------


def test_confidence_intervals_match_the_student_t_values() -> None:
    estimate = mean_ci([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.303
    assert estimate.mean == 2.0 and estimate.half_width == pytest.approx(4.303 / math.sqrt(3), rel=1e-3)
    assert math.isnan(mean_ci([5.0]).half_width) and str(mean_ci([5.0])) == "5 (1 seed)"
    difference = difference_ci([3.0, 4.0, 5.0], [1.0, 2.0, 3.0])  # equal variances: dof 4, t = 2.776
    assert difference.mean == 2.0
    assert difference.half_width == pytest.approx(2.776 * math.sqrt(2 / 3), rel=1e-3)
    assert verdict(difference, "qllm") == "no clear difference"
    assert verdict(difference_ci([9.0, 9.1, 9.2], [1.0, 1.1, 1.2]), "qllm") == "**qllm higher**"
    assert verdict(difference_ci([1.0, 1.1, 1.2], [9.0, 9.1, 9.2]), "qllm") == "**qllm lower**"


def test_curves_evaluated_at_different_steps_share_one_grid() -> None:
    curves = [Curve([0.0, 100.0], [0.0, 1.0]), Curve([0.0, 60.0, 100.0], [0.0, 0.6, 1.0])]
    steps, mean, half = band(curves, budget=100)
    assert steps[0] == 0 and steps[-1] == 100
    assert mean[len(mean) // 2] == pytest.approx(0.5) and half[len(half) // 2] == pytest.approx(0.0, abs=1e-9)


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two mpe-spread sizes x QMIX and QLLM x two seeds, finished: enough for every report section."""
    root = tmp_path_factory.mktemp("report")
    credit = root / "softmax.py"
    credit.write_text(SOFTMAX_CREDIT)
    plan = SweepPlan(
        tasks=("mpe-spread-2", "mpe-spread-3"),
        presets=("qmix", "qllm"),
        seeds=(0, 1),
        steps=100,
        overrides=TINY,
        credit_files={"mpe-spread-2": str(credit), "mpe-spread-3": str(credit)},
    )
    plan.save(root / "sweep")
    assert not run_sweep(root / "sweep", InlineExecutor()).failed
    return root / "sweep"


def test_the_report_has_every_section_and_its_figures(small_sweep: Path, tmp_path: Path) -> None:
    report = write_report(small_sweep, tmp_path).read_text()

    for figure in ("curves.png", "scaling.png", "credit_mpe-spread-2.png", "credit_mpe-spread-3.png"):
        assert f"]({figure})" in report and (tmp_path / figure).stat().st_size > 10_000
    table = report.split("## Final greedy test return")[1].split("##")[0].split("| qmix |")[1]
    assert table.count("±") == 4  # 2 presets x 2 tasks, two seeds each
    assert "| mpe-spread-3 | qllm vs qmix |" in report
    assert "**Runs**: 8 of 8 finished" in report
    assert "def credit_assignment" in report  # the function itself, next to what it does


def test_the_reproduce_command_recreates_the_same_plan(small_sweep: Path, tmp_path: Path) -> None:
    plan = SweepPlan.load(small_sweep)
    command = reproduce_command(plan, tmp_path / "again").replace("\\\n", " ").split()
    result = CliRunner().invoke(app, [*command[1:], "--local"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    # Not a terminal: a line per run that ends and progress lines, whole, not a bar cut to 80 columns.
    assert "done   mpe-spread-3__qllm__1: greedy test return" in result.output
    assert "sweep: 800/800 steps (100%) | 8/8 runs done, 0 to go |" in result.output
    assert "…" not in result.output and "━" not in result.output
    recreated = SweepPlan.load(tmp_path / "again")
    assert (
        recreated.to_dict() | {"generation": {}} == plan.to_dict()
    )  # every credit file given: no generation


def test_resuming_with_different_options_is_refused(small_sweep: Path) -> None:
    result = CliRunner().invoke(app, ["sweep", str(small_sweep), "--steps", "5"], env={"COLUMNS": "250"})
    assert result.exit_code == 2 and "would change it" in result.output


def test_more_seeds_extend_a_finished_sweep_without_repeating_its_runs(tmp_path: Path) -> None:
    tiny_plan(seeds=(0,)).save(tmp_path)
    assert run_sweep(tmp_path, InlineExecutor()).done == [
        "matrix-climbing__vdn__0",
        "matrix-climbing__qmix__0",
    ]

    result = CliRunner().invoke(
        app, ["sweep", str(tmp_path), "--seeds", "2", "--local"], env={"COLUMNS": "250"}
    )

    assert result.exit_code == 0, result.output
    assert "Adding seeds 1..1" in result.output and SweepPlan.load(tmp_path).seeds == (0, 1)
    assert Ledger(tmp_path).attempts() == {  # seed 0's runs were not trained again
        f"matrix-climbing__{preset}__{seed}": 1 for preset in ("vdn", "qmix") for seed in (0, 1)
    }
    fewer = CliRunner().invoke(app, ["sweep", str(tmp_path), "--seeds", "1"], env={"COLUMNS": "250"})
    assert fewer.exit_code == 2 and "never drops runs" in fewer.output
    assert SweepPlan.load(tmp_path).seeds == (0, 1)


def test_report_of_a_folder_that_is_not_a_sweep_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path)], env={"COLUMNS": "250"})
    assert result.exit_code == 2 and "not a sweep folder" in result.output


def test_a_sweep_in_progress_is_reported_from_its_finished_runs(small_sweep: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(small_sweep, sweep)
    (sweep / RUNS_DIR / "mpe-spread-3__qllm__1" / FINAL_MODEL).unlink()

    report = write_report(sweep, tmp_path / "report").read_text()

    assert "**Runs**: 7 of 8 finished" in report
    assert "| qllm | " in report and "(1 seed)" in report  # the unfinished seed is left out, and said


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "lbf-nope"], "unknown task 'lbf-nope'"),
        (["--tasks", ","], "at least one task"),
        (["--mixers", "qmix,qmixx"], "unknown presets"),
        (["--set", "lr"], "NAME=VALUE"),
        (["--tfcaf", "matrix-climbing=/no/such/file.py"], "TASK=FILE"),
    ],
)
def test_a_bad_new_sweep_is_a_usage_error_and_leaves_no_folder(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app, ["sweep", str(tmp_path / "sweep"), *args, "--local"], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "sweep").exists()
