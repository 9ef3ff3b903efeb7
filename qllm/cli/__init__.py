"""The ``qllm`` command line: one entry point, one sub-command per job, ``--help`` on every one.

Commands stay thin: they parse arguments, call library functions, and turn the library's own
exceptions (unknown task, bad recording, refused credit function) into a one-line error and exit
code 2 instead of a traceback. Each area has its own module; this one assembles them.
"""

from __future__ import annotations

from typing import Annotated

import typer

from qllm import __version__
from qllm.cli import data, evals, generate, llm, main_job, sandbox, sweep, tasks, trace, training
from qllm.cli.common import console

app = typer.Typer(
    name="qllm",
    help="LLM-written, training-free credit assignment for cooperative multi-agent RL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(tasks.app, name="tasks")
app.add_typer(sandbox.app, name="sandbox")
app.add_typer(llm.app, name="llm")
app.add_typer(trace.app, name="trace")
app.add_typer(evals.app, name="evals")
app.command("record")(data.record_command)
app.command("train")(training.train_command)
app.command("evaluate")(training.evaluate_command)
app.command("generate")(generate.generate_command)
app.command("run")(main_job.run_command)
app.command("sweep")(sweep.sweep_command)
app.command("report")(sweep.report_command)


def _version(value: bool) -> None:
    if value:
        console.print(f"qllm {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """LLM-written, training-free credit assignment for cooperative multi-agent RL."""


def main() -> None:
    app()
