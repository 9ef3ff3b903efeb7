"""`qllm compare`: sweeps whose credit functions were written with different settings, side by side,
and the refusal of sweeps that did not train alike."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qllm.agents import Models
from qllm.cli import app
from qllm.sweep.compare import ComparisonError, compare_sweeps, generation_facts, write_comparison
from qllm.sweep.execute import InlineExecutor, run_sweep
from qllm.sweep.plan import SweepPlan
from tests.graph_fakes import GOOD, GOOD_OTHER, evaluation, scripted
from tests.test_sweep import TINY


def _credit(sweep: Path) -> str:
    return (sweep / "artifacts" / "matrix-climbing.py").read_text()


GENERATION = {"mode": "code", "selection": "evaluator", "rounds": 1, "record_episodes": 3}


def _sweep(folder: Path, candidates: int, replies: list[str], steps: int = 200) -> Path:
    plan = SweepPlan(
        tasks=("matrix-climbing",),
        presets=("qllm",),
        seeds=(0, 1),
        steps=steps,
        overrides=TINY,
        generation={**GENERATION, "candidates": candidates},
    )
    plan.save(folder)
    models = Models(scripted(replies), scripted([evaluation(choice=candidates)]))
    assert not run_sweep(folder, InlineExecutor(), models=models).failed
    return folder


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """K=1 and K=2 on matrix-climbing, two seeds each; K=2's evaluator picks the second candidate."""
    root = tmp_path_factory.mktemp("compare")
    return _sweep(root / "k1", 1, [GOOD]), _sweep(root / "k2", 2, [GOOD, GOOD_OTHER])


def test_the_sweeps_are_named_by_the_generation_setting_that_differs(two_sweeps: tuple[Path, Path]) -> None:
    comparison = compare_sweeps(two_sweeps)
    assert [arm.label for arm in comparison.arms] == ["candidates=1", "candidates=2"]
    assert comparison.varied == ("candidates",) and comparison.presets == ("qllm",)


def test_the_generation_facts_say_what_each_cost_and_chose(two_sweeps: tuple[Path, Path]) -> None:
    k1, k2 = (generation_facts(sweep, "matrix-climbing") for sweep in two_sweeps)
    assert k1 is not None and k2 is not None
    assert (k1.candidates, k1.attempts, k1.passed, k1.distinct, k1.chosen) == (1, 1, 1, 1, "r1-c0")
    assert (k2.candidates, k2.passed, k2.distinct, k2.chosen) == (2, 2, 2, "r1-c1")
    assert "return 1.0 + i" in k1.written and "last_joint_action" in k2.written
    assert k1.mean_weights[1] > k1.mean_weights[0]  # 1 + i: the second agent weighs more


def test_the_report_has_the_table_the_figures_and_what_was_written(
    two_sweeps: tuple[Path, Path], tmp_path: Path
) -> None:
    report = write_comparison(two_sweeps, tmp_path).read_text()

    for figure in ("final_returns.png", "curves.png"):
        assert f"]({figure})" in report and (tmp_path / figure).stat().st_size > 10_000
    assert "| matrix-climbing | qllm | candidates=1 |" in report and "(reference)" in report
    row = next(
        line for line in report.splitlines() if line.startswith("| matrix-climbing | qllm | candidates=2")
    )
    assert row.count("±") == 2  # its return and its difference from the reference, two seeds each
    assert "return 1.0 + i" in report


def test_sweeps_trained_differently_are_refused(two_sweeps: tuple[Path, Path], tmp_path: Path) -> None:
    longer = SweepPlan.load(two_sweeps[0]).to_dict() | {"steps": 400}
    SweepPlan.from_dict(longer).save(tmp_path / "longer")
    with pytest.raises(ComparisonError, match="same budget"):
        compare_sweeps([two_sweeps[0], tmp_path / "longer"])

    result = CliRunner().invoke(
        app, ["compare", str(two_sweeps[0]), str(tmp_path / "longer")], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 2 and "same budget" in result.output


@pytest.mark.parametrize("how", ["one sweep", "not a sweep"])
def test_a_comparison_without_two_sweeps_is_a_usage_error(
    how: str, two_sweeps: tuple[Path, Path], tmp_path: Path
) -> None:
    args = [str(two_sweeps[0])] if how == "one sweep" else [str(two_sweeps[0]), str(tmp_path)]
    result = CliRunner().invoke(
        app, ["compare", *args, "--out", str(tmp_path / "out")], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 2
    assert ("at least two sweeps" if how == "one sweep" else "not a sweep folder") in result.output
    assert not (tmp_path / "out").exists()


def test_a_sweep_whose_coder_wrote_the_same_function_is_said_to_train_identically(
    two_sweeps: tuple[Path, Path], tmp_path: Path
) -> None:
    again = tmp_path / "again"
    shutil.copytree(two_sweeps[0], again)
    plan = SweepPlan.load(again).to_dict()
    SweepPlan.from_dict(plan | {"generation": plan["generation"] | {"rounds": 2}}).save(again)
    header = "# qllm-tfcaf: another run's header\n"  # comments and docstrings do not make another function
    (again / "artifacts" / "matrix-climbing.py").write_text(header + _credit(again))

    report = write_comparison([two_sweeps[0], again, two_sweeps[1]], tmp_path / "out").read_text()

    rows = {
        line.split(" | ")[2]: line
        for line in report.splitlines()
        if line.startswith("| matrix-climbing | qllm")
    }
    assert "the same function as the reference" in rows["candidates=1, rounds=2"]
    assert "the same function" not in rows["candidates=2, rounds=1"]
    assert "`candidates=1, rounds=2`: the same function as `candidates=1, rounds=1`" in report


def test_a_generation_trace_that_cannot_be_read_is_one_line_not_a_traceback(
    two_sweeps: tuple[Path, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(two_sweeps[1], broken)
    (trace,) = (broken / "artifacts" / "generate").glob("*/*/trace.jsonl")
    trace.write_text('{"event": "no-such-event"}\n')

    result = CliRunner().invoke(app, ["compare", str(two_sweeps[0]), str(broken)], env={"COLUMNS": "250"})

    assert result.exit_code == 2 and "generation for matrix-climbing" in result.output
    assert "Traceback" not in result.output
