"""The coder-evaluator loop that writes a training-free credit assignment function (TFCAF) for a task.

``graph.py`` is the LangGraph state machine, ``state.py`` its typed state, ``context.py`` the settings
and the run-time context, ``messages.py`` the prompts each call sends, ``template.py`` the code template
the LLM's function is assembled into, ``llm.py`` the traced provider calls, ``run.py`` run folders,
checkpoints and resume, ``artifact.py`` what a run writes.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qllm.agents.context import GenerationSettings, SettingsError
    from qllm.agents.run import GenerationOutcome, GenerationRun, Models, RunFolderError
    from qllm.agents.state import RunStatus

# Imported when first asked for: the trainer reads credit specs (``spec.py``, ``template.py``) and must
# not import LangGraph and the providers' clients for that.
_EXPORTS = {
    "GenerationOutcome": "qllm.agents.run",
    "GenerationRun": "qllm.agents.run",
    "GenerationSettings": "qllm.agents.context",
    "Models": "qllm.agents.run",
    "RunFolderError": "qllm.agents.run",
    "RunStatus": "qllm.agents.state",
    "SettingsError": "qllm.agents.context",
}
__all__ = [
    "GenerationOutcome",
    "GenerationRun",
    "GenerationSettings",
    "Models",
    "RunFolderError",
    "RunStatus",
    "SettingsError",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
