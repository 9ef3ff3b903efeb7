"""Summaries of eval runs and comparisons between two of them, as tables, plots and a regression gate.

Each scorer is averaged over the suite's generation runs (``None`` left out), with a 95% confidence
interval from the spread across runs. ``B`` regresses against ``A`` on a scorer when it moves the wrong
way by more than the threshold: absolute for shares (``0.10`` = ten points), relative to ``A`` for
counts, tokens, seconds and cost (``0.50`` = 50% worse). Neutral scorers are shown, never gated.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from qllm.envs.tasks import TaskNameError, resolve_task
from qllm.evals.scorers import SCORERS, Scorer
from qllm.evals.store import EvalRun

Z95 = 1.96


@dataclass(frozen=True)
class Aggregate:
    mean: float | None
    half_width: float
    n: int
    median: float | None = None

    @classmethod
    def of(cls, values: list[float]) -> Aggregate:
        if not values:
            return cls(None, 0.0, 0)
        mean, median = sum(values) / len(values), statistics.median(values)
        if len(values) < 2:
            return cls(mean, 0.0, 1, median)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        return cls(mean, Z95 * sd / math.sqrt(len(values)), len(values), median)

    def text(self) -> str:
        if self.mean is None:
            return "-"
        return f"{self.mean:.3g}" + (f" ± {self.half_width:.2g}" if self.n > 1 else "")


def aggregate(run: EvalRun, name: str, unseen: bool | None = None) -> Aggregate:
    """Mean and 95% CI of scorer ``name`` over ``run``'s results (optionally only unseen/seen tasks)."""
    values = [
        r.scores[name]
        for r in run.results
        if r.scores.get(name) is not None and (unseen is None or r.unseen == unseen)
    ]
    return Aggregate.of([float(v) for v in values if v is not None])


def max_minutes(run: EvalRun) -> float:
    return max((r.scores.get("run_minutes") or 0.0 for r in run.results), default=0.0)


def error_kind_totals(run: EvalRun) -> Counter[str]:
    totals: Counter[str] = Counter()
    for result in run.results:
        totals.update(result.error_kinds)
    return totals


@dataclass(frozen=True)
class ScorerComparison:
    scorer: Scorer
    a: Aggregate
    b: Aggregate
    regressed: bool
    change: str


def _change(scorer: Scorer, a: float, b: float) -> float:
    """How much better B is than A, signed so that positive is better (absolute or relative)."""
    sign = -1.0 if scorer.direction == "lower" else 1.0
    if scorer.share:
        return sign * (b - a)
    return sign * (b - a) / max(abs(a), 1e-9)


def compare(
    a: EvalRun, b: EvalRun, share_threshold: float = 0.10, relative_threshold: float = 0.50
) -> list[ScorerComparison]:
    rows = []
    for scorer in SCORERS.values():
        agg_a, agg_b = aggregate(a, scorer.name), aggregate(b, scorer.name)
        regressed, change = False, "-"
        if agg_a.mean is not None and agg_b.mean is not None:
            delta = _change(scorer, agg_a.mean, agg_b.mean)
            threshold = share_threshold if scorer.share else relative_threshold
            regressed = scorer.direction != "neutral" and delta < -threshold
            change = f"{delta:+.2f}" if scorer.share else f"{delta:+.0%}"
            if scorer.direction == "neutral":
                change = f"{agg_b.mean - agg_a.mean:+.2g}"
        rows.append(ScorerComparison(scorer, agg_a, agg_b, regressed, change))
    return rows


