"""Read a training-free credit assignment function (TFCAF) file for training, and validate it in the sandbox.

A file that is exactly qllm's compilation of the credit spec in its header needs no sandbox: its
weights are computed from the spec (:attr:`TFCAFFile.spec`). Any other file is validated in the isolated
sandbox against real recorded states of the task (:func:`validate_tfcaf`). The verdict says what training
needs: a function linear in Q (every function qllm writes) trains on the weights and bias the sandbox
computes per state, and never runs in the trainer's process; any other function is loaded into this
process under RestrictedPython, with a per-call time budget.

A file may declare what it was written for in a first-line header,
``# qllm-tfcaf: {"task": "lbf-8x8-2p-2f", "state_dim": 24}``; a mismatch with the task is refused before
anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qllm.agents.spec import SpecWeights, compiled_spec
from qllm.agents.template import HeaderError, NamedState, read_header
from qllm.envs import EnvInfo
from qllm.envs.recording import record
from qllm.sandbox import (
    CandidateFileError,
    CheckOptions,
    LoadedCandidate,
    Sandbox,
    ValidationInputs,
    ValidationResult,
    load_credit_function,
    read_candidate_file,
)

VALIDATION_EPISODES = 20
LINEAR_TOLERANCE = 1e-3
"""Largest ``linear_in_q_error`` (the change of the implied weights and bias when the Q-values are redrawn)
of a function taken as linear in Q: float32 rounding of a truly linear function stays far below it."""


class TFCAFError(ValueError):
    """A credit-function file that cannot be used for this task."""


@dataclass(frozen=True)
class ValidatedTFCAF:
    """A credit-function file that passed the sandbox's checks on the task, with the sandbox's verdict."""

    path: Path
    source: str
    verdict: ValidationResult

    @property
    def linear_in_q(self) -> bool:
        """``Q_tot = w(s) . Q + b(s)`` as measured: then training needs only each state's ``(w, b)``,
        computed in the sandbox (:mod:`qllm.rl.credit`), never the function in this process."""
        weights = self.verdict.weights
        return weights is not None and weights.linear_in_q_error <= LINEAR_TOLERANCE

    def load_restricted(self) -> LoadedCandidate:
        """The function in this process, under the restricted globals: for functions not linear in Q."""
        return load_credit_function(self.source)


@dataclass(frozen=True)
class TFCAFFile:
    """A credit-function file read for a task, and the credit spec it compiles, if it is one."""

    path: Path
    source: str
    spec: SpecWeights | None
    """The weights of the credit spec the file is byte for byte qllm's compilation of (its credit comes
    from the spec: no sandbox); None for any other file, which the sandbox validates."""


def read_tfcaf(path: Path, info: EnvInfo) -> TFCAFFile:
    """The credit-function file at ``path``; :class:`TFCAFError` if it cannot be read or its header says
    it was written for another state size."""
    try:
        source = read_candidate_file(path)
        header = read_header(source)
    except (CandidateFileError, HeaderError) as exc:
        raise TFCAFError(str(exc)) from None
    declared = header.get("state_dim", info.state_dim)
    if declared != info.state_dim:
        raise TFCAFError(
            f"{path} was written for a state of size {declared} "
            f"(task {header.get('task', '?')}), but {info.task} has state size {info.state_dim}"
        )
    return TFCAFFile(path, source, compiled_spec(source, NamedState.for_task(info)))


def load_tfcaf(
    path: Path, info: EnvInfo, monotonic: bool = True, sandbox: Sandbox | None = None
) -> ValidatedTFCAF:
    """Validate the credit function at ``path`` on ``info.task``: :func:`validate_tfcaf`."""
    return validate_tfcaf(read_tfcaf(path, info), info, monotonic, sandbox)


def validate_tfcaf(
    file: TFCAFFile, info: EnvInfo, monotonic: bool = True, sandbox: Sandbox | None = None
) -> ValidatedTFCAF:
    """Validate ``file`` on ``info.task`` in ``sandbox`` (left open, so that the trainer computes the
    function's credit in the worker that validated it: a gVisor worker takes about 10 s to start), or in
    a sandbox of its own; else :class:`TFCAFError`."""
    inputs = ValidationInputs.from_recording(record(info.task, VALIDATION_EPISODES, seed=0))
    options = CheckOptions(require_monotonic=monotonic)
    if sandbox is not None:
        verdict = sandbox.validate(file.source, inputs, options)
    else:
        with Sandbox() as own:
            verdict = own.validate(file.source, inputs, options)
    if not verdict.ok:
        raise TFCAFError(f"{file.path} failed validation on {info.task}: {verdict.feedback()}")
    return ValidatedTFCAF(path=file.path, source=file.source, verdict=verdict)
