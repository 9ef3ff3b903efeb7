"""`qllm sweep`, `qllm report` and `qllm compare`: train tasks x presets x seeds on Ray, report them as the
paper does, and put sweeps whose credit functions were written differently side by side."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from qllm.agents import SettingsError
from qllm.agents.context import GenerationSettings
from qllm.cli.common import (
    CandidatesOption,
    CoderOption,
    EvaluatorOption,
    ModeOption,
    RoundsOption,
    SelectionOption,
    console,
)
from qllm.cli.errors import FAILURE, USAGE, error_exit, interrupted, usage_error
from qllm.cli.generate import print_event
from qllm.cli.progress import StepProgress, step_progress
from qllm.llm.providers import ProviderError
from qllm.prompts import PromptError
from qllm.rl.tfcaf import TFCAFError
from qllm.sweep.compare import write_comparison
from qllm.sweep.execute import Executor, InlineExecutor, RunRecord, SweepStatus, run_sweep
from qllm.sweep.plan import LEDGER_FILE, SWEEP_FILE, SweepError, SweepPlan, canonical_task
from qllm.sweep.report import NoFinishedRunError, write_report

PAPER_TASKS = "lbf-2s-10x10-3p-3f,mpe-spread-3,matrix-climbing"
PAPER_PRESETS = "qllm,qmix,vdn,qatten,riit,riit-qllm"


def _names(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _setting(text: str) -> tuple[str, Any]:
    """``name=value``; the value is read as JSON when it parses (numbers, booleans), else as a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise usage_error(f"expected NAME=VALUE, got {text!r}", param_hint="--set")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name.strip(), value


def _task_steps(pairs: list[str]) -> dict[str, int]:
    budgets = {}
    for pair in pairs:
        task, sep, steps = pair.partition("=")
        if not sep or not steps.isdigit():
            raise usage_error(f"expected TASK=STEPS, got {pair!r}", param_hint="--task-steps")
        budgets[canonical_task(task)] = int(steps)
    return budgets


def _credit_files(pairs: list[str]) -> dict[str, str]:
    files = {}
    for pair in pairs:
        task, sep, path = pair.partition("=")
        if not sep or not Path(path).is_file():
            raise usage_error(f"expected TASK=FILE with an existing file, got {pair!r}", param_hint="--tfcaf")
        files[canonical_task(task)] = str(Path(path).resolve())
    return files


def _new_plan(
    tasks: str | None,
    mixers: str | None,
    seeds: int | None,
    steps: int | None,
    task_steps: list[str],
    settings: list[str],
    tfcaf: list[str],
    generation: dict[str, Any],
) -> SweepPlan:
    try:
        plan_tasks = tuple(canonical_task(t) for t in _names(tasks or PAPER_TASKS))
        if not plan_tasks:
            raise SweepError("a sweep needs at least one task")
        # Resolved once (flags, environment, defaults) for every task; each generation run sets its task.
        generation_settings = GenerationSettings.resolve({"task": plan_tasks[0], **generation})
        return SweepPlan(
            tasks=plan_tasks,
            presets=_names(mixers or PAPER_PRESETS),
            seeds=tuple(range(seeds or 3)),
            steps=steps or 100_000,
            task_steps=_task_steps(task_steps),
            overrides=dict(_setting(s) for s in settings),
            credit_files=_credit_files(tfcaf),
            generation={k: v for k, v in generation_settings.to_dict().items() if k != "task"},
        )
    except (SweepError, SettingsError) as exc:
        raise usage_error(str(exc)) from None


