"""A credit spec's weights computed from the spec: the compiled file's own numbers, and only for a file that
is exactly qllm's compilation of the spec in its header; training on such a file starts no sandbox."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training_safety import SHORT  # the short run the training-safety tests train

from qllm.agents.modes import writing_mode
from qllm.agents.spec import (
    SPEC_TEMPLATE_ID,
    CreditSpec,
    EntityDistance,
    FieldColumn,
    SpecError,
    SpecWeights,
    compile_spec,
    compiled_spec,
    per_agent_quantities,
    spec_file,
)
from qllm.agents.template import NamedState, assemble, is_grid, keep_definitions
from qllm.envs.recording import record
from qllm.envs.tasks import make_env
from qllm.rl import preset, train
from qllm.rl.credit import CreditFunctionError, SpecCredit
from qllm.rl.train import FINAL_MODEL
from qllm.sandbox import ValidationInputs
from qllm.sandbox.checks import compute_credit
from qllm.sandbox.restricted import candidate_traceback, load_credit_function
from qllm.sweep import interpret
from qllm.sweep.interpret import credit_episode

TASKS = [
    "lbf-2s-10x10-3p-3f", "lbf-8x8-2p-2f", "mpe-spread-3", "mpe-tag", "rware-tiny-2ag", "matrix-climbing",
]  # fmt: skip
DIRECTIONS = ("highest", "lowest")
STRENGTHS = ("strong", "weak", "moderate")


def named(task: str) -> NamedState:
    return NamedState.for_task(make_env(task).info)


def specs_naming_every_quantity(task: str) -> list[CreditSpec]:
    """Specs of up to four terms that between them name each of the task's quantities, in both directions
    and every strength, and name one quantity twice."""
    names = [q.name for q in per_agent_quantities(named(task))]
    specs = []
    for start in range(0, len(names), 3):
        group = names[start : start + 3]
        terms = [
            {"quantity": name, "more_credit_to": DIRECTIONS[(start + k) % 2], "strength": STRENGTHS[k % 3]}
            for k, name in enumerate(group)
        ]
        terms.append({"quantity": group[0], "more_credit_to": "lowest", "strength": "weak"})
        specs.append(CreditSpec(reasoning="every quantity", terms=terms))
    return specs


def states_with_entities_gone(task: str) -> torch.Tensor:
    """Recorded states, and copies of them in which positioned entities have left a grid (at negative
    cells, as eaten food is): the first one, then all of them."""
    states = ValidationInputs.from_recording(record(task, 3, seed=0)).states
    gone = []
    for quantity in per_agent_quantities(named(task)):
        measure = quantity.measure
        if isinstance(measure, EntityDistance) and is_grid(measure.agents) and measure.entities.count > 1:
            columns = measure.entities.slice
            first, every = states.clone(), states.clone()
            first[:, columns.start : columns.start + len(measure.entities.features)] = -1.0
            every[:, columns] = -1.0
            gone += [first, every]
    return torch.cat([states, *gone, *cancelling(task, states)])


def cancelling(task: str, states: torch.Tensor) -> list[torch.Tensor]:
    """Copies of the states in which each per-agent field with one feature holds values whose sum depends
    on the order and the rounding of the additions (1e16 + 1 - 1e16 is 0 summed in order, 1 exactly)."""
    copies = []
    for quantity in per_agent_quantities(named(task)):
        if isinstance(quantity.measure, FieldColumn) and len(quantity.measure.field.features) == 1:
            copy = states.clone()
            columns = quantity.measure.columns(make_env(task).info.n_agents)
            copy[:, columns] = torch.tensor([1e16, 1.0, -1e16, 3.0][: len(columns)])
            copies.append(copy)
    return copies


def sandbox_weights(source: str, states: torch.Tensor, n_agents: int) -> np.ndarray:
    """The compiled file's weights as the sandbox worker computes them (the same calls, in this process)."""
    function = load_credit_function(source).function
    credit = compute_credit(function, states, n_agents, True, lambda exc: candidate_traceback(exc, source))
    return credit[:, :n_agents].numpy()


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("credit_floor", [0.0, 0.3])
def test_the_weights_from_the_spec_are_the_compiled_files_bit_for_bit(task: str, credit_floor: float) -> None:
    states = states_with_entities_gone(task)
    for spec in specs_naming_every_quantity(task):
        source = spec_file(named(task), spec, credit_floor=credit_floor)
        weights = compiled_spec(source, named(task))
        assert weights is not None
        credit = SpecCredit(source, weights)(states)  # as training computes it: [w, b]
        assert credit.dtype == torch.float32 and not credit[:, -1].any()  # a spec's bias is 0
        from_spec = credit[:, :-1].numpy()
        expected = sandbox_weights(source, states, weights.n_agents)
        np.testing.assert_array_equal(from_spec, expected)
        assert len({tuple(row) for row in from_spec.tolist()}) > 1  # not all states weigh the same


SPEC = CreditSpec(
    reasoning='agents "near" food',
    terms=[
        {"quantity": "nearest_food_distance", "more_credit_to": "lowest", "strength": "strong"},
        {"quantity": "last_action[LOAD]", "more_credit_to": "highest", "strength": "moderate"},
    ],
)


