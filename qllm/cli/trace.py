"""`qllm trace show|export`: read a generation run's trace in the terminal, or export it as one HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from qllm.agents import RunFolderError
from qllm.agents.trace_html import export_html
from qllm.agents.trace_view import export_json, print_trace
from qllm.cli.common import console
from qllm.cli.errors import USAGE, error_exit

app = typer.Typer(
    help="Inspect a generation run: its rounds, candidates, LLM calls and decisions.", no_args_is_help=True
)

RunArgument = Annotated[
    Path, typer.Argument(help="A generation run folder (the one holding trace.jsonl).", show_default=False)
]


def _bad_run(exc: RunFolderError) -> typer.Exit:
    return error_exit(str(exc), USAGE)  # a folder the person named that is not a readable run


@app.command("show")
def trace_show(
    run: RunArgument,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also print every prompt and reply.")
    ] = False,
) -> None:
    """Print a run: a header, then per round a table and the evaluator's decision.

    The table lists each candidate's attempts, final verdict, error or measured weights, tokens and
    latency; the decision comes with the evaluator's critiques and tips.
    """
    try:
        print_trace(run, console, verbose=verbose)
    except RunFolderError as exc:
        raise _bad_run(exc) from None


@app.command("export")
def trace_export(
    run: RunArgument,
    html: Annotated[
        bool,
        typer.Option(
            "--html/--no-html",
            help="One self-contained HTML page (default), or with --no-html the structured summary as JSON.",
        ),
    ] = True,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write (default: trace.html or trace_summary.json in the run folder).",
        ),
    ] = None,
) -> None:
    """Export a run for reading elsewhere: every candidate, diff, LLM call, decision and the final weights."""
    try:
        path = export_html(run, output) if html else export_json(run, output)
    except RunFolderError as exc:
        raise _bad_run(exc) from None
    console.print(Text(f"wrote {path}"))
