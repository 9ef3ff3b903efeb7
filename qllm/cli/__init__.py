"""The ``qllm`` command line: one entry point, one sub-command per job, ``--help`` on every one.

Commands stay thin: they parse arguments, call library functions, and turn the library's own
exceptions into a one-line error instead of a traceback: exit code 2 when what was typed or named
cannot be used (unknown task, bad recording, a refused credit file given with ``--tfcaf``), 1 when the
work itself failed (see :mod:`qllm.cli.errors`). Each area has its own module; this one assembles them.

A process that runs one command imports only that command's module: ``qllm train`` never loads the
LLM stack (LangGraph, LangChain), Ray or the report's plotting, which would add seconds to every run.
"""

from __future__ import annotations

import functools
import gc
import importlib
import sys
from collections.abc import Callable, Iterable
from typing import Annotated, Any

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
    "compare": ("qllm.cli.sweep", "compare_command"),
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
            for command in target.registered_commands:
                if command.callback is not None and not hasattr(command.callback, "__wrapped__"):
                    command.callback = _reporting_plugin_errors(command.callback)
            app.add_typer(target, name=name)
        else:
            app.command(name)(_reporting_plugin_errors(target))
    return app


def _reporting_plugin_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command``, ending in one line and exit code 1 when a plugged-in task breaks while it runs (its
    environment fails to build or step, or its states leave the declared schema): that is the plugin's
    failure, whichever command met it. A bad task *name* is caught earlier, as a usage error."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Exception as exc:
            # Looked up, not imported: the task registry imports torch, which `qllm llm` never needs. A
            # process that never imported it cannot have met a plugin's error.
            tasks = sys.modules.get("qllm.envs.tasks")
            if tasks is None or not isinstance(exc, tasks.TaskPluginError):
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return run


def __getattr__(name: str) -> typer.Typer:
    if name == "app":  # the whole app, for tests and embedding: `from qllm.cli import app`
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """The ``qllm`` executable: run one command, then end the process."""
    command = sys.argv[1] if len(sys.argv) > 1 else None
    try:
        build_app([command] if command in COMMANDS else COMMANDS)()
    finally:
        _skip_the_last_collections()


def _skip_the_last_collections() -> None:
    """Keep the interpreter's shutdown from walking every object alive once the command is done.

    Shutting down, Python collects garbage over every object the process imported (torch's are millions):
    0.8-0.9 s of a training run's exit here, 0.2 s with them frozen out of the collector (measured,
    three runs each way). Frozen objects are still freed by reference counting and atexit handlers still
    run; only cycles left at exit go uncollected, and everything that writes (files, loggers, child
    processes) is closed by the commands themselves. Tests and embedding code call the app, which keeps
    its collector; a script that calls ``main()`` and goes on (``reports/training-speed/phases.py``) runs
    on with the objects of then frozen, which only costs it memory held by their cycles.
    """
    gc.freeze()
