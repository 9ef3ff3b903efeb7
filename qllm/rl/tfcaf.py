"""Load a training-free credit assignment function (TFCAF) file for training, through the sandbox.

The file is validated in the isolated sandbox against real recorded states of the task, and only then
loaded into this process (under RestrictedPython) by :meth:`qllm.sandbox.Sandbox.load`: nothing else
ever executes generated code. A file may declare what it was written for in a first-line header,
``# qllm-tfcaf: {"task": "lbf-8x8-2p-2f", "state_dim": 24}``; a mismatch with the task is refused
before anything runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qllm.envs import EnvInfo
from qllm.envs.recording import record
from qllm.sandbox import (
    CandidateFileError,
    CandidateRejectedError,
    CheckOptions,
    Sandbox,
    ValidationInputs,
    read_candidate_file,
)
from qllm.sandbox.restricted import LoadedCandidate

HEADER = "# qllm-tfcaf:"
STATE_LINEAR_TEMPLATES = frozenset({"agent-weight/v1", "credit-spec/v1"})
"""Templates (see :mod:`qllm.agents.template`) whose functions are ``Q_tot = w(s) . Q + b(s)`` by
construction: their weights can be computed once per state (:class:`qllm.rl.mixers.StateCredit`)."""
VALIDATION_EPISODES = 20


class TFCAFError(ValueError):
    """A credit-function file that cannot be used for this task."""


def read_header(source: str) -> dict[str, Any]:
    first = source.lstrip().splitlines()[0] if source.strip() else ""
    if not first.startswith(HEADER):
        return {}
    try:
        header = json.loads(first.removeprefix(HEADER))
    except ValueError as exc:
        raise TFCAFError(f"malformed {HEADER} header: {exc}") from None
    return header if isinstance(header, dict) else {}


def is_state_linear(path: Path) -> bool:
    """Whether the file's header names a template whose functions are linear in Q (checked in training)."""
    try:
        return read_header(read_candidate_file(path)).get("template") in STATE_LINEAR_TEMPLATES
    except (CandidateFileError, TFCAFError):
        return False


def load_tfcaf(path: Path, info: EnvInfo, monotonic: bool = True) -> LoadedCandidate:
    """Validate the credit function at ``path`` on ``info.task``, then load it; else :class:`TFCAFError`."""
    try:
        source = read_candidate_file(path)
    except CandidateFileError as exc:
        raise TFCAFError(str(exc)) from None
    header = read_header(source)
    if "state_dim" in header and int(header["state_dim"]) != info.state_dim:
        raise TFCAFError(
            f"{path} was written for a state of size {header['state_dim']} "
            f"(task {header.get('task', '?')}), but {info.task} has state size {info.state_dim}"
        )
    inputs = ValidationInputs.from_recording(record(info.task, VALIDATION_EPISODES, seed=0))
    with Sandbox() as sandbox:
        try:
            return sandbox.load(source, inputs, CheckOptions(require_monotonic=monotonic))
        except CandidateRejectedError as rejected:
            raise TFCAFError(
                f"{path} failed validation on {info.task}: {rejected.result.feedback()}"
            ) from None
