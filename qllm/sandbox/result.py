"""Typed results of validating a credit assignment function.

A result always says *whether* the candidate is usable (``ok``), and if not, *why* in three forms: a
machine-readable :class:`ErrorKind`, a one-line ``message`` and a trimmed ``traceback`` short enough to
hand back to an LLM for repair. When the function ran, the measurements a person or an evaluator LLM
reads come with it: the implied per-agent weights and bias, and how they vary with the state.

These are pydantic models because results cross a process boundary as JSON produced by untrusted
code's host process: parsing them validates every field.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

import numpy as np
from pydantic import BaseModel, Field

from qllm.sandbox.protocol import decode_array


class ErrorKind(StrEnum):
    """Why a candidate was rejected. Values are stable: they are stored in traces and eval results."""

    SYNTAX = "syntax"
    """The file is not valid Python."""
    FORBIDDEN = "forbidden"
    """A construct the sandbox does not allow (dunder access, exec, open, global, ...)."""
    IMPORT = "import"
    """An import outside the allow-list (only ``torch``, ``torch.nn.functional`` and ``math``)."""
    CONTRACT = "contract"
    """No callable ``credit_assignment(agents_q, state)`` at the top level of the file."""
    RUNTIME = "runtime"
    """An exception while running (including a forbidden attribute such as ``torch.load``)."""
    SHAPE = "shape"
    """The result is not a tensor of shape ``[B, 1]``."""
    DTYPE = "dtype"
    """The result is not a float32 tensor."""
    NON_FINITE = "non_finite"
    """NaN or infinity in the result or its gradient."""
    NO_GRADIENT = "no_gradient"
    """The result does not depend differentiably on ``agents_q``."""
    ROW_COUPLING = "row_coupling"
    """A batch row's result depends on other rows (e.g. normalising over the batch)."""
    NON_DETERMINISTIC = "non_deterministic"
    """Two calls on the same inputs give different results."""
    INPUT_MUTATION = "input_mutation"
    """The function modified ``agents_q`` or ``state`` in place."""
    NOT_MONOTONIC = "not_monotonic"
    """A negative weight dQ_tot/dQ_i where monotonicity (the IGM condition) was required."""
    TIMEOUT = "timeout"
    """Over the wall-clock or CPU budget."""
    MEMORY = "memory"
    """Over the memory budget."""
    OUTPUT_LIMIT = "output_limit"
    """Printed or wrote more than the output budget."""
    CRASHED = "crashed"
    """The sandboxed process died (a signal, or an exit that was not the sandbox's own)."""
    SANDBOX = "sandbox"
    """The sandbox itself failed; the candidate was not judged."""


class AgentWeightStats(BaseModel):
    """Statistics of one agent's implied weight w_i(s) = dQ_tot/dQ_i over the validation states."""

    agent: int
    mean: float
    std: float
    min: float
    max: float
    share_zero: float = Field(description="fraction of states where |w_i| < 1e-6")
    share_negative: float = Field(description="fraction of states where w_i < -1e-6")


class WeightReport(BaseModel):
    """What the candidate does as credit assignment, measured on real states."""

    n_states: int
    agents: list[AgentWeightStats]
    bias_mean: float
    bias_std: float
    weight_state_variation: float = Field(
        description="mean over agents of the std of w_i across states: 0 means the weights ignore the state"
    )
    weight_sum_mean: float = Field(description="mean over states of sum_i w_i (VDN has n_agents)")
    linear_in_q_error: float = Field(
        description="max change of the implied bias when Q-values are redrawn: 0 for Q_tot = w(s)·Q + b(s)"
    )
    example_weights: list[list[float]] = Field(description="implied weights on the first few states")


class Timings(BaseModel):
    """Where the time went, in seconds."""

    total: float = 0.0
    """Host side, from submitting the job to parsing the result."""
    load: float = 0.0
    """Compiling and executing the module inside the sandbox."""
    call: float = 0.0
    """One forward call on the whole validation batch."""


class Verdict(BaseModel):
    """What every sandbox job answers: whether it succeeded and, if not, why, in three forms."""

    ok: bool
    error_kind: ErrorKind | None = None
    message: str = ""
    """One line, for people and LLMs."""
    traceback: str = ""
    """Only the frames in the candidate's own code, with the offending source lines."""
    printed: str = ""
    """What the candidate printed (truncated)."""
    backend: str = ""
    """Isolation backend that ran it: bwrap, docker, unshare or process."""

    @classmethod
    def failure(cls, kind: ErrorKind, message: str, traceback: str = "", **extra: object) -> Self:
        return cls(ok=False, error_kind=kind, message=message, traceback=traceback, **extra)

    def feedback(self) -> str:
        """A compact text for an LLM: the verdict, the message, and the trimmed traceback."""
        if self.ok:
            return "The function passed every check."
        parts = [f"Check failed: {self.error_kind.value if self.error_kind else 'unknown'}: {self.message}"]
        if self.traceback:
            parts.append(self.traceback)
        return "\n".join(parts)


class ValidationResult(Verdict):
    """The verdict on one candidate file."""

    weights: WeightReport | None = None
    """Present when the function ran to the end (also when a later check such as monotonicity failed)."""
    timings: Timings = Field(default_factory=Timings)


class EncodedArray(BaseModel):
    """A float32 array as it crosses the process boundary: its shape and base64 of its raw bytes."""

    shape: list[int]
    data: str

    def to_array(self) -> np.ndarray:
        return decode_array(self.model_dump())


class CreditResult(Verdict):
    """The per-state credit of a function linear in Q, ``Q_tot = w(s) . Q + b(s)``, on a batch of states."""

    credit: EncodedArray | None = None
    """``[R, n_agents + 1]``: each state's weights ``w_1..w_n`` and bias ``b``; present when ``ok``."""
    session: int | None = None
    """The worker's id of the credit session this answer opened (:class:`~qllm.sandbox.CreditSession`)."""
