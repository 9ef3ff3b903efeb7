"""Trial training in the graph: every route with scripted fake models, tiny budgets and real training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from graph_fakes import evaluation, generate, scripted, settings
from rich.console import Console

from qllm.agents import GenerationRun, Models, RunStatus, SettingsError
from qllm.agents.artifact import METADATA_FILE
from qllm.agents.run import CHECKPOINTS_FILE, _serializer
from qllm.agents.selection import rank_by_trial
from qllm.agents.state import Attempt, Candidate, CandidateTask
from qllm.agents.trace import CallPlace, Trace, TraceEvent, read_events
from qllm.agents.trace_html import render_html
from qllm.agents.trace_view import load_run, print_trace
from qllm.agents.trial import (
    REFERENCE,
    TRIALS_DIR,
    CurvePoint,
    Trial,
    TrialStatus,
    TrialSummary,
    function_identity,
    paired_difference,
    summarise,
)
from qllm.envs import resolve_task
from qllm.evals.scorers import SCORERS, RunRecord
from qllm.sandbox import ValidationResult

EQUAL = "```python\ndef agent_weight(s, i):\n    return 1.0\n```"
EQUAL_AGAIN = (
    "```python\ndef agent_weight(s, i):\n    # the same function, written again\n    return 1.0\n```"
)
DOUBLE = "```python\ndef agent_weight(s, i):\n    return 2.0\n```"
SKEWED = "```python\ndef agent_weight(s, i):\n    return 1.0 + 9.0 * i\n```"
# Passes every sandbox check, then overflows the squared TD error in float32 as soon as training updates.
HUGE_BIAS = "```python\ndef agent_weight(s, i):\n    return 1.0\n\ndef state_bias(s):\n    return 1e38\n```"

# Matrix-climbing episodes are 25 steps: 1000 steps make 40 episodes, so 8 updates of 32 episodes.
TRIALS = {"trial_steps": 1000, "trial_seeds": 1, "trial_executor": "inline"}


def events(run_dir: Path, kind: str) -> list[TraceEvent]:
    return [e for e in read_events(run_dir / "trace.jsonl") if e.event == kind]


def trial(subject: str, seed: int, means: list[float], std: float = 0.0) -> Trial:
    curve = [CurvePoint(t_env=100 * (k + 1), mean=m, std=std, episodes=32) for k, m in enumerate(means)]
    return Trial(key=f"{subject}{seed}", subject=subject, seed=seed, status=TrialStatus.DONE, curve=curve)


# --- comparisons (pure functions on trial records) --------------------------------------------------


def test_paired_difference_is_taken_seed_by_seed_and_its_noise_grows_with_disagreement() -> None:
    a = [trial("a", 0, [1.0, 3.0]), trial("a", 1, [2.0, 4.0])]  # fitness 2 and 3
    b = [trial("b", 0, [0.0, 2.0]), trial("b", 1, [1.0, 3.0])]  # fitness 1 and 2: always 1 below
    d = paired_difference(a, b)
    assert d is not None and d.mean == pytest.approx(1.0) and d.noise < 1e-5  # only the rounding floor
    assert d.verdict() == "better"
    c = [trial("c", 0, [5.0, 5.0]), trial("c", 1, [-3.0, -3.0])]  # +4 then -4 against b: pure noise
    spread = paired_difference(c, b)
    assert spread is not None and not spread.beyond_noise and spread.verdict() == "within the noise"


def test_a_single_seed_takes_its_noise_from_the_evaluation_episodes() -> None:
    a, b = [trial("a", 0, [1.0], std=8.0)], [trial("b", 0, [0.0], std=8.0)]
    d = paired_difference(a, b)
    # The normal 95% half-width of the difference of two 32-episode means with std 8.
    assert d is not None and d.noise == pytest.approx(1.95996 * (2 * 64 / 32) ** 0.5, rel=1e-4)
    assert not d.beyond_noise


def test_failed_trials_are_not_averaged_and_are_counted() -> None:
    failed = Trial(key="x", subject="a", seed=1, status=TrialStatus.FAILED, error="NaN")
    summary = summarise([trial("a", 0, [1.0, 2.0]), failed, trial(REFERENCE, 0, [0.0, 0.0])], "a")
    assert summary.finished == 1 and summary.failed == 1 and summary.fitness == pytest.approx(1.5)
    assert summary.returns == [1.0, 2.0] and "NaN" in summary.problem
    assert summary.vs_reference is not None and summary.vs_reference.mean == pytest.approx(1.5)


def test_function_identity_ignores_comments_and_docstrings_only() -> None:
    base = 'def f(x):\n    """Doc."""\n    return x + 1\n'
    assert function_identity(base) == function_identity("def f(x):\n    # why\n    return x + 1\n")
    assert function_identity(base) != function_identity("def f(x):\n    return x + 2\n")


def candidate(cid: str, code: str) -> Candidate:
    attempt = Attempt(number=0, reply="", code=code, source=code, result=ValidationResult(ok=True))
    return Candidate(id=cid, round=1, slot=0, attempts=[attempt])


def test_ranking_ties_contenders_within_the_noise_and_never_picks_an_unfinished_one() -> None:
    a, b, c = candidate("a", "x = 1\n"), candidate("b", "x = 2\n"), candidate("c", "x = 3\n")
    trials = [
        trial(a.subject, 0, [1.0, 2.0], std=1.0),
        trial(b.subject, 0, [1.1, 2.0], std=1.0),  # 0.05 above a, far inside the noise
        Trial(key="c", subject=c.subject, seed=0, status=TrialStatus.TIMED_OUT),
    ]
    ranking = rank_by_trial([a, b, c], trials)
    assert ranking.best is b and [x.id for x in ranking.tied] == ["b", "a"]
    clear = rank_by_trial([a, b], [trial(a.subject, 0, [1.0]), trial(b.subject, 0, [5.0])])
    assert clear.best is b and clear.tied == [b]
    assert rank_by_trial([c], trials[2:]).best is None


# --- settings ---------------------------------------------------------------------------------------


def test_settings_refuse_unknown_selections_and_trial_selection_without_trials() -> None:
    with pytest.raises(SettingsError, match="selection must be one of"):
        settings(selection="best")
    with pytest.raises(SettingsError, match="needs trials"):
        settings(selection="trial", trial_steps=0)
    lbf = resolve_task("lbf-8x8-2p-2f").trial_steps
    assert settings(selection="trial").trial_settings(lbf).steps == lbf == 10_000  # the task's default
    assert settings(selection="consensus").trial_settings(lbf) is None  # no trials unless asked
    assert settings(selection="consensus", trial_steps=50).trial_settings(lbf).steps == 50


# --- the graph --------------------------------------------------------------------------------------


def test_trial_selection_trains_each_function_once_with_common_random_numbers(tmp_path: Path) -> None:
    coder = scripted([EQUAL, EQUAL_AGAIN, DOUBLE])
    outcome = generate(tmp_path, coder, scripted([]), candidates=3, selection="trial", **TRIALS)

    assert outcome.status == RunStatus.SUCCEEDED
    trials = outcome.state.trials
    # EQUAL and EQUAL_AGAIN are one function: the reference and two functions, one seed each.
    assert len(trials) == 3 and len({t.subject for t in trials}) == 3
    assert all(t.ok and len(t.curve) == 4 for t in trials)
    # Equal weights written as a credit function train exactly as VDN does: the same seed fixes the
    # networks, exploration, environments and evaluation, so only the credit function can differ.
    # (DOUBLE normalises to equal weights too.)
    reference = next(t for t in trials if t.subject == REFERENCE)
    assert all([p.mean for p in t.curve] == [p.mean for p in reference.curve] for t in trials)
    decision = outcome.state.decisions[-1]
    assert decision.source == "trial" and "tied within the noise" in decision.note
    assert decision.beats_reference is False
    assert "did NOT beat equal weights" in outcome.reason
    metadata = (outcome.run_dir / METADATA_FILE).read_text()
    assert '"beats_reference": false' in metadata and '"reference"' in metadata


def test_a_function_that_fails_in_training_never_wins(tmp_path: Path) -> None:
    coder = scripted([HUGE_BIAS, SKEWED])
    outcome = generate(tmp_path, coder, scripted([]), candidates=2, selection="trial", **TRIALS)

    failed = [t for t in outcome.state.trials if t.status == TrialStatus.FAILED]
    assert len(failed) == 1 and "NaN or infinite" in failed[0].error
    assert outcome.status == RunStatus.SUCCEEDED and outcome.state.best.id == "r1-c1"


def test_a_run_whose_every_function_fails_in_training_fails_with_the_reason(tmp_path: Path) -> None:
    outcome = generate(
        tmp_path, scripted([HUGE_BIAS]), scripted([]), candidates=1, selection="trial", **TRIALS
    )

    assert outcome.status == RunStatus.FAILED
    assert "failed its trial training" in outcome.reason and "NaN or infinite" in outcome.reason


def test_trials_that_time_out_leave_the_choice_to_the_judge_who_is_told(tmp_path: Path) -> None:
    coder, judge = scripted([EQUAL, SKEWED]), scripted([evaluation(choice=2)])
    outcome = generate(
        tmp_path, coder, judge, candidates=2, selection="trial", evaluator="deepseek:judge",
        **{**TRIALS, "trial_timeout_s": 0.01},
    )  # fmt: skip

    assert {t.status for t in outcome.state.trials} == {TrialStatus.TIMED_OUT}
    decision = outcome.state.decisions[-1]
    assert decision.source == "evaluator" and decision.chosen == "r1-c1"
    assert "no contender's trial training finished" in decision.note
    assert "Trial training did not finish (timed-out" in judge.prompts[0]


def test_the_evaluator_and_the_next_rounds_coder_see_how_candidates_trained(tmp_path: Path) -> None:
    coder = scripted([EQUAL, SKEWED, DOUBLE, EQUAL])
    judge = scripted([evaluation(choice=2), evaluation(choice=1)])
    generate(
        tmp_path, coder, judge, candidates=2, rounds=2, early_stop=False, selection="evaluator",
        evaluator="deepseek:judge", **TRIALS,
    )  # fmt: skip

    assert "Equal weights: Trial training (1 seed): greedy team return at 25/50/75/100%" in judge.prompts[0]
    assert judge.prompts[0].count("against equal weights (VDN)") == 2  # one line per candidate
    improve = coder.prompts[2]  # round 2's first draft improves round 1's choice
    assert "How it trained: Trial training (1 seed)" in improve and "against equal weights (VDN)" in improve


def test_a_resumed_run_reads_finished_trials_from_the_trace(tmp_path: Path) -> None:
    outcome = generate(
        tmp_path, scripted([EQUAL, SKEWED]), scripted([]), candidates=2, selection="trial", **TRIALS
    )
    assert len(outcome.state.trials) == 3
    # As if killed before any checkpoint: the graph starts over, the trace answers every LLM call and
    # every trial, and nothing is trained again (no trial run folder reappears).
    (outcome.run_dir / CHECKPOINTS_FILE).unlink()
    shutil.rmtree(outcome.run_dir / TRIALS_DIR)
    resumed = GenerationRun.open(outcome.run_dir).execute(Models(scripted([]), scripted([])))

    assert resumed.status == RunStatus.SUCCEEDED
    assert [t.key for t in resumed.state.trials] == [t.key for t in outcome.state.trials]
    assert not (outcome.run_dir / TRIALS_DIR).exists()
    assert len(events(outcome.run_dir, "trial")) == 3  # recorded once, read back on resume


def test_the_trace_views_show_each_rounds_trials(tmp_path: Path) -> None:
    outcome = generate(
        tmp_path, scripted([EQUAL, SKEWED]), scripted([]), candidates=2, selection="trial", **TRIALS
    )
    summary = load_run(outcome.run_dir)

    assert summary.reference is not None and summary.reference.finished == 1
    (round_,) = summary.rounds
    assert all(c.trial is not None and len(c.trial.returns) == 4 for c in round_.candidates)
    console = Console(record=True, width=200)
    print_trace(outcome.run_dir, console)
    text = console.export_text()
    assert "trial: return at 25/50/75/100%" in text and "equal weights (VDN):" in text
    assert "does not beat equal weights (VDN) beyond the noise" in text or "beats equal weights" in text
    page = render_html(summary)
    assert 'class="trial-curves"' in page and "equal weights on trial" in page
    # The evals store's downstream_return: the chosen function's trial fitness minus equal weights'.
    record = RunRecord.load(outcome.run_dir)
    chosen = summarise(summary.trials, function_identity(outcome.artifact.read_text()))
    expected = chosen.vs_reference.mean
    assert SCORERS["downstream_return"].fn(record, None) == pytest.approx(expected)


def test_a_deterministic_evaluation_still_needs_a_difference_above_rounding() -> None:
    a, b = [trial("a", 0, [125.0])], [trial("b", 0, [125.0 + 1e-9])]
    d = paired_difference(a, b)
    assert d is not None and not d.beyond_noise  # std 0: only the rounding floor stands in for noise


def test_two_seeds_judge_their_spread_by_students_t() -> None:
    a = [trial("a", 0, [2.0]), trial("a", 1, [1.0])]
    b = [trial("b", 0, [0.0]), trial("b", 1, [0.0])]  # differences 2 and 1: mean 1.5, sd 0.71
    d = paired_difference(a, b)
    assert d is not None and d.noise == pytest.approx(12.706 * 0.7071 / 2**0.5, rel=1e-3)
    assert not d.beyond_noise  # two seeds that agree in sign are still far from a 95% verdict


def test_only_the_functions_own_failures_stand_and_only_they_rule_it_out() -> None:
    assert TrialStatus.DONE.final and TrialStatus.FAILED.final
    assert not TrialStatus.TIMED_OUT.final and not TrialStatus.LOST.final
    lost = Trial(key="k", subject="a", seed=0, status=TrialStatus.LOST, error="worker died")
    summary = summarise([lost, trial(REFERENCE, 0, [1.0])], "a")
    assert summary.failed == 0 and summary.finished == 0 and not summary.beats_reference


def test_a_resumed_run_trains_lost_trials_again(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trace = Trace(run_dir)
    trace.record_trial(Trial(key="k1", subject="a", seed=0, status=TrialStatus.LOST, error="OOM"))
    trace.record_trial(trial("b", 0, [1.0]).model_copy(update={"key": "k2"}))
    reopened = Trace(run_dir)
    assert reopened.recorded_trial("k1") is None  # trained again
    assert reopened.recorded_trial("k2") is not None and reopened.recorded_trial("k2").fitness == 1.0


def test_traces_written_before_events_carried_their_place_still_read(tmp_path: Path) -> None:
    lines = [
        {"event": "llm_call", "time": 1.0, "key": "x", "role": "coder", "model": "local:m",
         "label": "r2-c1-a0", "messages": [["system", "s"], ["human", "h"]], "response": "r", "parsed": None,
         "usage": {"input_tokens": 3, "output_tokens": 4}, "latency_s": 0.5},
        {"event": "llm_error", "time": 2.0, "role": "evaluator", "model": "local:m", "label": "r2-eval1",
         "latency_s": 0.1, "error": "Timeout", "transient": True},
        {"event": "validation", "time": 3.0, "candidate": "r2-c1", "round": 2, "attempt": 0, "code": "",
         "ok": False, "result": {"ok": False, "error_kind": "syntax", "message": "bad"}},
    ]  # fmt: skip
    (tmp_path / "trace.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    call, error, validation = read_events(tmp_path / "trace.jsonl")
    assert call.place == CallPlace(round=2, slot=1, attempt=0)
    assert error.place == CallPlace(round=2, slot=None, attempt=1)
    assert validation.slot == 1


def test_a_state_with_trials_survives_the_checkpoint(tmp_path: Path) -> None:
    summary = summarise([trial("a", 0, [1.0, 2.0]), trial(REFERENCE, 0, [0.0, 1.0])], "a")
    trials = [trial("a", 0, [1.0, 2.0]), Trial(key="t", subject="b", seed=0, status=TrialStatus.LOST)]
    task = CandidateTask(2, 0, parent_trial=summary)
    serde = _serializer()  # LangGraph keeps each state channel (here `trials`) as its own value
    assert serde.loads_typed(serde.dumps_typed(trials)) == trials
    restored = serde.loads_typed(serde.dumps_typed(task))
    assert isinstance(restored.parent_trial, TrialSummary) and restored.parent_trial == summary