def _open_plan(sweep_dir: Path, given: dict[str, Any], seeds: int | None) -> SweepPlan:
    """The saved plan of an existing sweep, with more seeds if ``seeds`` asks for them; other options
    that would change it are refused, not ignored."""
    try:
        plan = SweepPlan.load(sweep_dir)
    except SweepError as exc:
        raise usage_error(str(exc), param_hint="SWEEP") from None
    changed = sorted(name for name, value in given.items() if value)
    if changed:
        raise usage_error(
            f"{sweep_dir} already holds a sweep ({SWEEP_FILE}); options {changed} would change it. "
            f"Resume it as planned with `qllm sweep {sweep_dir}`, or start a new sweep in another folder."
        )
    if seeds is None or seeds == len(plan.seeds):
        return plan
    try:
        extended = plan.with_seeds(seeds)
    except SweepError as exc:
        raise usage_error(str(exc), param_hint="--seeds") from None
    extended.save(sweep_dir)
    console.print(f"Adding seeds {len(plan.seeds)}..{seeds - 1} to the sweep in {sweep_dir}")
    return extended


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Stop on SIGTERM (`kill`, job schedulers) as on Ctrl-C: Ray shuts down and the sweep can resume.

    Ctrl-C alone is not enough: a sweep started in the background by a script ignores SIGINT."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _executor(local: bool, address: str | None, workers: int | None) -> Executor:
    if local:
        return InlineExecutor()
    from qllm.sweep.ray_executor import RayExecutor  # noqa: PLC0415 - Ray starts only when it is used

    try:
        return RayExecutor(address=address, workers=workers)
    except (ConnectionError, RuntimeError, ValueError) as exc:  # what ray.init raises for a bad address
        if address is None:  # nothing the person typed: the machine could not start a local instance
            raise error_exit(f"cannot start Ray: {exc}", FAILURE) from None
        raise usage_error(f"cannot reach Ray: {exc}", param_hint="--address") from None


def sweep_command(
    sweep_dir: Annotated[Path, typer.Argument(help="Sweep folder: created, or resumed if it exists.")],
    tasks: Annotated[
        str | None, typer.Option(help=f"Comma-separated tasks, plugins included. \\[default: {PAPER_TASKS}]")
    ] = None,
    mixers: Annotated[
        str | None,
        typer.Option(help=f"Comma-separated presets (`qllm train --help`). \\[default: {PAPER_PRESETS}]"),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Seeds per task and preset: 0..N-1; on an existing sweep, a larger N adds seeds. "
            "\\[default: 3]",
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Environment steps per run. \\[default: 100000]")
    ] = None,
    task_steps: Annotated[
        list[str] | None, typer.Option(help="TASK=STEPS: a task's own budget (repeatable).")
    ] = None,
    setting: Annotated[
        list[str] | None,
        typer.Option("--set", help="NAME=VALUE training setting applied to every preset (repeatable)."),
    ] = None,
    tfcaf: Annotated[
        list[str] | None,
        typer.Option(
            help="TASK=FILE credit function for the tfcaf presets (repeatable); others are generated."
        ),
    ] = None,
    coder: CoderOption = None,
    evaluator: EvaluatorOption = None,
    mode: ModeOption = None,
    selection: SelectionOption = None,
    candidates: CandidatesOption = None,
    rounds: RoundsOption = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster address (the sweep folder must be on a shared file system)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Runs at once on the local Ray instance. \\[default: CPU count]")
    ] = None,
    retries: Annotated[int, typer.Option(min=0, help="Retries of a failed run before it is reported.")] = 1,
    local: Annotated[
        bool,
        typer.Option("--local", help="Train in this process, one run at a time, without Ray (debugging)."),
    ] = False,
) -> None:
    """Train every task x preset x seed: credit functions first (generated once per task for the tfcaf
    presets), then the runs on Ray. Interrupt it at any time; the same command resumes it without
    repeating a finished run. Then: `qllm report SWEEP`."""
    generation = {
        "coder": coder,
        "evaluator": evaluator,
        "mode": mode,
        "selection": selection,
        "candidates": candidates,
        "rounds": rounds,
    }
    given = {
        "tasks": tasks,
        "mixers": mixers,
        "steps": steps,
        "task_steps": task_steps,
        "set": setting,
        "tfcaf": tfcaf,
    }
    if (sweep_dir / SWEEP_FILE).is_file():
        plan = _open_plan(sweep_dir, given | generation, seeds)
        console.print(f"Resuming the sweep in {sweep_dir}")
    else:
        plan = _new_plan(
            tasks, mixers, seeds, steps, task_steps or [], setting or [], tfcaf or [], generation
        )
        plan.save(sweep_dir)
    console.print(
        f"{len(plan.tasks)} tasks x {len(plan.presets)} presets x {len(plan.seeds)} seeds = "
        f"{len(plan.runs())} runs, {sum(plan.steps_for(k.task) for k in plan.runs()):,} environment steps"
    )
    executor = _executor(local, address, workers)
    try:
        with _stop_on_sigterm():
            status = _run_with_progress(sweep_dir, executor, retries)
    except (ProviderError, PromptError) as exc:  # the models or prompts the settings name cannot be used
        raise error_exit(str(exc), USAGE, then=f"Fix it and resume with: qllm sweep {sweep_dir}") from None
    except SweepError as exc:
        # The plan was read above; what the sweep raises now is a task's credit function that could
        # not be generated: the work failed, not the command line.
        raise error_exit(str(exc), FAILURE, then=f"Resume with: qllm sweep {sweep_dir}") from None
    except KeyboardInterrupt:
        executor.close()  # Ray's workers go with it; then end at once (a generation may be mid-call)
        interrupted(f"resume with: qllm sweep {sweep_dir}")
    finally:
        executor.close()
    console.print(f"[green]{len(status.done)} runs done[/green]; report: qllm report {sweep_dir}")
    if status.failed:
        console.print(
            f"[red]{len(status.failed)} failed[/red]: {', '.join(status.failed)} "
            f"(errors in {sweep_dir / LEDGER_FILE})"
        )
        raise typer.Exit(FAILURE)


