"""Spec mode: per-agent quantities from the schema, compiling a credit spec, and the graph in spec mode."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from graph_fakes import evaluation, generate, scripted, settings
from pydantic import ValidationError

from qllm.agents import GenerationRun, RunStatus
from qllm.agents.artifact import METADATA_FILE
from qllm.agents.modes import CodeMode, FunctionMode, SpecMode, resolve_mode, writing_mode
from qllm.agents.run import SETTINGS_FILE
from qllm.agents.spec import (
    RELATIVE_HELPER,
    SPEC_TEMPLATE_ID,
    CreditSpec,
    compile_spec,
    compiled_spec,
    per_agent_quantities,
    spec_model,
)
from qllm.agents.template import NamedState, assemble, keep_definitions
from qllm.envs.recording import record
from qllm.envs.tasks import make_env, resolve_task
from qllm.evals.scorers import ProbeJudge
from qllm.llm.providers import ModelSpec
from qllm.sandbox import Sandbox, ValidationInputs
from qllm.sandbox.restricted import load_credit_function


def quantities(task: str) -> list:
    return per_agent_quantities(NamedState.for_task(make_env(task).info))


def spec(*terms: tuple[str, str, str]) -> CreditSpec:
    return CreditSpec(
        reasoning="test",
        terms=[{"quantity": q, "more_credit_to": e, "strength": s} for q, e, s in terms],
    )


def tfcaf(task: str, credit: CreditSpec) -> str:
    named = NamedState.for_task(make_env(task).info)
    code = compile_spec(credit, per_agent_quantities(named))
    return assemble(named, keep_definitions(code), template_id=SPEC_TEMPLATE_ID)


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("lbf-2s-10x10-3p-3f", {"agent_level", "last_action[LOAD]", "nearest_food_distance"}),
        ("mpe-spread-3", {"agent_velocity[vx]", "nearest_landmark_distance"}),
        ("mpe-tag", {"prey_distance", "nearest_obstacle_distance"}),
        ("rware-tiny-2ag", {"agent_carrying[carrying_requested_shelf]", "nearest_goal_distance"}),
        ("matrix-climbing", {"last_action[action_0]", "last_action[action_2]"}),
    ],
)
def test_quantities_come_from_the_schema(task: str, expected: set[str]) -> None:
    names = {q.name for q in quantities(task)}
    assert expected <= names
    assert not any(name.endswith("_position") for name in names)  # raw coordinates are left out


def test_the_spec_schema_admits_only_listed_quantities_and_a_few_terms() -> None:
    model = spec_model(quantities("lbf-2s-10x10-3p-3f"))
    good = {"quantity": "agent_level", "more_credit_to": "highest", "strength": "weak"}
    other = {"quantity": "nearest_food_distance", "more_credit_to": "lowest", "strength": "strong"}
    assert model.model_validate({"reasoning": "r", "terms": [good, other]}).terms[0].quantity == "agent_level"
    with pytest.raises(ValidationError):
        model.model_validate({"reasoning": "r", "terms": [good, {**good, "quantity": "agent_position"}]})
    with pytest.raises(ValidationError):
        model.model_validate({"reasoning": "r", "terms": [good] * 5})
    with pytest.raises(ValidationError):  # at least two signals
        model.model_validate({"reasoning": "r", "terms": [good]})
    enum = json.dumps(model.model_json_schema())  # what llama.cpp turns into a grammar
    assert "nearest_food_distance" in enum and "last_action[LOAD]" in enum


def probe_score(tmp_path: Path, task: str, credit: CreditSpec) -> float | None:
    path = tmp_path / f"{task}-{abs(hash(credit.model_dump_json()))}.py"
    path.write_text(tfcaf(task, credit))
    inputs = ValidationInputs.from_recording(record(task, 2, seed=0))
    with Sandbox() as sandbox:
        return ProbeJudge(sandbox, resolve_task(task).semantic_probes(), inputs).score(path)


def test_a_compiled_spec_assigns_credit_the_way_it_says(tmp_path: Path) -> None:
    """The LBF probes favour an agent loading next to food over an idle one far away."""
    sensible = spec(
        ("nearest_food_distance", "lowest", "strong"), ("last_action[LOAD]", "highest", "moderate")
    )
    backwards = spec(
        ("nearest_food_distance", "highest", "strong"), ("last_action[LOAD]", "lowest", "moderate")
    )
    assert probe_score(tmp_path, "lbf-2s-10x10-3p-3f", sensible) == 1.0
    assert probe_score(tmp_path, "lbf-2s-10x10-3p-3f", backwards) == 0.0


def test_own_actions_are_decoded_from_the_joint_action(tmp_path: Path) -> None:
    """Matrix probes favour the agent that can reach the optimum (0, 0) alone: the one not playing 0."""
    assert (
        probe_score(tmp_path, "matrix-climbing", spec(("last_action[action_0]", "lowest", "strong"))) == 1.0
    )
    assert (
        probe_score(tmp_path, "matrix-climbing", spec(("last_action[action_0]", "highest", "strong"))) == 0.0
    )


STANDING_PER_CALL = """def relative(s, i, quantity):
    values = [quantity(s, j) for j in range(N_AGENTS)]
    mean = sum(values) / len(values)
    spread = max(abs(v - mean) for v in values)
    return 0.0 if spread == 0 else (values[i] - mean) / spread

