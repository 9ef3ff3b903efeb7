"""The coder-evaluator loop that writes a training-free credit assignment function (TFCAF) for a task.

``graph.py`` is the LangGraph state machine, ``state.py`` its typed state, ``context.py`` the settings
and the run-time context, ``messages.py`` the prompts each call sends, ``template.py`` the code template
the LLM's function is assembled into, ``llm.py`` the traced provider calls, ``run.py`` run folders,
checkpoints and resume, ``artifact.py`` what a run writes.
"""

from qllm.agents.context import GenerationSettings, SettingsError
from qllm.agents.run import GenerationOutcome, GenerationRun, Models, RunFolderError
from qllm.agents.state import RunStatus

__all__ = [
    "GenerationOutcome",
    "GenerationRun",
    "GenerationSettings",
    "Models",
    "RunFolderError",
    "RunStatus",
    "SettingsError",
]
