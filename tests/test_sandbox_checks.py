"""The behavioural checks and the weight extraction, on valid functions with known weights.

Most tests run the checks in this process on functions loaded through the restricted loader (fast);
the last ones go through the real sandbox end to end.
"""

from __future__ import annotations

import socket

import pytest
import torch

from qllm.envs import make_env
from qllm.envs.recording import record
from qllm.sandbox import (
    CandidateRejectedError,
    CheckOptions,
    ErrorKind,
    Sandbox,
    ValidationInputs,
    load_credit_function,
)
from qllm.sandbox.checks import run_checks
from qllm.sandbox.restricted import candidate_traceback
from qllm.sandbox.worker import WARM_UP_SOURCES

VDN = "def credit_assignment(agents_q, state):\n    return agents_q.sum(dim=1, keepdim=True)\n"
SOFTMAX = """
import torch


def credit_assignment(agents_q, state):
    n = agents_q.shape[1]
    weights = torch.softmax(state[:, :n], dim=1) * n
    return (weights * agents_q).sum(dim=1, keepdim=True)
"""
WITH_BIAS = """
import torch.nn.functional as F


def credit_assignment(agents_q, state):
    weights = F.softplus(state[:, 1:2]).expand_as(agents_q)
    return (weights * agents_q).sum(dim=1, keepdim=True) + state[:, :1] * 0.5
"""
# lbf-8x8-2p-2f: agent levels are state columns 4:6 (see `qllm tasks show lbf-8x8-2p-2f`).
LBF_LEVELS = """
def credit_assignment(agents_q, state):
    levels = state[:, 4:6] + 1e-6  # the all-zero padding state has no levels
    weights = levels / levels.sum(dim=1, keepdim=True) * 2.0
    return (weights * agents_q).sum(dim=1, keepdim=True)
"""
NEGATIVE = "def credit_assignment(agents_q, state):\n    return (agents_q * -0.5).sum(1, keepdim=True)\n"
MAX_Q = "def credit_assignment(agents_q, state):\n    return agents_q.max(dim=1, keepdim=True).values\n"


@pytest.fixture(scope="module")
def lbf_inputs() -> ValidationInputs:
    return ValidationInputs.from_recording(record("lbf-8x8-2p-2f", episodes=10), max_states=128)


def check(source: str, inputs: ValidationInputs, **options):
    candidate = load_credit_function(source)
    return run_checks(
        candidate.function, inputs.agents_q, inputs.states, CheckOptions(**options),
        trace=lambda exc: candidate_traceback(exc, source),
    )  # fmt: skip


def test_vdn_has_unit_weights_and_no_bias(lbf_inputs: ValidationInputs) -> None:
    result = check(VDN, lbf_inputs, require_monotonic=True)
    assert result.ok, result.message
    report = result.weights
    assert report.n_states == lbf_inputs.states.shape[0]
    assert all(a.mean == pytest.approx(1.0) and a.std == pytest.approx(0.0) for a in report.agents)
    assert report.weight_sum_mean == pytest.approx(2.0)
    assert report.bias_mean == pytest.approx(
        0.0, abs=1e-5
    ) and report.weight_state_variation == pytest.approx(0)
    assert report.linear_in_q_error < 1e-5


def test_softmax_weights_are_extracted_exactly(lbf_inputs: ValidationInputs) -> None:
    result = check(SOFTMAX, lbf_inputs)
    assert result.ok, result.message
    expected = torch.softmax(lbf_inputs.states[:, :2], dim=1) * 2
    assert torch.allclose(torch.tensor(result.weights.example_weights), expected[:16], atol=1e-5)
    for i, stats in enumerate(result.weights.agents):
        assert stats.mean == pytest.approx(float(expected[:, i].mean()), abs=1e-5)
        assert stats.min == pytest.approx(float(expected[:, i].min()), abs=1e-5)
    assert result.weights.weight_sum_mean == pytest.approx(2.0, abs=1e-5)


