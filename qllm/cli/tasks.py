"""`qllm tasks list|show`: the task registry, for people and scripts."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markdown import Markdown
from rich.table import Table

from qllm.cli.common import console, schema_table, task_spec
from qllm.envs import families
from qllm.envs.describe import describe_task

app = typer.Typer(help="List the available tasks and inspect one.", no_args_is_help=True)


@app.command("list")
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


@app.command("show")
def tasks_show(
    task: Annotated[str, typer.Argument(help="Task name or raw env id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Describe a task: team, reward, actions, episode limit and the global-state schema."""
    spec = task_spec(task, param_hint="TASK")
    env = spec.make()
    info = env.info
    env.close()
    if as_json:
        fields = ("name", "family", "summary", "description", "team", "reward", "opponent")
        typer.echo(json.dumps({**{k: getattr(spec, k) for k in fields}, "info": info.to_dict()}, indent=2))
    else:
        console.print(Markdown(describe_task(spec, info, with_schema=False)))
        console.print(schema_table(info.schema))
