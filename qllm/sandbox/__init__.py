"""Run untrusted, LLM-written credit assignment functions safely, and judge them on real states.

Layers, outermost first: an isolation backend around a worker process (``backends.py``), per-job
rlimits in a forked child (``worker.py``), static checks and RestrictedPython with allow-listed
modules (``restricted.py``), then behavioural checks and weight extraction (``checks.py``). The host
side is :class:`Sandbox`; results are :class:`ValidationResult`.
"""

from qllm.sandbox.backends import SandboxUnavailableError, detect_backend
from qllm.sandbox.checks import CheckOptions
from qllm.sandbox.client import (
    CandidateFileError,
    CandidateRejectedError,
    CreditSession,
    Sandbox,
    ValidationInputs,
    read_candidate_file,
)
from qllm.sandbox.protocol import SandboxLimits
from qllm.sandbox.restricted import CandidateError, LoadedCandidate, load_credit_function
from qllm.sandbox.result import CreditResult, ErrorKind, ValidationResult, WeightReport

__all__ = [
    "CandidateError",
    "CandidateFileError",
    "CandidateRejectedError",
    "CheckOptions",
    "CreditResult",
    "CreditSession",
    "ErrorKind",
    "LoadedCandidate",
    "Sandbox",
    "SandboxLimits",
    "SandboxUnavailableError",
    "ValidationInputs",
    "ValidationResult",
    "WeightReport",
    "detect_backend",
    "load_credit_function",
    "read_candidate_file",
]
