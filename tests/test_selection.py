"""Choosing by consensus: agreement of measured weights, and the graph without an evaluator call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from graph_fakes import GOOD, generate, scripted

from qllm.agents import RunStatus
from qllm.agents.selection import agreement, consensus, resolve_selection
from qllm.agents.state import Attempt, Candidate
from qllm.agents.trace import read_events
from qllm.llm.providers import ModelSpec
from qllm.sandbox import ValidationResult, WeightReport
from qllm.sandbox.result import AgentWeightStats


def report(*rows: list[float]) -> WeightReport:
    n = len(rows[0])
    stats = [
        AgentWeightStats(agent=i, mean=1.0, std=0.0, min=1.0, max=1.0, share_zero=0.0, share_negative=0.0)
        for i in range(n)
    ]
    return WeightReport(
        n_states=len(rows), agents=stats, bias_mean=0.0, bias_std=0.0, weight_state_variation=0.1,
        weight_sum_mean=float(n), linear_in_q_error=0.0, example_weights=[list(r) for r in rows],
    )  # fmt: skip


def candidate(cid: str, weights: WeightReport) -> Candidate:
    result = ValidationResult(ok=True, weights=weights)
    return Candidate(
        id=cid, round=1, slot=0, attempts=[Attempt(number=0, reply="", code="", source="", result=result)]
    )


FAVOUR_0 = report([1.5, 0.5], [1.0, 1.0], [1.2, 0.8])
FAVOUR_1 = report([0.5, 1.5], [1.0, 1.0], [0.8, 1.2])
EQUAL = report([1.0, 1.0], [1.0, 1.0], [1.0, 1.0])


def test_agreement_is_the_cosine_of_centred_weights_where_they_say_anything() -> None:
    assert agreement(FAVOUR_0, FAVOUR_0) == pytest.approx(1.0)
    assert agreement(FAVOUR_0, FAVOUR_1) == pytest.approx(-1.0)
    assert agreement(FAVOUR_0, EQUAL) == 0.0  # equal shares agree with nothing
    assert agreement(EQUAL, EQUAL) == 0.0


def test_consensus_keeps_the_majority_reading_and_is_unanimous_only_when_all_agree() -> None:
    split = consensus([candidate("a", FAVOUR_1), candidate("b", FAVOUR_0), candidate("c", FAVOUR_0)])
    assert split.chosen.id in {"b", "c"} and not split.unanimous
    assert split.support["a"] == pytest.approx(-1.0)
    agreed = consensus([candidate("a", FAVOUR_0), candidate("b", FAVOUR_0)])
    assert agreed.unanimous
    assert not consensus([candidate("a", EQUAL), candidate("b", EQUAL)]).unanimous


SPEC_REPLY = json.dumps(
    {
        "reasoning": "the agent that last played the optimal action matters",
        "terms": [
            {"quantity": "last_action[action_0]", "more_credit_to": "highest", "strength": "moderate"},
            {"quantity": "last_action[action_1]", "more_credit_to": "lowest", "strength": "weak"},
        ],
    }
)


def test_auto_selection_is_consensus_only_for_the_local_evaluator() -> None:
    assert resolve_selection("auto", ModelSpec.parse("local")) == "consensus"
    assert resolve_selection("auto", ModelSpec.parse("openai:gpt-4o-mini")) == "evaluator"
    assert resolve_selection("evaluator", ModelSpec.parse("local")) == "evaluator"


def test_consensus_makes_no_evaluator_call_and_stops_when_unanimous(tmp_path: Path) -> None:
    outcome = generate(
        tmp_path, scripted([SPEC_REPLY, SPEC_REPLY]), scripted([]), mode="spec", selection="consensus",
        rounds=3,
    )  # fmt: skip
    assert outcome.status == RunStatus.SUCCEEDED
    (decision,) = [e for e in read_events(outcome.run_dir / "trace.jsonl") if e.event == "decision"]
    assert decision.source == "consensus" and decision.satisfied
    assert "r1-c0 1.00" in decision.note


def test_consensus_never_stops_early_on_state_independent_weights(tmp_path: Path) -> None:
    outcome = generate(tmp_path, scripted([GOOD] * 4), scripted([]), selection="consensus", rounds=2)
    decisions = [e for e in read_events(outcome.run_dir / "trace.jsonl") if e.event == "decision"]
    assert [d.source for d in decisions] == ["consensus", "consensus"]
    assert outcome.status == RunStatus.SUCCEEDED
