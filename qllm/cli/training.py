"""`qllm train` and `qllm evaluate`: training runs (value decomposition, COMA, MADDPG)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from qllm.cli.common import TaskOption, console, task_spec
from qllm.cli.errors import exit_codes, usage_error
from qllm.cli.progress import step_progress
from qllm.envs import task_info
from qllm.envs.tasks import DEFAULT_TASK
from qllm.rl import PRESETS, RunError, TrainConfig, TrainResult, evaluate_run, preset, train
from qllm.rl.credit import CreditFunctionError
from qllm.rl.tfcaf import TFCAFError, read_tfcaf
from qllm.rl.train import Progress as TrainProgress
from qllm.rl.train import TrainingError, load_run_config

TRAINING_STOPPED = (TrainingError, CreditFunctionError)
"""Training that started and could not go on: a failure (exit 1), whoever gave its settings."""


def credit_note(config: TrainConfig) -> str:
    """Where the credit of a run with a credit-function file comes from, said before training starts."""
    try:
        from_spec = read_tfcaf(Path(config.tfcaf or ""), task_info(config.task)).spec is not None
    except (TFCAFError, ValueError):
        from_spec = False  # training itself says what is wrong with the file
    if from_spec:
        return (
            f"Credit from the spec in {config.tfcaf}'s header: the file is exactly qllm's compilation of "
            "it, so nothing in it runs and no sandbox is needed"
        )
    return (
        f"Checking the credit function {config.tfcaf} in the sandbox before training "
        "(its worker takes a few seconds to start; about 10 under gVisor)"
    )


def train_with_progress(config: TrainConfig, runs_dir: Path, resume: Path | None) -> TrainResult:
    """:func:`~qllm.rl.train.train` with progress: a live bar on a terminal, plain lines otherwise."""
    start, first_step = time.monotonic(), None
    with step_progress(console, f"{config.task} {config.preset}", config.steps) as progress:
        if config.mixer == "tfcaf":  # else the first seconds pass without a word
            progress.note(credit_note(config))

        def update(p: TrainProgress) -> None:
            nonlocal first_step
            first_step = p.t_env if first_step is None else first_step
            rate = (p.t_env - first_step) / max(1e-9, time.monotonic() - start)
            test = "-" if p.test_return is None else f"{p.test_return:.3g}"
            eps = "-" if p.epsilon is None else f"{p.epsilon:.2f}"  # None: sampling from a policy
            detail = f"{rate:.0f} steps/s | return {p.episode_return:.3g} | eps {eps} | test {test}"
            progress.update(min(p.t_env, p.steps), detail=detail)

        return train(config, runs_dir=runs_dir, resume=resume, on_progress=update)


def train_or_exit(
    config: TrainConfig, runs_dir: Path, resume: Path | None, *, credit_file_given: bool
) -> TrainResult:
    """:func:`train_with_progress`, with the library's errors as exit codes (:mod:`qllm.cli.errors`).

    A run folder that cannot be resumed is a usage error; so is a credit function the sandbox refuses
    when the person gave it (``credit_file_given``: ``qllm train --tfcaf``), while one a command wrote
    itself (``qllm run``'s generated function) failing is that command's failure, as is training that
    stopped."""
    usage: tuple[type[Exception], ...] = (RunError, TFCAFError) if credit_file_given else (RunError,)
    failure = TRAINING_STOPPED if credit_file_given else (*TRAINING_STOPPED, TFCAFError)
    with exit_codes(usage=usage, failure=failure):
        return train_with_progress(config, runs_dir, resume)


def train_command(
    task: TaskOption = DEFAULT_TASK,
    mixer: Annotated[
        str, typer.Option(help=f"Mixer or preset (coma, maddpg: those learners): {', '.join(PRESETS)}.")
    ] = "qmix",
    steps: Annotated[int, typer.Option(min=1, help="Training budget in environment steps.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed for networks, exploration and environments.")] = 0,
    tfcaf: Annotated[
        Path | None, typer.Option(help="Credit-function file for the tfcaf mixer (qllm presets).")
    ] = None,
    envs: Annotated[
        int | None, typer.Option(min=1, help="Environments stepped together (preset default).")
    ] = None,
    eval_interval: Annotated[
        int | None, typer.Option(min=1, help="Steps between greedy evaluations.")
    ] = None,
    eval_episodes: Annotated[int | None, typer.Option(min=1, help="Episodes per evaluation.")] = None,
    checkpoint_interval: Annotated[int | None, typer.Option(min=1, help="Steps between checkpoints.")] = None,
    credit_call_budget: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="Seconds one call of the credit function may take (in the sandbox, or in this process for "
            "a function not linear in Q) before training stops with an error (default 10; a compiled credit "
            "spec's credit comes from the spec: no calls).",
        ),
    ] = None,
    collect_ahead: Annotated[
        bool | None,
        typer.Option(
            "--collect-ahead/--collect-in-line",
            help="Off-policy learners: collect the next episodes in a second process during each update, "
            "acting with the weights from before it (the default), or in line after it, as EPyMARL does.",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    runs_dir: Annotated[Path, typer.Option(help="Where run folders are created.")] = Path("runs"),
    resume: Annotated[
        Path | None, typer.Option(help="Continue this run folder from its latest checkpoint.")
    ] = None,
) -> None:
    """Train a value-decomposition learner (IQL, VDN, QMIX, Qatten, RIIT or a TFCAF), or one of the
    actor-critic baselines (COMA, MADDPG), on a task."""
    if resume is not None:
        try:
            config = load_run_config(resume).replace(steps=steps)
        except RunError as exc:
            raise usage_error(str(exc), param_hint="--resume") from None
    else:
        if mixer not in PRESETS:
            raise usage_error(
                f"unknown mixer {mixer!r}; choose from {', '.join(PRESETS)}", param_hint="--mixer"
            )
        spec = task_spec(task)
        overrides = {
            "envs": envs,
            "eval_interval": eval_interval,
            "eval_episodes": eval_episodes,
            "checkpoint_interval": checkpoint_interval,
            "credit_call_budget_s": credit_call_budget,
            "collect_ahead": collect_ahead,
        }
        config = preset(
            mixer,
            task=spec.name,
            steps=steps,
            seed=seed,
            device=device,
            tfcaf=str(tfcaf) if tfcaf else None,
            **{k: v for k, v in overrides.items() if v is not None},
        )
        if config.mixer == "tfcaf" and config.tfcaf is None:
            raise usage_error(
                f"the {mixer} preset trains a credit function: pass --tfcaf FILE", param_hint="--tfcaf"
            )
    # A resumed run's credit file was given too: to the command that started it.
    result = train_or_exit(config, runs_dir, resume, credit_file_given=True)
    console.print(
        f"[green]Done[/green]: {result.t_env} steps, greedy test return {result.final_test_return:.3f}\n"
        f"Run folder: {result.run_dir}\nLearning curve: {result.plot}",
        soft_wrap=True,  # paths whole, also in a log file (which rich would wrap at 80 columns)
    )


def evaluate_command(
    run: Annotated[Path, typer.Argument(help="Run folder written by `qllm train`.")],
    episodes: Annotated[int, typer.Option(min=1, help="Greedy evaluation episodes.")] = 100,
) -> None:
    """Greedy test return of a trained run (its final model, else its latest checkpoint)."""
    try:
        mean, std = evaluate_run(run, episodes)
    except RunError as exc:
        raise usage_error(str(exc), param_hint="RUN") from None
    console.print(f"{run}: greedy test return {mean:.3f} ± {std:.3f} over {episodes} episodes")
