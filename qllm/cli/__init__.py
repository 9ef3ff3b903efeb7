"""The ``qllm`` command line: one entry point, one sub-command per job, ``--help`` on every one.

Commands stay thin: they parse arguments, call library functions, and turn the library's own
exceptions (unknown task, bad recording, refused credit function) into a one-line error and exit
code 2 instead of a traceback. Each area has its own module; this one assembles them.

A process that runs one command imports only that command's module: ``qllm train`` never loads the
LLM stack (LangGraph, LangChain), Ray or the report's plotting, which would add seconds to every run.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from typing import Annotated

import typer

from qllm import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "tasks": ("qllm.cli.tasks", "app"),
    "record": ("qllm.cli.data", "record_command"),
    "sandbox": ("qllm.cli.sandbox", "app"),
    "train": ("qllm.cli.training", "train_command"),
    "evaluate": ("qllm.cli.training", "evaluate_command"),
    "generate": ("qllm.cli.generate", "generate_command"),
    "run": ("qllm.cli.main_job", "run_command"),
    "sweep": ("qllm.cli.sweep", "sweep_command"),
    "report": ("qllm.cli.sweep", "report_command"),
    "trace": ("qllm.cli.trace", "app"),
    "evals": ("qllm.cli.evals", "app"),
    "llm": ("qllm.cli.llm", "app"),
}
"""Every sub-command: its name -> (module, the typer app of a command group or the command function)."""


def _version(value: bool) -> None:
    if value:
        print(f"qllm {__version__}")
        raise typer.Exit


def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """LLM-written, training-free credit assignment for cooperative multi-agent RL."""


def build_app(names: Iterable[str] = COMMANDS) -> typer.Typer:
    """The ``qllm`` app with the sub-commands ``names`` (all of them by default)."""
    app = typer.Typer(
        name="qllm",
        help="LLM-written, training-free credit assignment for cooperative multi-agent RL.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)
    for name in names:
        module, attribute = COMMANDS[name]
        target = getattr(importlib.import_module(module), attribute)
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)
    return app


def __getattr__(name: str) -> typer.Typer:
    if name == "app":  # the whole app, for tests and embedding: `from qllm.cli import app`
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else None
    build_app([command] if command in COMMANDS else COMMANDS)()
