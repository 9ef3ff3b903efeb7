"""Run untrusted, LLM-written credit assignment functions safely, and judge them on real states.

Layers, outermost first: an isolation backend around a worker process (``backends.py``), per-job
rlimits in a forked child (``worker.py``), static checks and RestrictedPython with allow-listed
modules (``restricted.py``), then behavioural checks and weight extraction (``checks.py``). The host
side is :class:`Sandbox`; results are :class:`ValidationResult`.

Importing the package imports none of its modules: each name here is imported from its module when it is
first used (so ``import qllm.sandbox`` alone does not make ``qllm.sandbox.client`` and the like
attributes; import a module to use it). The sandbox worker (``python -m qllm.sandbox.worker``) imports
this package before its own code runs, and must import torch on its own terms (see
``worker._paths_resolved_once``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what static tools see; at run time, __getattr__ below imports each name
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

_MODULE_OF = {
    "CandidateError": "restricted",
    "CandidateFileError": "client",
    "CandidateRejectedError": "client",
    "CheckOptions": "checks",
    "CreditResult": "result",
    "CreditSession": "client",
    "ErrorKind": "result",
    "LoadedCandidate": "restricted",
    "Sandbox": "client",
    "SandboxLimits": "protocol",
    "SandboxUnavailableError": "backends",
    "ValidationInputs": "client",
    "ValidationResult": "result",
    "WeightReport": "result",
    "detect_backend": "backends",
    "load_credit_function": "restricted",
    "read_candidate_file": "client",
}
"""Each public name, and the module (of this package) that defines it."""

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


def __getattr__(name: str) -> object:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
