"""Render a task and its state schema as Markdown, for people (``qllm tasks show``) and saved runs.

The text is generated from the :class:`~qllm.envs.tasks.TaskSpec` and the
:class:`~qllm.envs.contract.EnvInfo`, never written by hand per task, so it cannot drift from the
simulator. The LLM task prompts are built from the same two objects.
"""

from __future__ import annotations

import torch

from qllm.envs.contract import EnvInfo
from qllm.envs.schema import StateSchema
from qllm.envs.tasks import BUILT_IN, TaskSpec

SCHEMA_COLUMNS = ("field", "slice", "shape (entities x features)", "features", "range", "meaning")


def schema_rows(schema: StateSchema) -> list[tuple[str, ...]]:
    """One row of :data:`SCHEMA_COLUMNS` per field, for any table renderer."""
    return [
        (
            f.name,
            f"{f.slice.start}:{f.slice.stop}",
            f"{f.count} {f.entity} x {len(f.features)}",
            ", ".join(f.features),
            f.range_text(),
            f.meaning,
        )
        for f in schema
    ]


def schema_table(schema: StateSchema) -> str:
    """The state layout as a Markdown table: one row per field."""
    lines = ["| " + " | ".join(SCHEMA_COLUMNS) + " |", "|" + "---|" * len(SCHEMA_COLUMNS)]
    lines += ["| `" + row[0] + "` | " + " | ".join(row[1:]) + " |" for row in schema_rows(schema)]
    return "\n".join(lines)


def describe_task(spec: TaskSpec, info: EnvInfo, with_schema: bool = True) -> str:
    """A complete Markdown description of a task (the state table only when ``with_schema``)."""
    opponent = f"- **Opponent:** {spec.opponent}\n" if spec.opponent else ""
    return (
        f"# {spec.name}\n\n"
        f"{spec.description}\n\n"
        f"- **Family:** {spec.family}" + ("" if spec.origin == BUILT_IN else f" ({spec.origin})") + "\n"
        f"- **Team:** {spec.team} ({info.n_agents} agents: {', '.join(info.agent_names)})\n"
        f"- **Team reward:** {spec.reward}\n"
        f"{opponent}"
        f"- **Actions ({info.n_actions} per agent):** "
        + ", ".join(f"{i} {name}" for i, name in enumerate(info.action_names))
        + "\n"
        f"- **Observation:** {info.obs_dim} numbers per agent\n"
        f"- **Episode limit:** {info.episode_limit} steps\n"
        f"- **Global state:** {info.state_dim} numbers"
        + (f", laid out as follows\n\n{schema_table(info.schema)}\n" if with_schema else "\n")
    )


def state_statistics_table(schema: StateSchema, states: torch.Tensor) -> str:
    """Observed minimum, mean and maximum of every field over ``states`` ``[N, S]``, as Markdown."""
    lines = ["| field | declared range | observed min | mean | max |", "|---|---|---|---|---|"]
    for f in schema:
        values = schema.view(states, f.name)
        lines.append(
            f"| `{f.name}` | {f.range_text()} | {values.min().item():.3g} | {values.mean().item():.3g} "
            f"| {values.max().item():.3g} |"
        )
    return "\n".join(lines)
