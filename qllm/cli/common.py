"""What every command shares: consoles, common options, and turning library errors into usage errors."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from qllm.envs import StateSchema, TaskNameError, TaskSpec, resolve_task
from qllm.envs.describe import SCHEMA_COLUMNS, schema_rows

console = Console()
notes = Console(stderr=True)  # progress notes stay off stdout, so `--json` output is clean
DEFAULT_TASK = "lbf-8x8-2p-2f"

TaskOption = Annotated[
    str,
    typer.Option(
        "--task",
        "-t",
        help="Task name (see `qllm tasks list`, plugins included), a raw env id, or module:factory for "
        "a task of your own.",
    ),
]
SeedOption = Annotated[int, typer.Option(help="Seed; episode e is reset with seed + e.")]
EpisodesOption = Annotated[int, typer.Option(min=1, help="Number of episodes to roll out.")]


def task_spec(name: str, param_hint: str = "--task") -> TaskSpec:
    try:
        return resolve_task(name)
    except TaskNameError as exc:
        raise typer.BadParameter(str(exc), param_hint=param_hint) from None


def schema_table(schema: StateSchema) -> Table:
    table = Table(title="global state", show_lines=True)
    for column in SCHEMA_COLUMNS:
        table.add_column(column, overflow="fold", ratio=3 if column == "meaning" else None)
    for row in schema_rows(schema):
        table.add_row(*row)
    return table