def _describe(record: RunRecord) -> str:
    if record.status == "done":
        return f"  done   {record.run}: greedy test return {record.final_return:.3g} ({record.seconds:.0f} s)"
    # Escaped: an error message may hold brackets (a list, a path) that rich would read as markup.
    return f"  [red]failed[/red] {record.run} (attempt {record.attempt}): {escape(record.error or '')}"


def _run_with_progress(sweep_dir: Path, executor: Executor, retries: int) -> SweepStatus:
    """:func:`run_sweep`, with a line per run that starts or ends and the sweep's progress in steps
    (a live bar on a terminal, plain lines otherwise)."""
    with step_progress(console, "sweep", None) as progress:
        watcher = _SweepWatcher(progress)
        return run_sweep(sweep_dir, executor, retries=retries, on_update=watcher.update, listener=print_event)


class _SweepWatcher:
    """Turns each status of a sweep into lines for what changed since the last one, and progress."""

    def __init__(self, progress: StepProgress) -> None:
        self.progress = progress
        self.ended = 0
        self.started: set[str] = set()

    def update(self, status: SweepStatus) -> None:
        # A run has started once its executor reports steps (Ray); the inline executor reports none
        # until the run ends, so its runs get only their end line.
        for name, steps in status.running.items():
            if steps > 0 and name not in self.started:
                self.started.add(name)
                self.progress.note(f"  started {name} ({status.budgets[name]:,} steps)")
        for record in status.ended[self.ended :]:
            self.started.discard(record.run)  # a retried run starts again
            self.progress.note(_describe(record))
        self.ended = len(status.ended)
        runs = f"{len(status.done)}/{status.total_runs} runs done, {len(status.running)} to go"
        if status.failed:
            runs += f", [red]{len(status.failed)} failed[/red]"
        self.progress.update(status.steps_done, status.steps_total, detail=runs)


def report_command(
    sweep_dir: Annotated[Path, typer.Argument(help="Sweep folder written by `qllm sweep`.")],
    out: Annotated[
        Path | None, typer.Option(help="Folder for report.md and its PNGs. \\[default: SWEEP/report]")
    ] = None,
) -> None:
    """Learning curves with 95% bands, final returns with 95% CIs, credit function against learned mixer,
    the mpe-spread-N series, and what each credit function does over an episode: Markdown and PNGs."""
    try:
        path = write_report(sweep_dir, out)
    except (SweepError, TFCAFError) as exc:
        raise usage_error(str(exc), param_hint="SWEEP") from None
    except NoFinishedRunError as exc:
        console.print(f"[yellow]{exc}[/yellow]")
        raise typer.Exit(FAILURE) from None  # the sweep's runs, not the command line, left nothing to report
    console.print(f"Report: {path}")


def compare_command(
    sweeps: Annotated[
        list[Path], typer.Argument(help="Two or more sweep folders; the first is the reference.")
    ],
    out: Annotated[Path, typer.Option(help="Folder for report.md and its PNGs.")] = Path("comparison"),
) -> None:
    """Sweeps that differ in how their credit functions were written (K, selection, models, mode), side by
    side: final returns with 95% CIs and each sweep's difference from the first, learning curves, and
    what each generation cost and chose. The sweeps must share budgets and training settings."""
    try:
        path = write_comparison(sweeps, out)
    except (SweepError, TFCAFError) as exc:
        raise usage_error(str(exc), param_hint="SWEEPS") from None
    console.print(f"Report: {path}")
