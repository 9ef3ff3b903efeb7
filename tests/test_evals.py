"""Eval machinery with hand-made artifacts and scripted models: probes, scorers, store, compare, CLI."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from graph_fakes import BAD_KEY, GOOD, GOOD_OTHER, evaluation, generate, scripted
from typer.testing import CliRunner

from qllm.agents import Models
from qllm.agents.template import NamedState, assemble, keep_definitions
from qllm.cli import app
from qllm.envs.recording import record
from qllm.envs.tasks import make_env, resolve_task
from qllm.evals.compare import compare, markdown_report, markdown_table
from qllm.evals.runner import EvalModels, run_suite, score_generation_run
from qllm.evals.scorers import SCORERS, ProbeJudge
from qllm.evals.store import (
    SCHEMA,
    CaseResult,
    EvalRun,
    ResultsStore,
    StoreError,
    available_references,
    resolve_run,
)
from qllm.evals.suites import EvalCase, EvalSuite, SuiteError, available_suites, load_suite
from qllm.sandbox import Sandbox, ValidationInputs

# Hand-written functions that follow each family's mechanics, and their mirror images.
RIGHT = {
    "matrix-climbing": (
        "def agent_weight(s, i):\n"
        "    joint = s['last_joint_action']\n"
        "    if max(joint) == 0:\n        return 1.0\n"
        "    a0, a1 = divmod(argmax(joint), 3)\n"
        "    mine, other = (a0, a1) if i == 0 else (a1, a0)\n"
        "    return 2.0 if other == 0 and mine != 0 else 1.0\n"
    ),
    "lbf-2s-10x10-3p-3f": (
        "def agent_weight(s, i):\n"
        "    live = [d for d, level in zip(s['agent_to_food_distance'][i], s['food_level']) if level > 0]\n"
        "    return 1.0 + s['last_action'][i][5] + 1.0 / (1.0 + min(live + [99]))\n"
    ),
    "mpe-spread-3": "def agent_weight(s, i):\n    return 1 / (1 + min(s['agent_to_landmark_distance'][i]))\n",
    "mpe-tag": "def agent_weight(s, i):\n    return 1.0 / (1.0 + s['agent_to_prey_distance'][i])\n",
    "mpe-adversary": (
        "def agent_weight(s, i):\n"
        "    d = sum(x * g for x, g in zip(s['agent_to_landmark_distance'][i], s['landmark_is_goal']))\n"
        "    return 1.0 / (1.0 + d)\n"
    ),
    "rware-tiny-2ag": "def agent_weight(s, i):\n    return 1.0 + s['agent_carrying'][i][1]\n",
}


def _inverted(code: str) -> str:
    """The same function with its weights turned upside down (w -> 1 / w): credit assigned backwards."""
    return code.replace("def agent_weight(s, i):", "def right_weight(s, i):") + (
        "\n\ndef agent_weight(s, i):\n    return 1.0 / right_weight(s, i)\n"
    )


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as box:
        yield box


def _judge_file(task: str, code: str, tmp_path: Path, sandbox: Sandbox) -> float | None:
    rec = record(task, 3, seed=0)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{task}.py"
    path.write_text(assemble(NamedState.for_task(rec.info), keep_definitions(code)))
    probes = resolve_task(task).semantic_probes()
    return ProbeJudge(sandbox, probes, ValidationInputs.from_recording(rec)).score(path)


# --- semantic probes --------------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(RIGHT))
def test_probes_reward_the_right_credit_and_punish_the_inverse(
    task: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    assert _judge_file(task, RIGHT[task], tmp_path, sandbox) == 1.0
    assert _judge_file(task, _inverted(RIGHT[task]), tmp_path / "inv", sandbox) == 0.0


def test_constant_and_agent_biased_functions_score_low(tmp_path: Path, sandbox: Sandbox) -> None:
    task = "lbf-2s-10x10-3p-3f"
    assert _judge_file(task, "def agent_weight(s, i):\n    return 1.0\n", tmp_path, sandbox) == 0.0
    biased = "def agent_weight(s, i):\n    return 3.0 - i\n"  # prefers lower-numbered agents
    assert _judge_file(task, biased, tmp_path / "b", sandbox) == pytest.approx(0.5)


def test_probe_states_follow_the_schema() -> None:
    for task in ("lbf-15x15-4p-4f", "mpe-spread-10", "rware-small-4ag", "matrix-penalty-50"):
        env = make_env(task)
        probes = resolve_task(task).semantic_probes()
        assert probes, task
        for probe in probes:
            assert probe.state.shape == (env.info.state_dim,) and probe.favoured != probe.other


# --- scorers on real (scripted) generation runs -----------------------------------------------------


def test_process_scorers_count_attempts_repairs_and_rounds(tmp_path: Path, sandbox: Sandbox) -> None:
    outcome = generate(tmp_path, scripted([BAD_KEY, GOOD, GOOD]), scripted([evaluation()]))
    scores, record_ = score_generation_run(outcome.run_dir, "matrix-climbing", sandbox)
    assert scores["first_try_validity"] == 0.5  # r1-c0 failed its first draft, r1-c1 did not
    assert scores["candidate_validity"] == 1.0
    assert scores["repairs_per_valid"] == 0.5
    assert scores["final_validity"] == 1.0 and scores["rounds_used"] == 1.0
    assert scores["tokens"] == 4 * 15 and scores["cost_usd"] == 0.0
    assert [c.error_kinds for c in record_.candidates] == [["runtime"], []]


def test_failed_runs_score_zero_validity_and_no_semantics(tmp_path: Path, sandbox: Sandbox) -> None:
    outcome = generate(tmp_path, scripted([BAD_KEY] * 4), scripted([]))
    scores, _ = score_generation_run(outcome.run_dir, "matrix-climbing", sandbox)
    assert scores["final_validity"] == 0.0 and scores["first_try_validity"] == 0.0
    assert scores["semantic_score"] is None and scores["repairs_per_valid"] is None


@pytest.mark.parametrize(("choice", "consistent"), [(1, 1.0), (2, 0.0)])
def test_evaluator_consistency_checks_the_choice_against_the_probes(
    choice: int, consistent: float, tmp_path: Path, sandbox: Sandbox
) -> None:
    right = f"```python\n{RIGHT['matrix-climbing']}```"
    outcome = generate(tmp_path, scripted([right, GOOD_OTHER]), scripted([evaluation(choice=choice)]))
    scores, _ = score_generation_run(outcome.run_dir, "matrix-climbing", sandbox)
    assert scores["evaluator_consistency"] == consistent
    # GOOD_OTHER favours agent 0 only after joint action (0, 0), which no probe uses: equal weights.
    assert scores["semantic_score"] == (1.0 if choice == 1 else 0.0)


# --- store, compare, suites -------------------------------------------------------------------------


def _eval(label: str, validity: list[float], tokens: list[float]) -> EvalRun:
    run = EvalRun(label=label, suite="smoke", coder="local", evaluator="local", prompt_version="v1",
                  prompt_hashes={"task": "ab" * 32})  # fmt: skip
    for seed, (v, t) in enumerate(zip(validity, tokens, strict=True)):
        scores = dict.fromkeys(SCORERS, None) | {"final_validity": v, "tokens": t}
        run.results.append(
            CaseResult("matrix-climbing", seed, False, "succeeded", "x", 1.0, scores, {"runtime": 1})
        )
    return run


def test_store_round_trips_runs_and_exports(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "evals.sqlite")
    run = _eval("base", [1.0, 0.0], [100, 120])
    eval_id = store.start(run)
    for result in run.results:
        store.add_result(eval_id, result)
    loaded = store.get(eval_id)
    assert loaded.results == run.results and loaded.prompt_hashes == run.prompt_hashes
    assert loaded.git_commit and [r.id for r in store.runs()] == [eval_id]
    (tmp_path / "ref.json").write_text(loaded.to_json())
    assert resolve_run(str(tmp_path / "ref.json"), store).results == run.results
    with pytest.raises(StoreError, match="no eval run 99"):
        store.get(99)


def test_shipped_reference_runs_resolve_by_name(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "evals.sqlite")
    assert {"smoke-local-v1", "levers/2-smoke-code"} <= set(available_references())
    assert resolve_run("smoke-local-v1", store).suite == "smoke"
    assert resolve_run("levers/2-smoke-code", store).results
    with pytest.raises(StoreError, match=r"nor a shipped reference .*smoke-local-v1"):
        resolve_run("smoke-local-v9", store)


def test_compare_flags_a_regression_beyond_the_threshold_only() -> None:
    base = _eval("base", [1.0, 1.0, 1.0], [100, 100, 100])
    worse = _eval("worse", [0.0, 1.0, 0.0], [100, 100, 100])
    slightly = _eval("slightly", [1.0, 1.0, 0.9], [110, 110, 110])
    by_name = {row.scorer.name: row for row in compare(base, worse)}
    assert by_name["final_validity"].regressed and not by_name["tokens"].regressed
    assert not any(row.regressed for row in compare(base, slightly))
    assert by_name["final_validity"].a.mean == 1.0 and by_name["final_validity"].b.half_width > 0
    assert "| final_validity | 0.333 ± 0.65" in markdown_report(worse)


def test_shipped_suites_load_and_bad_suites_are_refused(tmp_path: Path) -> None:
    assert {"smoke", "full"} <= set(available_suites())
    full = load_suite("full")
    families = {c.task.split("-")[0] for c in full.cases}
    assert families == {"matrix", "mpe", "lbf", "rware"} and any(c.unseen for c in full.cases)
    assert any(make_env(c.task).info.state_dim >= 60 for c in full.cases)  # a large state
    bad = tmp_path / "bad.toml"
    bad.write_text('[[case]]\ntask = "matrix-climbin"\n')
    with pytest.raises(SuiteError, match="Did you mean"):
        load_suite(str(bad))
    with pytest.raises(SuiteError, match="no suite 'nope'"):
        load_suite("nope")


def test_run_suite_stores_every_case_and_the_cli_compares_them(tmp_path: Path) -> None:
    suite = EvalSuite(
        "tiny", "", (EvalCase("matrix-climbing", seeds=(0, 1), candidates=1, rounds=1, repairs=1),)
    )
    store = ResultsStore(tmp_path / "evals.sqlite")

    def good_models(case: EvalCase, seed: int) -> Models:
        return Models(scripted([GOOD]), scripted([evaluation()]))

    def bad_models(case: EvalCase, seed: int) -> Models:
        return Models(scripted([BAD_KEY, BAD_KEY]), scripted([]))

    a = run_suite(
        suite,
        EvalModels(mode="code", selection="evaluator"),
        store,
        tmp_path / "runs",
        label="good",
        chat_models=good_models,
    )
    b = run_suite(
        suite,
        EvalModels(mode="code", selection="evaluator"),
        store,
        tmp_path / "runs",
        label="bad",
        chat_models=bad_models,
    )
    assert [r.status for r in store.get(a.id).results] == ["succeeded", "succeeded"]
    assert [r.status for r in store.get(b.id).results] == ["failed", "failed"]

    runner = CliRunner()
    env = {"COLUMNS": "200"}
    common = ["--store", str(tmp_path / "evals.sqlite")]
    listed = runner.invoke(app, ["evals", "list", *common], env=env)
    assert listed.exit_code == 0 and "good" in listed.output and "bad" in listed.output
    same = runner.invoke(app, ["evals", "compare", str(a.id), str(a.id), *common], env=env)
    assert same.exit_code == 0, same.output
    plot = tmp_path / "cmp.png"
    worse = runner.invoke(
        app, ["evals", "compare", str(a.id), str(b.id), "--plot", str(plot), *common], env=env
    )
    assert worse.exit_code == 1 and "REGRESSED" in worse.output and plot.stat().st_size > 10_000
    exported = runner.invoke(
        app, ["evals", "export", str(a.id), "-o", str(tmp_path / "a.json"), *common], env=env
    )
    assert exported.exit_code == 0 and (tmp_path / "a.md").read_text().startswith("# Eval run")
    missing = runner.invoke(app, ["evals", "show", "42", *common], env=env)
    assert missing.exit_code == 2 and "no eval run 42" in missing.output

    # Rescoring recomputes scores from the run folders (here after they were lost from the store).
    original = store.get(a.id).results[0]
    store.update_scores(a.id, CaseResult(**{**vars(original), "scores": {}, "error_kinds": {}}))
    assert store.get(a.id).results[0].scores == {}
    rescored = runner.invoke(app, ["evals", "rescore", str(a.id), *common], env=env)
    assert rescored.exit_code == 0, rescored.output
    assert store.get(a.id).results[0].scores == original.scores
    assert original.scores["semantic_pass"] in (0.0, 1.0) and original.scores["run_minutes"] > 0


def test_a_store_written_before_modes_existed_reads_as_code_mode(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA.replace(",\n    mode TEXT NOT NULL DEFAULT 'code'", ""))
        db.execute(
            "INSERT INTO eval_runs VALUES (1, 'old', 'smoke', 't', 'local', 'local', 'v1', '{}', '0', 'c')"
        )
    store = ResultsStore(path)
    assert [(r.label, r.mode) for r in store.runs()] == [("old", "code")]
    new = EvalRun(label="new", suite="smoke", coder="local", evaluator="local", prompt_version="v1",
                  prompt_hashes={}, mode="spec")  # fmt: skip
    store.start(new)
    assert [r.mode for r in store.runs()] == ["code", "spec"]


def test_the_table_puts_eval_runs_side_by_side(tmp_path: Path) -> None:
    def run(label: str, semantic: list[float]) -> EvalRun:
        results = [
            CaseResult(
                "matrix-climbing",
                k,
                False,
                "succeeded",
                "",
                1.0,
                {"semantic_score": s, "run_minutes": 2.0 + k},
                {},
            )
            for k, s in enumerate(semantic)
        ]
        return EvalRun(label=label, suite="smoke", coder="local", evaluator="local", prompt_version="v1",
                       prompt_hashes={}, results=results)  # fmt: skip

    table = markdown_table([run("before", [0.0, 0.5]), run("after", [1.0, 1.0])])
    assert "| semantic_score ↑ | 0.25 ± 0.49 | 1 ± 0 |" in table
    assert "| median run minutes | 2.50 | 2.50 |" in table
    assert "- #2: after" in table
