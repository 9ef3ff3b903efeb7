"""Every route through the coder-evaluator graph, with scripted fake chat models and the real sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from graph_fakes import (
    BAD_KEY,
    BAD_SYNTAX,
    GOOD,
    GOOD_OTHER,
    NO_CODE,
    HTTPError,
    evaluation,
    generate,
    scripted,
    settings,
)

from qllm.agents import GenerationRun, Models, RunStatus
from qllm.agents.artifact import ARTIFACT_FILE, METADATA_FILE
from qllm.agents.trace import TraceEvent, read_events
from qllm.envs.tasks import make_env
from qllm.llm.providers import ProviderError
from qllm.rl.tfcaf import load_tfcaf


def events(outcome, kind: str) -> list[TraceEvent]:
    return [e for e in read_events(outcome.run_dir / "trace.jsonl") if e.event == kind]


def test_all_candidates_valid_writes_a_loadable_artifact(tmp_path: Path) -> None:
    coder, evaluator = scripted([GOOD, GOOD_OTHER]), scripted([evaluation(choice=2)])
    outcome = generate(tmp_path, coder, evaluator)

    assert outcome.status == RunStatus.SUCCEEDED
    assert [c.ok for c in outcome.state.candidates] == [True, True]
    assert outcome.state.best is not None and outcome.state.best.id == "r1-c1"  # the evaluator's choice 2
    source = (outcome.run_dir / ARTIFACT_FILE).read_text()
    assert source == outcome.state.best.final.source
    metadata = json.loads((outcome.run_dir / METADATA_FILE).read_text())
    assert metadata["candidate"] == "r1-c1"
    assert metadata["state_slices"] == {"last_joint_action": [0, 9]}
    assert set(metadata["prompt_hashes"]) >= {"coder_system", "contract", "repair", "evaluator", "task"}
    assert len(metadata["episode_weights"]["weights"]) == 26  # 25 steps + the initial state
    # The artifact is a complete TFCAF: the trainer's loader accepts it for the task, and the sandbox
    # measures it linear in Q, so training computes its credit in the sandbox.
    loaded = load_tfcaf(outcome.artifact, make_env("matrix-climbing").info)
    assert loaded.linear_in_q


def test_failed_candidate_is_repaired_with_a_fresh_prompt_holding_the_error(tmp_path: Path) -> None:
    coder = scripted([BAD_KEY, GOOD, GOOD])
    outcome = generate(tmp_path, coder, scripted([evaluation()]))

    first = outcome.state.candidates[0]
    assert [a.result.ok for a in first.attempts] == [False, True]
    assert first.attempts[0].result.error_kind == "runtime"
    repair_prompt = coder.prompts[1]
    assert "no_such_field" in repair_prompt and "KeyError" in repair_prompt
    assert "Your previous answer failed" in repair_prompt
    assert outcome.status == RunStatus.SUCCEEDED


def test_repair_budget_is_bounded_per_candidate(tmp_path: Path) -> None:
    coder = scripted([BAD_SYNTAX, NO_CODE, BAD_KEY, GOOD])  # slot 0 never recovers within 1 + 2 attempts
    outcome = generate(tmp_path, coder, scripted([evaluation()]), repairs=2)

    broken, fine = outcome.state.candidates
    assert [a.result.error_kind for a in broken.attempts] == ["syntax", "contract", "runtime"]
    assert not broken.ok and fine.ok
    assert outcome.state.best is not None and outcome.state.best.id == fine.id


def test_every_candidate_failing_ends_cleanly_without_artifact(tmp_path: Path) -> None:
    coder, evaluator = scripted([BAD_KEY] * 8), scripted([])
    outcome = generate(tmp_path, coder, evaluator, rounds=2)

    assert outcome.status == RunStatus.FAILED
    assert outcome.artifact is None and not (outcome.run_dir / ARTIFACT_FILE).exists()
    assert "no candidate passed validation" in outcome.reason and "runtime" in outcome.reason
    assert [d.source for d in outcome.state.decisions] == ["no-valid-candidate"] * 2
    assert evaluator.prompts == []  # nothing to evaluate, so the evaluator is never asked
    assert len(coder.prompts) == 8  # 2 rounds x 2 candidates x (1 draft + 1 repair)


def test_malformed_evaluator_reply_is_asked_again(tmp_path: Path) -> None:
    evaluator = scripted(["The second one is best!", evaluation(choice=2)])
    outcome = generate(tmp_path, scripted([GOOD, GOOD_OTHER]), evaluator)

    assert outcome.state.decisions[0].source == "evaluator"
    assert outcome.state.best is not None and outcome.state.best.id == "r1-c1"
    assert "could not be used" in evaluator.prompts[1]


def test_evaluator_failing_twice_falls_back_to_the_most_state_dependent_candidate(tmp_path: Path) -> None:
    evaluator = scripted(['{"choice": 7}', "no idea"])  # out of range, then no JSON at all
    outcome = generate(tmp_path, scripted([GOOD, GOOD_OTHER]), evaluator)

    decision = outcome.state.decisions[0]
    assert decision.source == "fallback" and "unusable" in decision.note
    # GOOD gives constant weights; GOOD_OTHER's depend on the state.
    assert decision.chosen == "r1-c1"
    assert outcome.status == RunStatus.SUCCEEDED


def test_transient_provider_errors_are_retried_with_backoff(tmp_path: Path) -> None:
    coder = scripted([HTTPError(429), HTTPError(503), GOOD, GOOD])
    outcome = generate(tmp_path, coder, scripted([evaluation()]))

    assert outcome.status == RunStatus.SUCCEEDED
    errors = events(outcome, "llm_error")
    assert [e.transient for e in errors] == [True, True]
    assert len(outcome.state.candidates[0].attempts) == 1  # a retry is not a repair


def test_bad_credentials_end_the_run_with_a_clear_error(tmp_path: Path) -> None:
    coder = scripted([HTTPError(401, "Incorrect API key provided")])
    with pytest.raises(ProviderError, match=r"bad or missing credentials \(HTTP 401\)"):
        generate(tmp_path, coder, scripted([]))


def test_tips_and_best_function_seed_the_next_round(tmp_path: Path) -> None:
    coder = scripted([GOOD, GOOD_OTHER, GOOD, GOOD])
    evaluator = scripted([evaluation(choice=2, tips="TIP-FROM-ROUND-1"), evaluation(choice=1)])
    outcome = generate(tmp_path, coder, evaluator, rounds=2)

    round_two_prompt = coder.prompts[2]
    assert (
        "TIP-FROM-ROUND-1" in round_two_prompt
        and "i == 0 and s['last_joint_action'][0] else" in round_two_prompt
    )
    # Round 2 shows its two candidates plus round 1's best as the third contender.
    assert outcome.state.decisions[1].contenders == ["r2-c0", "r2-c1", "r1-c1"]
    assert len(outcome.state.decisions) == 2


def test_a_satisfied_evaluator_stops_early(tmp_path: Path) -> None:
    coder = scripted([GOOD, GOOD_OTHER])
    outcome = generate(tmp_path, coder, scripted([evaluation(choice=2, satisfied=True)]), rounds=3)

    assert outcome.status == RunStatus.SUCCEEDED
    assert len(outcome.state.decisions) == 1 and len(coder.prompts) == 2


def test_satisfaction_with_state_independent_weights_does_not_stop_the_run(tmp_path: Path) -> None:
    coder = scripted([GOOD, GOOD, GOOD_OTHER, GOOD])
    evaluator = scripted([evaluation(choice=1, satisfied=True), evaluation(choice=1)])
    outcome = generate(tmp_path, coder, evaluator, rounds=2)

    assert len(outcome.state.decisions) == 2  # GOOD's weights are constant: VDN in disguise


class CrashError(RuntimeError):
    """A fault that is not an LLM error: the process dies mid-run."""


def test_resume_after_a_crash_repeats_no_completed_llm_call(tmp_path: Path) -> None:
    replies = [GOOD, BAD_KEY, GOOD, GOOD, GOOD]  # round 1: c0, c1 (+repair); round 2: c0, c1
    uninterrupted = generate(
        tmp_path / "a", scripted(replies), scripted([evaluation(), evaluation()]), rounds=2
    )

    # Same run, but the process dies at the repair of r1-c1 (the third coder call).
    run = GenerationRun.create(settings(rounds=2), tmp_path / "b")
    first = scripted([*replies[:2], CrashError("killed")])
    with pytest.raises(CrashError):
        run.execute(Models(first, scripted([evaluation(), evaluation()])))
    coder, evaluator = scripted(replies[2:]), scripted([evaluation(), evaluation()])
    resumed = GenerationRun.open(run.run_dir).execute(Models(coder, evaluator))

    assert resumed.status == RunStatus.SUCCEEDED
    assert len(first.prompts) - 1 + len(coder.prompts) == len(replies)  # the crashed call is the only repeat
    assert [c.id for c in resumed.state.candidates] == [c.id for c in uninterrupted.state.candidates]
    assert resumed.state.best is not None and uninterrupted.state.best is not None
    assert (
        resumed.state.best.final.source.splitlines()[2:]
        == uninterrupted.state.best.final.source.splitlines()[2:]
    )
    assert any(e.event == "resumed" for e in read_events(run.run_dir / "trace.jsonl"))


def test_resuming_a_finished_run_makes_no_calls(tmp_path: Path) -> None:
    outcome = generate(tmp_path, scripted([GOOD, GOOD]), scripted([evaluation()]))
    coder, evaluator = scripted([]), scripted([])
    again = GenerationRun.open(outcome.run_dir).execute(Models(coder, evaluator))
    assert again.status == RunStatus.SUCCEEDED and coder.prompts == [] and evaluator.prompts == []


def test_concurrent_candidates_with_a_provider_that_allows_it(tmp_path: Path) -> None:
    coder = scripted([GOOD] * 4)
    outcome = generate(tmp_path, coder, scripted([evaluation()]), candidates=4, coder="openai:fake-model")
    assert outcome.status == RunStatus.SUCCEEDED
    assert sorted(c.id for c in outcome.state.candidates) == ["r1-c0", "r1-c1", "r1-c2", "r1-c3"]
    assert all(c.ok for c in outcome.state.candidates)


def test_trace_records_every_call_with_usage_and_latency(tmp_path: Path) -> None:
    outcome = generate(tmp_path, scripted([BAD_KEY, GOOD, GOOD]), scripted([evaluation()]))
    calls = events(outcome, "llm_call")
    assert [c.label for c in calls] == ["r1-c0-a0", "r1-c0-a1", "r1-c1-a0", "r1-eval0"]
    # Where each call sits is a field of the event, not something to parse back out of its label.
    assert [(c.place.round, c.place.slot, c.place.attempt) for c in calls] == [
        (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, None, 0),
    ]  # fmt: skip
    assert all(c.usage.input_tokens == 10 and c.usage.output_tokens == 5 and c.latency_s >= 0 for c in calls)
    assert [(v.ok, v.slot) for v in events(outcome, "validation")] == [(False, 0), (True, 0), (True, 1)]
    assert events(outcome, "finished")[0].status == "succeeded"
    assert len(list((outcome.run_dir / "candidates").glob("*.py"))) == 3
