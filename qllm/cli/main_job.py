"""`qllm run`: the main job, end to end on one task."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markdown import Markdown

from qllm.cli.common import DEFAULT_TASK, EpisodesOption, SeedOption, console, schema_table, task_spec
from qllm.cli.data import print_recording_summary, record_with_progress
from qllm.cli.training import train_with_progress
from qllm.envs.describe import describe_task, state_statistics_table
from qllm.envs.recording import save_recording
from qllm.rl import preset


def run_command(
    task: Annotated[
        str, typer.Option("--task", "-t", help="Task name (see `qllm tasks list`).")
    ] = DEFAULT_TASK,
    episodes: EpisodesOption = 50,
    seed: SeedOption = 0,
    steps: Annotated[
        int, typer.Option(min=0, help="Budget of the QMIX baseline (0 skips training).")
    ] = 20_000,
    runs_dir: Annotated[Path, typer.Option(help="Where run folders are created.")] = Path("runs"),
) -> None:
    """The main job, end to end on one task.

    Today's pipeline: describe the task, record real states with a random policy, summarise how the
    recorded states cover the schema, and train a QMIX baseline briefly. Generating a credit function
    with the LLM graph, and training QLLM with it, join the pipeline in a later release.
    """
    spec = task_spec(task)
    run_dir = runs_dir / f"{spec.name}__run__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=False)
    rec = record_with_progress(spec, episodes, seed, "random")
    description = describe_task(spec, rec.info)
    statistics = state_statistics_table(rec.info.schema, rec.visited_states())
    (run_dir / "task.md").write_text(description)
    (run_dir / "schema.json").write_text(rec.info.schema.to_json())
    (run_dir / "state_statistics.md").write_text(statistics + "\n")
    console.print(Markdown(describe_task(spec, rec.info, with_schema=False)))
    console.print(schema_table(rec.info.schema))
    console.print(Markdown("## Recorded states\n\n" + statistics))
    print_recording_summary(rec, save_recording(rec, run_dir / "states.npz"))
    if steps > 0:
        config = preset("qmix", task=spec.name, steps=steps, seed=seed, eval_interval=max(1, steps // 5))
        result = train_with_progress(config, run_dir, resume=None)
        console.print(
            f"QMIX baseline: greedy test return {result.final_test_return:.3f} after {result.t_env} steps; "
            f"learning curve: {result.plot}"
        )
    console.print(f"Run folder: {run_dir}")
