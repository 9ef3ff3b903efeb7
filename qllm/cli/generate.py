"""`qllm generate`: run the coder-evaluator graph and write a validated credit function for a task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from qllm.agents import (
    GenerationOutcome,
    GenerationRun,
    GenerationSettings,
    RunFolderError,
    RunStatus,
    SettingsError,
)
from qllm.agents.trace import (
    DecisionEvent,
    LLMCallEvent,
    LLMErrorEvent,
    TraceEvent,
    TraceFormatError,
    TrialEvent,
    ValidationEvent,
)
from qllm.agents.trace_view import count_text
from qllm.agents.trial import REFERENCE, TrialStatus
from qllm.cli.common import (
    AddressOption,
    CandidatesOption,
    CoderBaseUrlOption,
    CoderOption,
    CreditFloorOption,
    EvaluatorBaseUrlOption,
    EvaluatorOption,
    ModeOption,
    RoundsOption,
    SelectionOption,
    TaskOption,
    TrialExecutorOption,
    TrialSeedsOption,
    TrialStepsOption,
    TrialTimeoutOption,
    console,
    task_spec,
)
from qllm.cli.errors import FAILURE, USAGE, error_exit, interrupted
from qllm.cli.review import UnansweredReviewError, ask_person
from qllm.envs.tasks import DEFAULT_TASK
from qllm.llm.providers import ProviderError
from qllm.prompts import PromptError

GENERATE_RUNS = Path("runs/generate")


def describe_event(event: TraceEvent) -> str | None:
    """One progress line per trace event (None for events not worth a line)."""
    if isinstance(event, LLMCallEvent):
        usage = event.usage
        return (
            f"  {event.label:<12} {event.role} replied "
            f"({usage.input_tokens}→{usage.output_tokens} tokens, {event.latency_s:.1f} s)"
        )
    if isinstance(event, LLMErrorEvent):
        retry = "will retry" if event.transient else "not retryable"
        return f"  [yellow]{event.label:<12} {event.role} failed ({retry}): {event.error[:120]}[/yellow]"
    if isinstance(event, ValidationEvent):
        result = event.result
        verdict = "[green]passed every check[/green]" if event.ok else f"[red]{result.error_kind}[/red]: "
        message = "" if event.ok else result.message[:140]
        return f"  {event.candidate}-a{event.attempt:<6} {verdict}{message}"
    if isinstance(event, TrialEvent):
        return _describe_trial(event)
    if isinstance(event, DecisionEvent):
        chosen = event.chosen or "nothing valid yet"
        tips = ((event.evaluation.tips if event.evaluation else "") or event.note)[:200]
        verdict = ""
        if event.beats_reference is not None:
            verdict = (
                " Beats equal weights on trial."
                if event.beats_reference
                else " [yellow]Does not beat equal weights (VDN) on trial beyond the noise.[/yellow]"
            )
        return f"[bold]round {event.round}[/bold]: best is {chosen} ({event.source}).{verdict} {tips}"
    return None


def _describe_trial(event: TrialEvent) -> str:
    subject = "equal weights" if event.subject == REFERENCE else f"function {event.subject[:8]}"
    head = f"trial of {subject}, seed {event.seed}:"
    if event.status != TrialStatus.DONE:
        return f"  [yellow]{head} {event.status} ({event.error[:140]})[/yellow]"
    returns = ", ".join(f"{p.mean:.3g}" for p in event.curve)
    return f"  {head} greedy return {returns} ({event.wall_s:.0f} s)"


def print_event(event: TraceEvent) -> None:
    line = describe_event(event)
    if line is not None:
        console.print(line, highlight=False)


def run_generation(
    settings: GenerationSettings | None, runs_dir: Path, resume: Path | None
) -> GenerationOutcome:
    """Create (or reopen) a run and execute it, printing the graph's stream as it comes (and asking a person
    at each review when the run is reviewed); CLI errors instead of tracebacks."""
    try:
        run = GenerationRun.open(resume) if resume is not None else GenerationRun.create(settings, runs_dir)
    except RunFolderError as exc:
        raise typer.BadParameter(str(exc), param_hint="--resume") from None
    s = run.settings
    trials = s.trial_settings(task_spec(s.task).trial_steps)
    trained = (
        f"; trials of {trials.steps} steps x {count_text(len(trials.seeds), 'seed')} on {s.trial_executor}"
        if trials
        else ""
    )
    console.print(
        f"[bold]{s.task}[/bold]: K={s.candidates} candidates x L={s.rounds} rounds, "
        f"{s.repairs} repairs each; coder {s.coder}, evaluator {s.evaluator}; selection {s.selection}"
        f"{trained}\nRun folder: {run.run_dir}"
    )
    try:
        # The graph's stream, event by event (GenerationRun.stream); a reviewed run asks at each review.
        outcome = run.execute(listener=print_event, reviewer=ask_person if s.review else None)
    except (ProviderError, PromptError, TraceFormatError) as exc:
        then = f"Fix it and resume with: qllm generate --resume {run.run_dir}"
        raise error_exit(str(exc), USAGE, then=then) from None
    except UnansweredReviewError:
        then = f"Answer it with: qllm generate --resume {run.run_dir}"
        raise error_exit("no answer: the run waits for its review", FAILURE, then=then) from None
    except KeyboardInterrupt:
        interrupted(f"resume with: qllm generate --resume {run.run_dir}")
    colour = "green" if outcome.status == RunStatus.SUCCEEDED else "red"
    console.print(f"[{colour}]{outcome.status.value}[/{colour}]: {outcome.reason}")
    return outcome


def generation_settings(
    task: str, config: Path | None, notes: Path | None, **flags: Any
) -> GenerationSettings:
    """Settings from flags, environment and config file; usage errors for anything unusable."""
    overrides = {"task": task_spec(task).name, **flags}
    if notes is not None:
        try:
            overrides["notes"] = notes.read_text()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {notes}: {exc.strerror}", param_hint="--notes") from None
    try:
        return GenerationSettings.resolve(overrides, config_file=config)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from None


def generate_command(
    task: TaskOption = DEFAULT_TASK,
    coder: CoderOption = None,
    evaluator: EvaluatorOption = None,
    coder_base_url: CoderBaseUrlOption = None,
    evaluator_base_url: EvaluatorBaseUrlOption = None,
    mode: ModeOption = None,
    selection: SelectionOption = None,
    candidates: CandidatesOption = None,
    rounds: RoundsOption = None,
    trial_steps: TrialStepsOption = None,
    trial_seeds: TrialSeedsOption = None,
    trial_executor: TrialExecutorOption = None,
    trial_timeout: TrialTimeoutOption = None,
    address: AddressOption = None,
    credit_floor: CreditFloorOption = None,
    repairs: Annotated[int | None, typer.Option(min=0, help="Repair attempts per failed candidate.")] = None,
    early_stop: Annotated[
        bool | None,
        typer.Option("--early-stop/--no-early-stop", help="Stop when the evaluator is satisfied."),
    ] = None,
    notes: Annotated[
        Path | None, typer.Option(help="Text file of notes about the task for the prompt.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file of settings (a `generate` table).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the recorded validation states.")] = None,
    prompt_version: Annotated[str | None, typer.Option(help="Prompt version under qllm/prompts/.")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where run folders are created.")] = GENERATE_RUNS,
    resume: Annotated[
        Path | None, typer.Option(help="Continue this run folder; completed LLM calls are not repeated.")
    ] = None,
    review: Annotated[
        bool | None,
        typer.Option(
            "--review/--no-review",
            help="Pause after each round: show the candidates, their weights and the pick, and let you "
            "accept it, pick another, edit the tips or stop. Saved with the run: --resume keeps the "
            "run's. \\[default: no review]",
        ),
    ] = None,
) -> None:
    """Write a training-free credit assignment function for a task with the coder-evaluator graph.

    Every run ends with a validated `tfcaf.py` in its folder, or with status failed and the reason.
    Inspect it with `qllm trace show RUN`; train with it: `qllm train --mixer qllm --tfcaf RUN/tfcaf.py`.
    """
    settings = None
    if resume is None:
        settings = generation_settings(
            task, config, notes, coder=coder, evaluator=evaluator, coder_base_url=coder_base_url,
            evaluator_base_url=evaluator_base_url, candidates=candidates, rounds=rounds, repairs=repairs,
            early_stop=early_stop, seed=seed, prompt_version=prompt_version, mode=mode,
            selection=selection, trial_steps=trial_steps, trial_seeds=trial_seeds,
            trial_executor=trial_executor, trial_timeout_s=trial_timeout, trial_address=address,
            credit_floor=credit_floor, review=review,
        )  # fmt: skip
    outcome = run_generation(settings, runs_dir, resume)
    if outcome.status != RunStatus.SUCCEEDED:
        raise typer.Exit(1)
    console.print(f"Credit function: {outcome.artifact}")