def test_state_dependent_bias_is_extracted(lbf_inputs: ValidationInputs) -> None:
    result = check(WITH_BIAS, lbf_inputs)
    assert result.ok, result.message
    bias = lbf_inputs.states[:, 0] * 0.5
    assert result.weights.bias_mean == pytest.approx(float(bias.mean()), abs=1e-4)
    assert result.weights.bias_std == pytest.approx(float(bias.std()), abs=1e-4)
    assert result.weights.linear_in_q_error < 1e-4


def test_lbf_level_weighting_follows_the_schema(lbf_inputs: ValidationInputs) -> None:
    schema = make_env("lbf-8x8-2p-2f").info.schema
    assert schema["agent_level"].slice == slice(4, 6)  # the layout LBF_LEVELS relies on
    result = check(LBF_LEVELS, lbf_inputs, require_monotonic=True)
    assert result.ok, result.message
    levels = schema.view(lbf_inputs.states, "agent_level")[..., 0] + 1e-6
    expected = levels / levels.sum(1, keepdim=True) * 2
    assert torch.allclose(torch.tensor(result.weights.example_weights), expected[:16], atol=1e-5)
    assert result.weights.weight_state_variation > 0.05  # it really depends on the state


def test_monotonicity_is_checked_only_when_asked(lbf_inputs: ValidationInputs) -> None:
    relaxed = check(NEGATIVE, lbf_inputs)
    assert relaxed.ok and all(a.share_negative == 1.0 for a in relaxed.weights.agents)
    strict = check(NEGATIVE, lbf_inputs, require_monotonic=True)
    assert strict.error_kind == ErrorKind.NOT_MONOTONIC
    assert strict.weights is not None  # the measurements still come back for the evaluator
    assert "agents [0, 1]" in strict.message


def test_a_function_nonlinear_in_q_is_flagged_but_valid(lbf_inputs: ValidationInputs) -> None:
    result = check(MAX_Q, lbf_inputs)
    assert result.ok
    assert result.weights.linear_in_q_error > 0.1
    assert all(0.0 < a.share_zero < 1.0 for a in result.weights.agents)  # argmax agent gets weight 1


def test_call_time_budget(lbf_inputs: ValidationInputs) -> None:
    slow = "def credit_assignment(agents_q, state):\n    for _ in range(200000):\n        pass\n" \
           "    return agents_q.sum(1, keepdim=True)\n"  # fmt: skip
    result = check(slow, lbf_inputs, call_time_budget_s=0.001)
    assert result.error_kind == ErrorKind.TIMEOUT and "budget" in result.message


def test_feedback_for_an_llm_names_the_line(lbf_inputs: ValidationInputs) -> None:
    source = "def credit_assignment(agents_q, state):\n    w = state[:, 100000]\n    return w\n"
    result = check(source, lbf_inputs)
    assert result.error_kind == ErrorKind.RUNTIME
    text = result.feedback()
    assert "IndexError" in text and "w = state[:, 100000]" in text and "qllm" not in text


def test_the_in_process_loader_keeps_gradients(lbf_inputs: ValidationInputs) -> None:
    fn = load_credit_function(SOFTMAX).function
    q = lbf_inputs.agents_q.clone().requires_grad_(True)
    fn(q, lbf_inputs.states).sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


AUGMENTED = """
def credit_assignment(agents_q, state):
    total = agents_q
    total += 1.0
    total *= 2.0
    total -= state[:, 0:1] * 0.0
    rows = state.tolist()
    first = rows[0][1:3]
    first += [7]
    return total.sum(dim=1, keepdim=True) + (len(first) - 3) + rows[-1][0] * 0.0
"""
"""Augmented assignments, subscripts and slices, as the restricted globals compute them."""


def test_augmented_assignments_make_new_values_and_subscripts_read_as_in_python(
    lbf_inputs: ValidationInputs,
) -> None:
    fn = load_credit_function(AUGMENTED).function
    q = lbf_inputs.agents_q.clone()

    q_tot = fn(q, lbf_inputs.states)

    assert torch.equal(q, lbf_inputs.agents_q)  # `total += 1` made a new tensor: the caller's is unchanged
    assert torch.equal(q_tot, ((q + 1.0) * 2.0).sum(dim=1, keepdim=True))
    with pytest.raises(TypeError, match="augmented assignment"):
        load_credit_function(AUGMENTED.replace("total *= 2.0", "total <<= 2")).function(q, lbf_inputs.states)


