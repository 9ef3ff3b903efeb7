"""`qllm sandbox check`: validate a credit-function file against real states of a task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from qllm.cli.common import TaskOption, console, notes, task_spec
from qllm.cli.errors import FAILURE, error_exit, usage_error
from qllm.envs import TaskSpec
from qllm.envs.recording import Recording, RecordingError, load_recording, record
from qllm.sandbox import (
    CandidateFileError,
    CheckOptions,
    Sandbox,
    SandboxUnavailableError,
    ValidationInputs,
    ValidationResult,
    read_candidate_file,
)

app = typer.Typer(help="Validate credit functions in the sandbox.", no_args_is_help=True)


def _read_candidate(path: Path) -> str:
    try:
        return read_candidate_file(path)
    except CandidateFileError as exc:
        raise usage_error(str(exc), param_hint="FILE") from None


def _validation_recording(spec: TaskSpec, states: Path | None, episodes: int) -> Recording:
    if states is None:
        notes.print(f"[dim]no --states given: recording {episodes} random episodes of {spec.name}[/dim]")
        return record(spec.name, episodes, seed=0)
    try:
        recording = load_recording(states)
    except RecordingError as exc:
        raise usage_error(str(exc), param_hint="--states") from None
    if recording.info.task != spec.name:
        raise usage_error(
            f"{states} records task {recording.info.task!r}, not {spec.name!r}", param_hint="--states"
        )
    return recording


def _print_verdict(result: ValidationResult, path: Path) -> None:
    if result.ok:
        console.print(
            f"[bold green]PASS[/bold green] {path} ({result.backend} sandbox, {result.timings.total:.2f}s)"
        )
    else:
        kind = result.error_kind.value if result.error_kind else "?"
        console.print(f"[bold red]FAIL[/bold red] {path}: [bold]{kind}[/bold]: {result.message}")
        if result.traceback:
            console.print(result.traceback, markup=False, highlight=False)
    report = result.weights
    if report is None:
        return
    table = Table(title=f"implied weights w_i(s) = dQ_tot/dQ_i over {report.n_states} recorded states")
    for column in ("agent", "mean", "std", "min", "max", "zero", "negative"):
        table.add_column(column, justify="right")
    for a in report.agents:
        table.add_row(
            str(a.agent),
            f"{a.mean:.3f}",
            f"{a.std:.3f}",
            f"{a.min:.3f}",
            f"{a.max:.3f}",
            f"{a.share_zero:.0%}",
            f"{a.share_negative:.0%}",
        )
    console.print(table)
    linear = "yes" if report.linear_in_q_error < 1e-4 else f"no (error {report.linear_in_q_error:.3g})"
    console.print(
        f"bias b(s): mean {report.bias_mean:.3f}, std {report.bias_std:.3f} | sum of weights: mean "
        f"{report.weight_sum_mean:.3f} | variation with state: {report.weight_state_variation:.3f} | "
        f"linear in Q: {linear}"
    )


@app.command("check")
def sandbox_check(
    file: Annotated[Path, typer.Argument(help="Python file defining credit_assignment(agents_q, state).")],
    task: TaskOption,
    states: Annotated[
        Path | None,
        typer.Option(help="Recording to validate on (`qllm record`); default: record 20 episodes."),
    ] = None,
    monotonic: Annotated[bool, typer.Option(help="Also require every weight to be >= 0 (IGM).")] = False,
    backend: Annotated[str, typer.Option(help="auto, gvisor, bwrap, docker, unshare or process.")] = "auto",
    max_states: Annotated[int, typer.Option(min=2, help="States in the validation batch.")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Validate a credit function in the sandbox against real recorded states of a task.

    Exit code 0 when it passes, 1 when it fails a check (or no sandbox can run here), 2 for bad
    arguments.
    """
    source = _read_candidate(file)
    spec = task_spec(task)
    recording = _validation_recording(spec, states, episodes=20)
    inputs = ValidationInputs.from_recording(recording, max_states=max_states)
    try:
        with Sandbox(backend=backend) as sandbox:
            result = sandbox.validate(source, inputs, CheckOptions(require_monotonic=monotonic))
    except SandboxUnavailableError as exc:
        if backend == "auto":  # the machine has no sandbox at all: nothing the person typed
            raise error_exit(str(exc), FAILURE) from None
        raise usage_error(str(exc), param_hint="--backend") from None
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        _print_verdict(result, file)
    raise typer.Exit(0 if result.ok else FAILURE)
