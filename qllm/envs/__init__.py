"""Cooperative multi-agent environments behind one contract, each with a described global state.

``make_env("lbf-2s-10x10-3p-3f")`` builds any task; ``resolve_task`` gives its spec without building it.
"""

from qllm.envs.contract import EnvInfo, MultiAgentEnv, TimeStep
from qllm.envs.schema import StateField, StateSchema
from qllm.envs.tasks import (
    TaskFamily,
    TaskNameError,
    TaskSpec,
    all_task_names,
    families,
    make_env,
    resolve_task,
    task_info,
)

__all__ = [
    "EnvInfo",
    "MultiAgentEnv",
    "StateField",
    "StateSchema",
    "TaskFamily",
    "TaskNameError",
    "TaskSpec",
    "TimeStep",
    "all_task_names",
    "families",
    "make_env",
    "resolve_task",
    "task_info",
]