def test_valid_functions_pass_through_the_real_sandbox(lbf_inputs: ValidationInputs) -> None:
    with Sandbox() as sandbox:
        for source in (VDN, SOFTMAX, WITH_BIAS, LBF_LEVELS):
            result = sandbox.validate(source, lbf_inputs, CheckOptions(require_monotonic=True))
            assert result.ok, result.message
            assert result.backend == sandbox.backend.name and result.timings.total > 0
        in_process = check(SOFTMAX, lbf_inputs)
        isolated = sandbox.validate(SOFTMAX, lbf_inputs)
        assert isolated.weights == in_process.weights


def test_inputs_come_from_distinct_recorded_states() -> None:
    rec = record("matrix-climbing", episodes=3)
    inputs = ValidationInputs.from_recording(rec, max_states=64)
    assert inputs.states.shape[0] == torch.unique(rec.episodes.visited_states(), dim=0).shape[0] <= 10
    assert inputs.agents_q.shape == (inputs.states.shape[0], 2)
    assert inputs.agents_q.abs().max() <= max(1.0, float(rec.episodes.returns.abs().max()))


def test_load_validates_first_then_returns_a_usable_function(lbf_inputs: ValidationInputs) -> None:
    with Sandbox() as sandbox:
        candidate = sandbox.load(SOFTMAX, lbf_inputs)
        q = lbf_inputs.agents_q.clone().requires_grad_(True)
        candidate.function(q, lbf_inputs.states).sum().backward()
        assert q.grad is not None
        with pytest.raises(CandidateRejectedError, match="not_monotonic") as rejected:
            sandbox.load(NEGATIVE, lbf_inputs, CheckOptions(require_monotonic=True))
        assert rejected.value.result.error_kind == ErrorKind.NOT_MONOTONIC


@pytest.mark.parametrize("backend", ["unshare", "process"])
def test_weaker_backends_run_the_same_checks(backend: str, lbf_inputs: ValidationInputs) -> None:
    with Sandbox(backend=backend) as sandbox:
        assert sandbox.validate(LBF_LEVELS, lbf_inputs).ok
        assert sandbox.validate(NEGATIVE, lbf_inputs, CheckOptions(require_monotonic=True)).error_kind == (
            ErrorKind.NOT_MONOTONIC
        )
        # Only `process` shares the host's network: it reaches a listener on the host's loopback.
        server = socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]
        reached = sandbox.probe(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
        server.close()
        assert reached.ok is (backend == "process")


def test_a_runtime_error_shows_the_failing_line_and_the_values_there(lbf_inputs: ValidationInputs) -> None:
    """What a repair prompt gets: the failing line, then each variable's value (tensors by shape)."""
    source = (
        "def credit_assignment(agents_q, state):\n"
        "    levels = state[:, 4:6]\n"
        "    scale = 2.0\n"
        "    return (levels @ agents_q).sum(dim=1, keepdim=True) * scale\n"
    )
    result = check(source, lbf_inputs)
    assert not result.ok and result.error_kind == "runtime"
    assert "return (levels @ agents_q)" in result.traceback
    assert "levels = tensor of shape [" in result.traceback and "scale = 2.0 (float)" in result.traceback


def test_the_workers_warm_up_functions_are_valid_equal_weights_on_every_family(task: str) -> None:
    # A spare child runs these before its job; one that failed would warm up nothing, without a word.
    inputs = ValidationInputs.from_recording(record(task, episodes=2), max_states=32)
    for source in WARM_UP_SOURCES:
        result = check(source, inputs, require_monotonic=True)
        assert result.ok, result.message
        assert all(
            a.mean == pytest.approx(1.0) and a.std == pytest.approx(0.0) for a in result.weights.agents
        )
        assert result.weights.bias_mean == pytest.approx(0.0, abs=1e-5)