"""
"""The helper as it was: every agent's weight asked every agent's value of each quantity again."""


def _weights_and_quantity_calls(source: str, rows: list[list[float]]) -> tuple[list, Counter[str]]:
    """Each row's normalised weights under ``source`` (loaded as the trainer loads a file: restricted),
    and how many times each quantity was computed."""
    namespace = load_credit_function(source).function.__globals__
    calls: Counter[str] = Counter()
    for name in [n for n in namespace if n.startswith("quantity_")]:

        def counted(s, i, computed=namespace[name], name=name):
            calls[name] += 1
            return computed(s, i)

        namespace[name] = counted
    weights = [namespace["normalised_weights"](namespace["named_state"](row)) for row in rows]
    return weights, calls


def test_each_quantity_is_computed_once_per_agent_per_state_giving_the_same_weights() -> None:
    task = "lbf-2s-10x10-3p-3f"  # three agents
    credit = spec(("nearest_food_distance", "lowest", "strong"), ("agent_level", "highest", "weak"))
    source = tfcaf(task, credit)
    rows = ValidationInputs.from_recording(record(task, 2, seed=0)).states.tolist()
    weights, calls = _weights_and_quantity_calls(source, rows)
    assert calls == {"quantity_0": 3 * len(rows), "quantity_1": 3 * len(rows)}
    assert RELATIVE_HELPER in source
    before, calls_before = _weights_and_quantity_calls(
        source.replace(RELATIVE_HELPER, STANDING_PER_CALL), rows
    )
    assert calls_before["quantity_0"] == 9 * len(rows)
    assert weights == before  # the same floats: the same expressions, each computed once
    assert len({tuple(w) for w in weights}) > 1  # states where the agents' standings differ


def test_auto_mode_writes_specs_for_the_local_model_and_code_for_others() -> None:
    assert resolve_mode("auto", ModelSpec.parse("local")) == "spec"
    assert resolve_mode("auto", ModelSpec.parse("openai:gpt-4o-mini")) == "code"
    assert resolve_mode("code", ModelSpec.parse("local")) == "code"
    named = NamedState.for_task(make_env("mpe-spread-3").info)
    inputs = ValidationInputs.from_recording(record("mpe-spread-3", episodes=2))
    assert isinstance(writing_mode("spec", named, inputs), SpecMode)
    assert isinstance(writing_mode("code", named, inputs), CodeMode)
    function = writing_mode("function", named, inputs)
    assert isinstance(function, FunctionMode) and function.batch == inputs.states.shape[0]


SPEC_REPLY = json.dumps(
    {
        "reasoning": "the agent that last played the optimal action matters",
        "terms": [
            {"quantity": "last_action[action_0]", "more_credit_to": "highest", "strength": "moderate"},
            {"quantity": "last_action[action_1]", "more_credit_to": "lowest", "strength": "weak"},
        ],
    }
)
UNKNOWN_QUANTITY = json.dumps(
    {"reasoning": "r", "terms": [{"quantity": "agent_mood", "more_credit_to": "highest", "strength": "weak"}]}
)


def test_the_graph_in_spec_mode_compiles_validates_and_repairs(tmp_path: Path) -> None:
    coder = scripted([UNKNOWN_QUANTITY, SPEC_REPLY, SPEC_REPLY])
    outcome = generate(tmp_path, coder, scripted([evaluation(choice=1)]), mode="spec")

    assert outcome.status == RunStatus.SUCCEEDED
    first = outcome.state.candidates[0]
    assert [a.result.ok for a in first.attempts] == [False, True]
    assert "agent_mood" in coder.prompts[1] and "listed quantity names" in coder.prompts[1]
    assert "last_action[action_0]" in coder.prompts[0]  # the quantity table is in the prompt
    metadata = json.loads((outcome.run_dir / METADATA_FILE).read_text())
    assert metadata["template"] == SPEC_TEMPLATE_ID and metadata["mode"] == "spec"
    assert outcome.artifact is not None  # the spec stays readable in the credit function file itself
    written = outcome.artifact.read_text()
    assert "more credit to agents with the highest last_action[action_0] (moderate)" in written
    # and the file the graph writes is one a trainer recognises: its credit comes from the spec
    weights = compiled_spec(written, NamedState.for_task(make_env("matrix-climbing").info))
    assert weights is not None and [t.quantity for t in weights.terms] == [
        "last_action[action_0]",
        "last_action[action_1]",
    ]


def test_round_two_shows_the_best_spec_and_the_tips(tmp_path: Path) -> None:
    coder = scripted([SPEC_REPLY] * 4)
    evaluator = scripted([evaluation(choice=1, tips="prefer the agent that must change"), evaluation()])
    generate(tmp_path, coder, evaluator, mode="spec", rounds=2, repairs=0)
    improve = coder.prompts[2]
    assert "The best answer so far" in improve and "prefer the agent that must change" in improve
    assert '"quantity": "last_action[action_0]"' in improve


def test_a_run_folder_from_before_modes_resumes_as_code_judged_by_the_evaluator(tmp_path: Path) -> None:
    run = GenerationRun.create(settings(mode="auto", selection="auto"), tmp_path)
    path = run.run_dir / SETTINGS_FILE
    saved = json.loads(path.read_text())
    del saved["mode"], saved["selection"]
    path.write_text(json.dumps(saved))
    reopened = GenerationRun.open(run.run_dir).settings
    assert (reopened.mode, reopened.selection) == ("code", "evaluator")
