"""`qllm run`: the main job, end to end on one task.

Generate a credit function with the coder-evaluator graph, train QLLM with it and a QMIX baseline on
the same short budget and the same RL settings (EPyMARL's QMIX defaults; only the mixer differs), then
write a report with both learning curves. Everything lands in one run folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markdown import Markdown

from qllm.agents import GenerationOutcome, RunStatus
from qllm.cli.common import (
    AddressOption,
    CandidatesOption,
    CoderOption,
    CreditFloorOption,
    EvaluatorOption,
    ModeOption,
    RoundsOption,
    SeedOption,
    SelectionOption,
    TaskOption,
    TrialExecutorOption,
    TrialSeedsOption,
    TrialStepsOption,
    TrialTimeoutOption,
    console,
    task_spec,
)
from qllm.cli.errors import error_exit
from qllm.cli.generate import generation_settings, run_generation
from qllm.cli.training import train_or_exit
from qllm.envs.describe import describe_task
from qllm.envs.tasks import DEFAULT_TASK, folder_name
from qllm.rl import TrainResult, preset
from qllm.rl.logger import plot_comparison


def _train_pair(task: str, artifact: Path, steps: int, seed: int, run_dir: Path) -> dict[str, TrainResult]:
    """QLLM (the generated function) and QMIX, identical except for the mixer. The run wrote the credit
    file itself, so the sandbox refusing it is this run's failure (exit 1), not the person's usage error."""
    results = {}
    for label, mixer in (("QLLM (generated TFCAF)", "tfcaf"), ("QMIX", "qmix")):
        config = preset(
            "qmix", task=task, steps=steps, seed=seed, mixer=mixer, eval_interval=max(1, steps // 5),
            tfcaf=str(artifact) if mixer == "tfcaf" else None, preset=mixer,  # names the run folder
        )  # fmt: skip
        results[label] = train_or_exit(config, run_dir / "training", resume=None, credit_file_given=False)
    return results


def _report(
    run_dir: Path, task: str, outcome: GenerationOutcome, results: dict[str, TrainResult], steps: int
) -> Path:
    curves = {label: r.run_dir for label, r in results.items()}
    plot = plot_comparison(curves, run_dir / "comparison.png", f"{task}: greedy test return")
    rows = "\n".join(
        f"| {label} | {r.final_test_return:.3f} | {r.t_env} | `{r.run_dir}` |" for label, r in results.items()
    )
    best = outcome.state.best
    code = best.final.code if best is not None else ""
    report = (
        f"# qllm run: {task}\n\n"
        f"## Credit function\n\nGeneration run `{outcome.run_dir}`: {outcome.reason}\n\n"
        f"```python\n{code}\n```\n\n"
        f"## Training ({steps} environment steps each, same RL settings, only the mixer differs)\n\n"
        f"| method | final greedy test return | steps | run folder |\n|---|---|---|---|\n{rows}\n\n"
        f"![learning curves]({plot.name})\n\n"
        "A short budget shows that the pipeline works end to end, not which method is better: "
        "compare methods over several seeds and budgets of several hundred thousand steps.\n"
    )
    path = run_dir / "report.md"
    path.write_text(report)
    return path


def run_command(
    task: TaskOption = DEFAULT_TASK,
    coder: CoderOption = None,
    evaluator: EvaluatorOption = None,
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
    steps: Annotated[
        int, typer.Option(min=0, help="Training budget of each method (0: generate only).")
    ] = 20_000,
    seed: SeedOption = 0,
    config: Annotated[Path | None, typer.Option(help="TOML file of settings (a `generate` table).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where run folders are created.")] = Path("runs"),
) -> None:
    """The main job: generate a credit function, train QLLM with it and a QMIX baseline, report both.

    Uses the built-in local model unless --coder/--evaluator (or QLLM_CODER/QLLM_EVALUATOR) say otherwise.
    """
    spec = task_spec(task)
    run_dir = runs_dir / f"{folder_name(spec.name)}__run__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    settings = generation_settings(
        spec.name,
        config,
        None,
        coder=coder,
        evaluator=evaluator,
        mode=mode,
        selection=selection,
        candidates=candidates,
        rounds=rounds,
        trial_steps=trial_steps,
        trial_seeds=trial_seeds,
        trial_executor=trial_executor,
        trial_timeout_s=trial_timeout,
        trial_address=address,
        credit_floor=credit_floor,
        seed=seed,
    )
    console.print(Markdown(describe_task(spec, spec.make().info, with_schema=False)))
    outcome = run_generation(settings, run_dir / "generate", resume=None)
    if outcome.status != RunStatus.SUCCEEDED or outcome.artifact is None:
        raise error_exit("no credit function to train with", then=f"Trace: qllm trace show {outcome.run_dir}")
    if steps == 0:
        console.print(f"Credit function: {outcome.artifact}", soft_wrap=True)
        return
    results = _train_pair(spec.name, outcome.artifact, steps, seed, run_dir)
    report = _report(run_dir, spec.name, outcome, results, steps)
    for label, result in results.items():
        console.print(
            f"{label}: greedy test return {result.final_test_return:.3f} after {result.t_env} steps"
        )
    console.print(f"Report: {report}\nRun folder: {run_dir}", soft_wrap=True)  # paths whole, also in a log
