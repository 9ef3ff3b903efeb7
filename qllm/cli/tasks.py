"""`qllm tasks list|show`: the task registry, for people and scripts."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markdown import Markdown
from rich.table import Table

from qllm.cli.common import console, notes, schema_table, task_spec
from qllm.cli.errors import usage_error
from qllm.envs.describe import describe_task
from qllm.envs.plugins import CHECK_EPISODES, ENTRY_POINT_GROUP, check_task
from qllm.envs.tasks import BUILT_IN, registry

app = typer.Typer(help="List the available tasks and inspect one.", no_args_is_help=True)


@app.command("list")
def tasks_list(
    family: Annotated[
        str | None, typer.Option(help="Only this family: matrix, mpe, lbf, rware or an installed plugin's.")
    ] = None,
    all_names: Annotated[
        bool, typer.Option("--all", help="Print every concrete task name, one per line.")
    ] = False,
) -> None:
    """List task families (built-in and installed plugins), the name patterns they accept, and examples."""
    found = registry()
    for problem in found.problems:
        notes.print(f"[yellow]warning:[/yellow] {problem}", highlight=False)
    chosen = [f for f in found.families if family in (None, f.key)]
    if not chosen:
        keys = ", ".join(f.key for f in found.families)
        raise usage_error(f"unknown family {family!r}; choose from {keys}", param_hint="--family")
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
        origin = "" if fam.origin == BUILT_IN else f"\n[dim italic]{fam.origin}[/dim italic]"
        table.add_row(
            f"{fam.key}\n[dim]{fam.title}[/dim]{origin}",
            "\n".join(fam.patterns),
            str(len(names)),
            "\n".join(fam.examples),
        )
    console.print(table)
    console.print(
        "`qllm tasks show <task>` describes one task and its global state; `--all` lists every name. "
        f"Installed packages add families through the `{ENTRY_POINT_GROUP}` entry points; `--task "
        "module:factory` names a one-off task (README: Your own environment)."
    )


@app.command("show")
def tasks_show(
    task: Annotated[str, typer.Argument(help="Task name, raw env id, or module:factory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Describe a task: team, reward, actions, episode limit and the global-state schema.

    A plugged-in task is first played for a few random episodes, so that a schema that does not match
    its environment's states is reported here rather than in the middle of a run."""
    spec = task_spec(task, param_hint="TASK")
    env = spec.make()
    try:
        checked = None if spec.origin == BUILT_IN else check_task(env)
    finally:
        env.close()
    info = env.info
    if as_json:
        fields = ("name", "family", "summary", "description", "team", "reward", "opponent")
        typer.echo(json.dumps({**{k: getattr(spec, k) for k in fields}, "info": info.to_dict()}, indent=2))
    else:
        console.print(Markdown(describe_task(spec, info, with_schema=False)))
        console.print(schema_table(info.schema))
        if checked is not None:
            console.print(
                f"checked on {CHECK_EPISODES} random episodes ({checked} states): every state field within "
                "its declared range"
            )
