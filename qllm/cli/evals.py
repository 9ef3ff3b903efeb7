"""`qllm evals run|list|show|compare|export`: prompt-quality evals with real models, stored and compared."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markdown import Markdown
from rich.table import Table

from qllm.cli.common import (
    CoderBaseUrlOption,
    CoderOption,
    EvaluatorBaseUrlOption,
    EvaluatorOption,
    ModeOption,
    SelectionOption,
    console,
)
from qllm.cli.errors import FAILURE, USAGE, error_exit
from qllm.evals.compare import compare, markdown_report, markdown_table, plot_comparison
from qllm.evals.runner import EvalModels, rescore, run_suite
from qllm.evals.store import (
    DEFAULT_STORE,
    CaseResult,
    ResultsStore,
    StoreError,
    available_references,
    resolve_run,
)
from qllm.evals.suites import EvalCase, SuiteError, available_suites, load_suite
from qllm.llm.providers import ProviderError
from qllm.prompts import PromptError

app = typer.Typer(help="Prompt-quality evals: run suites with real models, store and compare results.",
                  no_args_is_help=True)  # fmt: skip

StoreOption = Annotated[Path, typer.Option(help="SQLite results store.")]


def _fail(message: str) -> typer.Exit:
    """A usage error: every error these commands report is a suite, eval id, file, model or prompt
    version the person named that cannot be used (a regression in `compare` is a failure, exit 1)."""
    return error_exit(message, USAGE)


@app.command("run")
def evals_run(
    suite: Annotated[
        str, typer.Option(help=f"Suite name ({', '.join(available_suites())}) or a .toml file.")
    ],
    coder: CoderOption = None,
    evaluator: EvaluatorOption = None,
    coder_base_url: CoderBaseUrlOption = None,
    evaluator_base_url: EvaluatorBaseUrlOption = None,
    prompt_version: Annotated[str, typer.Option(help="Prompt version under qllm/prompts/.")] = "v1",
    mode: ModeOption = None,
    selection: SelectionOption = None,
    label: Annotated[str, typer.Option(help="A name for this eval run in listings.")] = "",
    store: StoreOption = DEFAULT_STORE,
    runs_dir: Annotated[Path, typer.Option(help="Where generation run folders go.")] = Path("runs/evals"),
) -> None:
    """Run every case x seed of a suite, score each generation run, and store the results."""
    try:
        chosen = load_suite(suite)
    except SuiteError as exc:
        raise _fail(str(exc)) from None
    console.print(f"suite [bold]{chosen.name}[/bold]: {chosen.runs} generation runs ({chosen.description})")
    models = EvalModels(
        coder or "local", evaluator or "local", coder_base_url, evaluator_base_url, prompt_version,
        mode or "auto", selection,
    )  # fmt: skip

    def progress(case: EvalCase, seed: int, result: CaseResult) -> None:
        semantic = result.scores.get("semantic_score")
        console.print(
            f"  {case.task:<24} seed {seed}: {result.status:<9} semantic "
            f"{'-' if semantic is None else f'{semantic:.2f}'}, first-try validity "
            f"{result.scores.get('first_try_validity') or 0:.2f}, {result.wall_s:.0f} s",
            highlight=False,
        )

    try:
        evaluation = run_suite(chosen, models, ResultsStore(store), runs_dir, label=label, on_result=progress)
    except (ProviderError, PromptError) as exc:
        raise _fail(str(exc)) from None
    console.print(Markdown(markdown_report(evaluation)))
    console.print(f"stored as eval run {evaluation.id} in {store}")


@app.command("list")
def evals_list(store: StoreOption = DEFAULT_STORE) -> None:
    """Every stored eval run, then the suites and reference runs that ship with qllm."""
    table = Table("id", "created", "suite", "coder", "evaluator", "mode", "prompts", "commit", "label")
    for run in ResultsStore(store).runs():
        table.add_row(str(run.id), run.created, run.suite, run.coder, run.evaluator, run.mode,
                      run.prompt_version, run.git_commit, run.label)  # fmt: skip
    console.print(table)
    # Soft wrap: one line each however narrow the terminal, so scripts can read the names.
    console.print(
        f"shipped suites: {', '.join(available_suites())} (qllm evals run --suite NAME)",
        soft_wrap=True, highlight=False,
    )  # fmt: skip
    console.print(
        f"shipped reference runs: {', '.join(available_references())} (usable wherever an eval id is, "
        "e.g. qllm evals show smoke-local-v1)",
        soft_wrap=True, highlight=False,
    )  # fmt: skip


@app.command("rescore")
def evals_rescore(
    eval_id: Annotated[int, typer.Argument(help="Eval id in the store.")],
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Score an eval run's generation runs again with the current scorers (their folders must exist)."""
    try:
        evaluation = rescore(eval_id, ResultsStore(store))
    except (StoreError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    console.print(Markdown(markdown_report(evaluation)))


@app.command("show")
def evals_show(
    run: Annotated[
        str, typer.Argument(help="Eval id in the store, an exported JSON file, or a shipped reference run.")
    ],
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """One eval run as a report: scorers (seen and unseen tasks), per-run rows, error kinds."""
    try:
        console.print(Markdown(markdown_report(resolve_run(run, ResultsStore(store)))))
    except StoreError as exc:
        raise _fail(str(exc)) from None


@app.command("export")
def evals_export(
    run: Annotated[str, typer.Argument(help="Eval id in the store.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="JSON file to write (a .md report goes beside it).")
    ],
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Write an eval run to JSON (and Markdown), e.g. to check in as a reference."""
    try:
        evaluation = resolve_run(run, ResultsStore(store))
    except StoreError as exc:
        raise _fail(str(exc)) from None
    out.write_text(evaluation.to_json())
    out.with_suffix(".md").write_text(markdown_report(evaluation))
    console.print(f"wrote {out} and {out.with_suffix('.md')}")


@app.command("table")
def evals_table(
    runs: Annotated[
        list[str],
        typer.Argument(help="Eval ids, exported JSON files or shipped reference runs, in column order."),
    ],
    unseen: Annotated[
        bool | None, typer.Option("--unseen/--seen", help="Only unseen (or only seen) tasks.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the table here.")] = None,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Several eval runs side by side, one column each (e.g. before and after each lever), as Markdown."""
    try:
        chosen = [resolve_run(r, ResultsStore(store)) for r in runs]
    except StoreError as exc:
        raise _fail(str(exc)) from None
    text = markdown_table(chosen, unseen)
    console.print(Markdown(text))
    if out is not None:
        out.write_text(text)
        console.print(f"written to {out}")


@app.command("compare")
def evals_compare(
    a: Annotated[str, typer.Argument(help="Baseline: eval id, exported JSON file or shipped reference run.")],
    b: Annotated[
        str, typer.Argument(help="Candidate: eval id, exported JSON file or shipped reference run.")
    ],
    share_threshold: Annotated[
        float, typer.Option(help="Largest tolerated drop of a share scorer (absolute).")
    ] = 0.10,
    relative_threshold: Annotated[
        float, typer.Option(help="Largest tolerated worsening of other scorers (relative to A).")
    ] = 0.50,
    plot: Annotated[Path | None, typer.Option(help="Write a plot per scorer to this PNG.")] = None,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Compare B against A per scorer; exit 1 if any scorer regresses beyond its threshold."""
    try:
        run_a, run_b = resolve_run(a, ResultsStore(store)), resolve_run(b, ResultsStore(store))
    except StoreError as exc:
        raise _fail(str(exc)) from None
    rows = compare(run_a, run_b, share_threshold, relative_threshold)
    table = Table("scorer", "A (95% CI)", "B (95% CI)", "change (+ is better)", "verdict",
                  title=f"A: {run_a.label}\nB: {run_b.label}")  # fmt: skip
    for row in rows:
        comparable = row.scorer.direction != "neutral" and row.change != "-"
        verdict = "[red]REGRESSED[/red]" if row.regressed else ("ok" if comparable else "")
        table.add_row(row.scorer.name, row.a.text(), row.b.text(), row.change, verdict)
    console.print(table)
    if plot is not None:
        console.print(f"plot: {plot_comparison(run_a, run_b, plot)}")
    regressed = [r.scorer.name for r in rows if r.regressed]
    if regressed:
        console.print(f"[red]regressed:[/red] {', '.join(regressed)}")
        raise typer.Exit(FAILURE)
