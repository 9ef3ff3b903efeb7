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

# --- generation settings (`generate`, `run`, `sweep`, `evals run`) -----------------------------------

CoderOption = Annotated[
    str | None,
    typer.Option(
        help="Coder model: `local` (built-in) or PROVIDER:MODEL, e.g. openai:gpt-4o-mini. \\[default: local]"
    ),
]
EvaluatorOption = Annotated[
    str | None, typer.Option(help="Evaluator model, same form as --coder. \\[default: local]")
]
CoderBaseUrlOption = Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint for the coder.")]
EvaluatorBaseUrlOption = Annotated[
    str | None, typer.Option(help="OpenAI-compatible endpoint for the evaluator.")
]
ModeOption = Annotated[
    str | None,
    typer.Option(
        help="What the coder writes: `code` (one agent's weight, in a template), `spec` (a credit spec "
        "that qllm compiles), `function` (the whole batched credit_assignment(agents_q, state), as in the "
        "QLLM paper; for strong models), or `auto` (spec for the built-in local model, code otherwise). "
        "\\[default: auto]"
    ),
]
SelectionOption = Annotated[
    str | None,
    typer.Option(
        help="How each round's best candidate is chosen: `evaluator` (the evaluator LLM), `consensus` "
        "(the one whose measured weights the others agree with most), `trial` (the one that trains best "
        "in short trial trainings; ties within the noise broken as `auto` would) or `auto` (consensus "
        "for the built-in local evaluator, evaluator otherwise). \\[default: auto]"
    ),
]
TrialStepsOption = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="Environment steps of each trial training of a candidate and of equal weights (VDN); 0: no "
        "trials. \\[default: the task family's (matrix 1000, mpe 5000, lbf and rware 10000) with "
        "--selection trial, else 0]",
    ),
]
TrialSeedsOption = Annotated[
    int | None, typer.Option(min=1, help="Seeds per trial subject (the same for all). \\[default: 1]")
]
TrialExecutorOption = Annotated[
    str | None,
    typer.Option(
        help="Where trials train: `ray` (a local instance, one trial per core, or --address) or `inline` "
        "(this process). \\[default: ray]"
    ),
]
TrialTimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--trial-timeout",
        min=1.0,
        help="Seconds one trial may take before it ends as timed out. \\[default: 900]",
    ),
]
AddressOption = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address for the trials (default: local).")
]
CreditFloorOption = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Every agent's weight is at least this fraction of the equal share (0: no floor, 1: equal "
        "weights). \\[default: 0]",
    ),
]
CandidatesOption = Annotated[
    int | None, typer.Option("--candidates", "-k", min=1, help="K: candidates per round.")
]
RoundsOption = Annotated[int | None, typer.Option("--rounds", "-l", min=1, help="L: rounds.")]


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