def plot_comparison(a: EvalRun, b: EvalRun, out: Path) -> Path:
    """One panel per scorer: A and B means with 95% confidence intervals."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    names = list(SCORERS)
    columns = 4
    rows = math.ceil(len(names) / columns)
    fig = Figure(figsize=(3.2 * columns, 2.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns).flatten()
    for ax, name in zip(axes, names, strict=False):
        aggs = [aggregate(a, name), aggregate(b, name)]
        means = [g.mean if g.mean is not None else 0.0 for g in aggs]
        ax.bar([0, 1], means, yerr=[g.half_width for g in aggs], color=["0.6", "tab:blue"], capsize=4)
        ax.set_xticks([0, 1], [f"A #{a.id or 'file'}", f"B #{b.id or 'file'}"])
        arrow = {"higher": "↑", "lower": "↓", "neutral": ""}[SCORERS[name].direction]
        ax.set_title(f"{name} {arrow}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(f"A: {a.label}\nB: {b.label}", fontsize=9)
    fig.savefig(out, dpi=110)
    return out


def _two_decimals(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_table(runs: list[EvalRun], unseen: bool | None = None) -> str:
    """Several eval runs side by side (e.g. one per lever): each scorer's mean ± 95% CI per run, the
    median minutes per run, and what each run was."""
    header = "| scorer | " + " | ".join(f"#{r.id or i + 1}" for i, r in enumerate(runs)) + " |"
    lines = [header, "|---" * (len(runs) + 1) + "|"]
    for scorer in SCORERS.values():
        arrow = {"higher": " ↑", "lower": " ↓", "neutral": ""}[scorer.direction]
        cells = [aggregate(r, scorer.name, unseen).text() for r in runs]
        lines.append(f"| {scorer.name}{arrow} | " + " | ".join(cells) + " |")
    medians = [aggregate(r, "run_minutes", unseen).median for r in runs]
    lines.append("| median run minutes | " + " | ".join(_two_decimals(m) for m in medians) + " |")
    lines.append("")
    lines += [
        f"- #{r.id or i + 1}: {r.label} (suite `{r.suite}`, {len(r.results)} runs, mode `{r.mode}`, "
        f"commit {r.git_commit})"
        for i, r in enumerate(runs)
    ]
    return "\n".join(lines) + "\n"


def tasks_without_probes(run: EvalRun) -> list[str]:
    """The run's tasks whose family declares no semantic probes (their semantic scorers are empty)."""
    unprobed = []
    for task in sorted({r.task for r in run.results}):
        try:
            spec = resolve_task(task)
        except TaskNameError:  # a plugin task whose plugin is not installed here: nothing to say
            continue
        if spec.probes is None:
            unprobed.append(task)
    return unprobed


def markdown_report(run: EvalRun) -> str:
    """One eval run as Markdown: provenance, scorers (all tasks, seen, unseen), per-task rows, errors."""
    lines = [
        f"# Eval run {run.id if run.id is not None else ''}: {run.label}",
        "",
        f"- suite `{run.suite}`, {len(run.results)} generation runs, created {run.created}",
        f"- coder `{run.coder}`, evaluator `{run.evaluator}`, mode `{run.mode}`",
        f"- prompts `{run.prompt_version}` ("
        + ", ".join(f"{k} {v[:8]}" for k, v in sorted(run.prompt_hashes.items()))
        + ")",
        f"- qllm {run.qllm_version}, commit {run.git_commit}",
        "",
        "| scorer | all runs | seen tasks | unseen tasks | meaning |",
        "|---|---|---|---|---|",
    ]
    for scorer in SCORERS.values():
        cells = [aggregate(run, scorer.name, unseen).text() for unseen in (None, False, True)]
        lines.append(f"| {scorer.name} | {' | '.join(cells)} | {scorer.description} |")
    lines += [
        "",
        "| task | seed | status | semantic | first-try | tokens | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in run.results:
        semantic, first = (
            _two_decimals(r.scores.get("semantic_score")),
            _two_decimals(r.scores.get("first_try_validity")),
        )
        lines.append(
            f"| {r.task}{' (unseen)' if r.unseen else ''} | {r.seed} | {r.status} | {semantic} | {first} | "
            f"{r.scores.get('tokens') or 0:.0f} | {r.wall_s:.0f} |"
        )
    minutes = aggregate(run, "run_minutes")
    if minutes.median is not None:
        lines += ["", f"Median minutes per run: {minutes.median:.1f} (longest {max_minutes(run):.1f})."]
    unprobed = tasks_without_probes(run)
    if unprobed:
        lines += ["", f"No semantic scores for {', '.join(unprobed)}: the task declares no semantic probes."]
    kinds = error_kind_totals(run)
    lines += ["", "Sandbox errors over all failed attempts: " + (
        ", ".join(f"{k} {v}" for k, v in kinds.most_common()) or "none"
    )]  # fmt: skip
    return "\n".join(lines) + "\n"