def test_only_a_file_that_is_exactly_the_specs_compilation_is_recognised() -> None:
    view = named("lbf-8x8-2p-2f")
    quantities = per_agent_quantities(view)
    source = spec_file(view, SPEC, docstring="Credit for the foraging task.", credit_floor=0.2)
    assert compiled_spec(source, view) is not None
    header, rest = source.split("\n", 1)
    other = SPEC.model_copy(update={"terms": SPEC.terms[:1]})
    claimed = json.loads(header.removeprefix("# qllm-tfcaf:"))
    claimed["spec"] = other.model_dump(mode="json")
    unrecognised = {
        "its code edited": source.replace("score -= 2.0 *", "score -= 3.0 *"),
        "a line added": source + "\nprint('hello')\n",
        "its header naming another spec": f"# qllm-tfcaf: {json.dumps(claimed)}\n{rest}",
        "its header's floor changed": source.replace('"credit_floor": 0.2', '"credit_floor": 0.5', 1),
        "no spec in its header (compiled before)": assemble(
            view, keep_definitions(compile_spec(SPEC, quantities)), template_id=SPEC_TEMPLATE_ID
        ),
        "for another task": spec_file(named("lbf-2s-10x10-3p-3f"), SPEC),
        "a malformed header": "# qllm-tfcaf: {not json\n" + rest,
    }
    assert "score -= 2.0 *" in source
    for why, text in unrecognised.items():
        assert compiled_spec(text, view) is None, why


def test_files_the_generation_graph_writes_are_recognised_whatever_their_docstring_and_floor() -> None:
    view = named("lbf-8x8-2p-2f")
    inputs = ValidationInputs.from_recording(record("lbf-8x8-2p-2f", 1, seed=0))
    mode = writing_mode("spec", view, inputs)
    for docstring, floor in (("", 0), ('Credit for "lbf", C:\\runs\\a.py', 0.25), ("Two\nlines.", 1)):
        _, source = mode.to_source(SPEC.model_dump_json(), view, docstring, floor)
        weights = compiled_spec(source, view)
        assert weights is not None, (docstring, floor)
        assert weights.credit_floor == floor


def test_a_spec_the_compiled_file_could_not_compute_is_refused() -> None:
    quantities = per_agent_quantities(named("lbf-8x8-2p-2f"))
    with pytest.raises(SpecError, match="at least two agents"):
        SpecWeights.of(SPEC, quantities, n_agents=1, credit_floor=0.0)
    with pytest.raises(SpecError, match="holds 2 of 3 agents"):
        SpecWeights.of(SPEC, quantities, n_agents=3, credit_floor=0.0)
    unknown = SPEC.model_copy(update={"terms": [SPEC.terms[0].model_copy(update={"quantity": "mood"})]})
    with pytest.raises(SpecError, match="unknown quantity 'mood'"):
        SpecWeights.of(unknown, quantities, n_agents=2, credit_floor=0.0)


def test_states_holding_nan_where_the_spec_reads_stop_its_credit() -> None:
    view = named("lbf-8x8-2p-2f")
    source = spec_file(view, SPEC)
    credit = SpecCredit(source, compiled_spec(source, view))
    states = ValidationInputs.from_recording(record("lbf-8x8-2p-2f", 1, seed=0)).states
    assert credit(states).shape == (len(states), 3)
    unread = sorted(set(range(states.shape[1])) - set(credit.weights.columns))
    assert unread  # the food levels: no term reads them
    states[3, unread[0]] = float("nan")
    assert torch.isfinite(credit(states)).all()
    states[5, credit.weights.columns[0]] = float("inf")
    with pytest.raises(CreditFunctionError, match=r"1 of \d+ new states hold NaN or infinite values where"):
        credit.begin(states).result()


def test_training_on_a_compiled_spec_starts_no_sandbox_and_learns_what_the_sandbox_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same run with the file as written (weights from its spec) and with a comment added (an edit:
    the sandbox computes the weights) ends with the same networks."""
    task = "lbf-8x8-2p-2f"
    source = spec_file(named(task), SPEC)
    as_written, edited = tmp_path / "spec.py", tmp_path / "edited.py"
    as_written.write_text(source)
    edited.write_text(source + "# edited\n")

    trainer = sys.modules[train.__module__]  # qllm.rl.train (qllm.rl's `train` is the function)
    sandbox = trainer.Sandbox

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a sandbox was started for a compiled spec")

    monkeypatch.setattr(trainer, "Sandbox", refuse)
    monkeypatch.setattr(interpret, "Sandbox", refuse)
    from_spec = train(preset("qllm", task=task, tfcaf=str(as_written), **SHORT), runs_dir=tmp_path / "a")
    # the sweep report's figure of the credit over an episode computes it the same way
    episode = credit_episode(from_spec.run_dir, as_written, episodes=2)
    np.testing.assert_allclose(episode.weights.sum(axis=1), 2.0, rtol=1e-6)  # normalised to n_agents
    assert not episode.bias.any()
    monkeypatch.setattr(trainer, "Sandbox", sandbox)
    in_sandbox = train(preset("qllm", task=task, tfcaf=str(edited), **SHORT), runs_dir=tmp_path / "b")

    networks = [torch.load(r.run_dir / FINAL_MODEL, weights_only=True) for r in (from_spec, in_sandbox)]
    assert networks[0].keys() == networks[1].keys()
    for name in ("agent", "mixer"):
        for key, value in networks[0][name].items():
            assert torch.equal(value, networks[1][name][key]), (name, key)
    metrics = [(r.run_dir / "metrics.csv").read_text() for r in (from_spec, in_sandbox)]
    assert metrics[0].count("\n") > 3 and metrics[0] == metrics[1]
