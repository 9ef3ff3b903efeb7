"""`qllm record`: roll out a policy and save real states of a task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qllm.cli.common import EpisodesOption, SeedOption, TaskOption, console, task_spec
from qllm.cli.errors import usage_error
from qllm.cli.progress import step_progress
from qllm.envs import TaskSpec
from qllm.envs.recording import POLICIES, Recording, record, save_recording


def record_with_progress(spec: TaskSpec, episodes: int, seed: int, policy: str) -> Recording:
    with step_progress(console, f"recording {spec.name}", episodes, "episodes", transient=True) as progress:
        return record(
            spec.name,
            episodes,
            seed=seed,
            policy=policy,
            on_episode=lambda episode, ret: progress.update(episode + 1, detail=f"return {ret:.3g}"),
        )


def print_recording_summary(rec: Recording, path: Path) -> None:
    episodes = rec.episodes
    returns = episodes.returns
    console.print(
        f"[green]Saved[/green] {episodes.n_episodes} episodes ({int(episodes.lengths.sum())} steps) of "
        f"{rec.info.task} to {path}\n"
        f"return: mean {returns.mean():.3f}, min {returns.min():.3f}, max {returns.max():.3f}"
    )


def record_command(
    task: TaskOption,
    out: Annotated[Path, typer.Option(help="Output file (.npz), created with its folders.")],
    episodes: EpisodesOption = 100,
    seed: SeedOption = 0,
    policy: Annotated[str, typer.Option(help=f"Behaviour policy: {', '.join(POLICIES)}.")] = "random",
) -> None:
    """Roll out a policy and save states, observations, actions, rewards and the schema to one file."""
    spec = task_spec(task)
    if policy not in POLICIES:
        raise usage_error(f"choose from {', '.join(POLICIES)}", param_hint="--policy")
    if out.exists() and out.is_dir():
        raise usage_error(f"{out} is a directory", param_hint="--out")
    rec = record_with_progress(spec, episodes, seed, policy)
    print_recording_summary(rec, save_recording(rec, out))
