"""The behavioural checks a credit function must pass, and the weights it implies.

Runs inside the isolated worker on a batch of real recorded states and Q-values drawn from a realistic
range. The checks run in order and stop at the first failure, so the reported error is the most basic
one (a function with the wrong shape is not also told it is non-deterministic):

1. the call returns at all (exceptions, memory), within the per-call time budget;
2. a tensor of shape ``[B, 1]`` and dtype float32, finite;
3. the inputs are unchanged;
4. the same inputs give the same output (determinism);
5. row ``b`` of the output depends only on row ``b`` of the inputs (batch permutation and splitting);
6. gradients reach ``agents_q`` and are finite;
7. optionally, every implied weight is non-negative (monotonicity, the IGM condition).

The implied weights ``w_i(s) = dQ_tot/dQ_i`` and bias ``b(s) = Q_tot - sum_i w_i Q_i`` come from
autograd; because rows are independent (check 5) one backward pass yields every row's weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from qllm.sandbox.restricted import ForbiddenError, OutputLimitExceeded
from qllm.sandbox.result import AgentWeightStats, ErrorKind, Timings, ValidationResult, WeightReport

ZERO = 1e-6
PAIRS = 4
"""Two-row batches in the row-independence check."""


@dataclass(frozen=True)
class CheckOptions:
    """What a candidate is checked against."""

    require_monotonic: bool = False
    """Reject any negative implied weight (needed for IGM-consistent greedy action selection)."""
    call_time_budget_s: float = 2.0
    """Longest one forward call on the validation batch may take."""
    tolerance: float = 1e-5
    """Absolute tolerance for determinism, row-independence and monotonicity comparisons."""
    example_states: int = 16
    """How many of the batch's first states get their weights reported one by one (``example_weights``):
    put states you want to inspect, such as crafted probes, first."""


class CheckError(Exception):
    """A failed check: the error kind, a one-line message, and the candidate's traceback if any."""

    def __init__(self, kind: ErrorKind, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.kind, self.message, self.traceback = kind, message, traceback


CreditFunction = Callable[[torch.Tensor, torch.Tensor], Any]
Tracer = Callable[[BaseException], str]
"""Turns an exception raised by the candidate into its trimmed traceback."""


@dataclass(frozen=True)
class Subject:
    """The function under test, with the batch it is tested on."""

    fn: CreditFunction
    agents_q: torch.Tensor
    states: torch.Tensor
    trace: Tracer

    @property
    def batch(self) -> int:
        return self.agents_q.shape[0]

    def invoke(self, agents_q: torch.Tensor, states: torch.Tensor) -> Any:
        """Call the candidate on copies of the inputs, turning its exceptions into :class:`CheckError`."""
        try:
            return self.fn(agents_q, states)
        except ForbiddenError as exc:
            raise CheckError(ErrorKind.FORBIDDEN, str(exc), self.trace(exc)) from None
        except MemoryError as exc:
            raise CheckError(ErrorKind.MEMORY, "ran out of memory", self.trace(exc)) from None
        except RecursionError as exc:
            raise CheckError(ErrorKind.RUNTIME, "maximum recursion depth exceeded", self.trace(exc)) from None
        except OutputLimitExceeded:
            raise
        except BaseException as exc:  # SystemExit and KeyboardInterrupt raised by the candidate included
            raise CheckError(_classify(exc), f"{type(exc).__name__}: {exc}", self.trace(exc)) from None

    def output(self, agents_q: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Call the candidate; insist on a finite float32 tensor of shape ``[B, 1]``, whatever the batch."""
        out = self.invoke(agents_q, states)
        _check_output(out, agents_q.shape[0])
        return out

    def output_and_weights(self, agents_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q_tot on the subject's states for ``agents_q``, and its gradient dQ_tot/dQ (the weights)."""
        q = agents_q.clone().requires_grad_(True)
        out = self.output(q, self.states.clone())
        if not out.requires_grad:
            raise CheckError(
                ErrorKind.NO_GRADIENT, "Q_tot does not depend differentiably on agents_q (no gradient)"
            )
        try:
            (grad,) = torch.autograd.grad(out.sum(), q, allow_unused=True)
        except RuntimeError as exc:
            raise CheckError(ErrorKind.NO_GRADIENT, f"backward pass failed: {exc}", self.trace(exc)) from None
        return out.detach(), torch.zeros_like(q) if grad is None else grad


def _classify(exc: BaseException) -> ErrorKind:
    text = str(exc).lower()
    if "alloc" in text and "memory" in text:
        return ErrorKind.MEMORY
    if "in-place operation" in text:  # autograd refuses in-place changes to agents_q
        return ErrorKind.INPUT_MUTATION
    return ErrorKind.RUNTIME


def run_checks(
    fn: CreditFunction,
    agents_q: torch.Tensor,
    states: torch.Tensor,
    options: CheckOptions,
    trace: Tracer,
) -> ValidationResult:
    """Validate ``fn`` on ``agents_q [B, n]`` and ``states [B, S]`` (B >= 2)."""
    subject = Subject(fn, agents_q, states, trace)
    timings = Timings()
    weights: WeightReport | None = None
    try:
        out, timings.call = _first_call(subject, options)
        _check_deterministic(subject, out, options)
        _check_rows_independent(subject, out, options)
        q_grad = _check_gradient(subject)
        weights = _weight_report(subject, out, q_grad, options.example_states)
        if options.require_monotonic:
            _check_monotonic(q_grad, options)
    except CheckError as failure:
        return ValidationResult.failure(
            failure.kind, failure.message, failure.traceback, weights=weights, timings=timings
        )
    return ValidationResult(ok=True, weights=weights, timings=timings)


def _first_call(subject: Subject, options: CheckOptions) -> tuple[torch.Tensor, float]:
    q, s = subject.agents_q.clone().requires_grad_(True), subject.states.clone()
    start = time.perf_counter()
    out = subject.invoke(q, s)
    elapsed = time.perf_counter() - start
    _check_output(out, subject.batch)
    for name, before, after in (("agents_q", subject.agents_q, q.detach()), ("state", subject.states, s)):
        if not torch.equal(before, after):
            raise CheckError(ErrorKind.INPUT_MUTATION, f"the function modified its input `{name}` in place")
    if elapsed > options.call_time_budget_s:
        raise CheckError(
            ErrorKind.TIMEOUT,
            f"one call on {subject.batch} states took {elapsed:.2f}s (budget {options.call_time_budget_s}s)",
        )
    return out.detach(), elapsed


def _check_output(out: Any, batch: int) -> None:
    if not isinstance(out, torch.Tensor):
        raise CheckError(
            ErrorKind.SHAPE, f"returned {type(out).__name__}, expected a tensor of shape [{batch}, 1]"
        )
    if tuple(out.shape) != (batch, 1):
        hint = " (add .unsqueeze(-1) or keepdim=True)" if tuple(out.shape) == (batch,) else ""
        raise CheckError(
            ErrorKind.SHAPE,
            f"returned shape {list(out.shape)}, expected [{batch}, 1] for a batch of {batch}{hint}",
        )
    if out.dtype != torch.float32:
        raise CheckError(ErrorKind.DTYPE, f"returned dtype {out.dtype}, expected torch.float32")
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).sum())
        raise CheckError(ErrorKind.NON_FINITE, f"{bad} of {batch} outputs are NaN or infinite")


def _check_gradient(subject: Subject) -> torch.Tensor:
    _, grad = subject.output_and_weights(subject.agents_q)
    if not grad.abs().gt(0).any():
        raise CheckError(
            ErrorKind.NO_GRADIENT, "the gradient of Q_tot with respect to agents_q is zero everywhere"
        )
    if not torch.isfinite(grad).all():
        raise CheckError(
            ErrorKind.NON_FINITE, "the gradient with respect to agents_q has NaN or infinite values"
        )
    return grad


def _close(a: torch.Tensor, b: torch.Tensor, options: CheckOptions) -> bool:
    return torch.allclose(a, b, atol=options.tolerance, rtol=1e-4)


def _check_deterministic(subject: Subject, out: torch.Tensor, options: CheckOptions) -> None:
    again = subject.output(subject.agents_q.clone(), subject.states.clone())
    if not _close(again.detach(), out, options):
        raise CheckError(
            ErrorKind.NON_DETERMINISTIC, "two calls on the same inputs returned different values"
        )


def _check_rows_independent(subject: Subject, out: torch.Tensor, options: CheckOptions) -> None:
    """The same rows must give the same results in any batch: reversed, halved, and in small pairs
    (which change batch statistics such as a max over the batch that a full reversal keeps)."""
    batch = subject.batch
    reversed_rows = torch.arange(batch - 1, -1, -1)
    sub_batches = [reversed_rows, torch.arange(batch // 2)]
    step = max(1, batch // PAIRS)
    sub_batches += [torch.tensor([i, (i + batch // 2 + 1) % batch]) for i in range(0, batch, step)]
    for rows in sub_batches:
        result = subject.output(subject.agents_q[rows].clone(), subject.states[rows].clone()).detach()
        if not _close(result, out[rows], options):
            raise CheckError(
                ErrorKind.ROW_COUPLING,
                "a row's Q_tot changed when other rows of the batch changed: compute each row from its own "
                "agents_q and state only (no mean/softmax/normalisation over dim 0)",
            )


def _check_monotonic(q_grad: torch.Tensor, options: CheckOptions) -> None:
    negative = q_grad < -options.tolerance
    if negative.any():
        agents = sorted({int(i) for i in negative.nonzero()[:, 1]})
        raise CheckError(
            ErrorKind.NOT_MONOTONIC,
            f"weights dQ_tot/dQ_i are negative for agents {agents} in {int(negative.any(1).sum())} of "
            f"{q_grad.shape[0]} states (monotonicity requires w_i(s) >= 0)",
        )


def _weight_report(subject: Subject, out: torch.Tensor, w: torch.Tensor, examples: int) -> WeightReport:
    q = subject.agents_q
    bias = out[:, 0] - (w * q).sum(1)
    # Redraw the Q-values: a function of the form w(s)·Q + b(s) keeps the same weights and bias.
    other_q = q.flip(1) * 0.5 + 0.25
    other_out, other_w = subject.output_and_weights(other_q)
    other_bias = other_out[:, 0] - (other_w * other_q).sum(1)
    agents = [
        AgentWeightStats(
            agent=i,
            mean=float(w[:, i].mean()),
            std=float(w[:, i].std()),
            min=float(w[:, i].min()),
            max=float(w[:, i].max()),
            share_zero=float((w[:, i].abs() < ZERO).float().mean()),
            share_negative=float((w[:, i] < -ZERO).float().mean()),
        )
        for i in range(w.shape[1])
    ]
    return WeightReport(
        n_states=w.shape[0],
        agents=agents,
        bias_mean=float(bias.mean()),
        bias_std=float(bias.std()),
        weight_state_variation=float(w.std(0).mean()),
        weight_sum_mean=float(w.sum(1).mean()),
        linear_in_q_error=float((bias - other_bias).abs().max() + (w - other_w).abs().max()),
        example_weights=[[round(float(v), 6) for v in row] for row in w[:examples]],
    )


def compute_credit(
    fn: CreditFunction, states: torch.Tensor, n_agents: int, require_monotonic: bool, trace: Tracer
) -> torch.Tensor:
    """Each state's credit under a function linear in Q: ``[R, n_agents + 1]``, the weights
    ``w(s) = dQ_tot/dQ`` and the bias ``b(s) = Q_tot(Q = 0)``; :class:`CheckError` if the function fails,
    returns the wrong shape, or gives non-finite (or, with ``require_monotonic``, negative) weights."""
    subject = Subject(fn, torch.zeros(states.shape[0], n_agents), states, trace)
    bias, weights = subject.output_and_weights(subject.agents_q)
    if not torch.isfinite(weights).all():
        bad = int((~torch.isfinite(weights)).any(1).sum())
        raise CheckError(
            ErrorKind.NON_FINITE, f"the weights are NaN or infinite in {bad} of {subject.batch} states"
        )
    if require_monotonic:
        _check_monotonic(weights, CheckOptions())
    return torch.cat([weights, bias], dim=1)
