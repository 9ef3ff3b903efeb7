"""`qllm report SWEEP`: what the QLLM paper shows, from a sweep's run folders.

- learning curves per task, mean and 95% confidence band over seeds (paper Fig. 4-6);
- the final greedy test return of every preset on every task, mean ± 95% CI (paper Table 1), and each
  credit-function preset against the same recipe with a learned mixer (QLLM vs QMIX, RIIT-QLLM vs RIIT);
- the high-dimensional series when the sweep has several ``mpe-spread-N`` tasks: return against N;
- for the credit functions, the weights each agent gets over a greedy episode, above what happened.

Confidence intervals are Student-t intervals over seeds (each seed's value is the mean of its greedy
test episodes). Curves are read from each run's ``metrics.csv`` and put on a common grid of steps by
linear interpolation, since evaluations happen at slightly different steps in different runs. Only
finished runs count; a report of a sweep in progress says how many are missing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from scipy import stats

from qllm.rl.logger import METRICS_FILE, read_metrics, series
from qllm.sweep.credit import credit_file
from qllm.sweep.execute import Ledger, RunRecord, is_finished
from qllm.sweep.interpret import EPISODES, credit_episode, plot_credit_episode
from qllm.sweep.plan import EVALUATIONS_PER_RUN, RUNS_DIR, RunKey, SweepPlan

REPORT_DIR = "report"
REPORT_FILE = "report.md"
CONFIDENCE = 0.95


@dataclass(frozen=True)
class CreditPair:
    """A credit-function preset, the learned-mixer preset it is compared with, and what else differs."""

    credit: str
    baseline: str
    note: str


CREDIT_PAIRS = (
    CreditPair("qllm", "qmix", "`qllm` uses the QLLM authors' RL settings and `qmix` EPyMARL's"),
    CreditPair("riit-qllm", "riit", "`riit-qllm` and `riit` share every setting but the mixer"),
)
"""The paper's QMIX-based comparisons."""
SCALING_TASK = re.compile(r"mpe-spread-(\d+)$")


class NoFinishedRunError(ValueError):
    """A sweep with nothing to report yet."""


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its confidence half-width (NaN with one seed)."""

    mean: float
    half_width: float
    n: int

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.3g} (1 seed)"
        return f"{self.mean:.3g} ± {self.half_width:.2g}"


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """Student-t confidence interval of the mean of ``values``."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return Estimate(float(data.mean()) if len(data) else math.nan, math.nan, len(data))
    sem = data.std(ddof=1) / math.sqrt(len(data))
    return Estimate(
        float(data.mean()), float(stats.t.ppf(0.5 + confidence / 2, len(data) - 1) * sem), len(data)
    )


def difference_ci(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """Welch confidence interval of ``mean(a) - mean(b)`` (unequal variances)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if min(len(x), len(y)) < 2:
        return Estimate(float(x.mean() - y.mean()), math.nan, min(len(x), len(y)))
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    if vx + vy == 0:
        return Estimate(float(x.mean() - y.mean()), 0.0, min(len(x), len(y)))
    dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    half = stats.t.ppf(0.5 + confidence / 2, dof) * math.sqrt(vx + vy)
    return Estimate(float(x.mean() - y.mean()), float(half), min(len(x), len(y)))


@dataclass(frozen=True)
class Curve:
    """Greedy test return of one run against environment steps."""

    steps: np.ndarray
    returns: np.ndarray

    @property
    def final(self) -> float:
        return float(self.returns[-1])


@dataclass(frozen=True)
class SweepResults:
    """The finished runs of a sweep, grouped as the report needs them."""

    plan: SweepPlan
    curves: dict[RunKey, Curve]

    def seeds_of(self, task: str, preset: str) -> list[Curve]:
        return [c for k, c in sorted(self.curves.items()) if (k.task, k.preset) == (task, preset)]

    def final(self, task: str, preset: str) -> list[float]:
        return [curve.final for curve in self.seeds_of(task, preset)]


def load_results(sweep_dir: Path) -> SweepResults:
    plan = SweepPlan.load(sweep_dir)
    curves = {}
    for key in plan.runs():
        run_dir = sweep_dir / RUNS_DIR / key.name
        if is_finished(run_dir):
            steps, returns = series(read_metrics(run_dir / METRICS_FILE), "eval/return_mean")
            curves[key] = Curve(np.asarray(steps, dtype=float), np.asarray(returns, dtype=float))
    return SweepResults(plan, curves)


def band(curves: Sequence[Curve], budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean and CI half-width over ``curves``, interpolated onto a common grid."""
    grid = np.linspace(0, budget, 2 * EVALUATIONS_PER_RUN + 1)
    values = np.stack([np.interp(grid, c.steps, c.returns) for c in curves])
    estimates = [mean_ci(column) for column in values.T]
    return (
        grid,
        np.array([e.mean for e in estimates]),
        np.nan_to_num(np.array([e.half_width for e in estimates])),
    )


def pyplot():
    """matplotlib.pyplot for files, loaded only when a report is drawn."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def thousands(value: float, _position: int) -> str:
    """Axis ticks in thousands of steps (``150k``): full numbers overlap on a third of a page."""
    return f"{value / 1000:g}k" if value else "0"


@dataclass(frozen=True)
class CurvePanel:
    """One panel of learning curves: a line (mean, 95% band over its curves) per label."""

    title: str
    lines: list[tuple[str, list[Curve], int]]
    """(label, the runs' curves, their budget in steps) per line; lines without curves are skipped."""


def plot_curve_panels(panels: Sequence[CurvePanel], out: Path, legend_title: str) -> Path:
    """The panels, three to a row: each line's mean greedy test return with its 95% band."""
    plt = pyplot()
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for label, curves, budget in panel.lines:
            if not curves:
                continue
            steps, mean, half = band(curves, budget)
            (line,) = ax.plot(steps, mean, label=f"{label} ({len(curves)})", linewidth=2)
            ax.fill_between(steps, mean - half, mean + half, color=line.get_color(), alpha=0.15)
        ax.set_title(panel.title)
        ax.xaxis.set_major_formatter(thousands)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("greedy test return")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small", title=legend_title, title_fontsize="small")
        else:
            ax.text(0.5, 0.5, "no finished run yet", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(f"Learning curves: mean and {CONFIDENCE:.0%} confidence band over seeds")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_curves(results: SweepResults, out: Path) -> Path:
    """One panel per task: each preset's mean greedy test return with its 95% band."""
    plan = results.plan
    panels = [
        CurvePanel(task, [(p, results.seeds_of(task, p), plan.steps_for(task)) for p in plan.presets])
        for task in plan.tasks
    ]
    return plot_curve_panels(panels, out, "preset (seeds)")


def scaling_tasks(plan: SweepPlan) -> dict[int, str]:
    """N -> task for the sweep's ``mpe-spread-N`` tasks (the paper's high-dimensional series)."""
    found = {int(m.group(1)): task for task in plan.tasks if (m := SCALING_TASK.match(task))}
    return dict(sorted(found.items()))


def plot_scaling(results: SweepResults, out: Path) -> Path | None:
    """Final return against the number of agents N on mpe-spread-N; None with fewer than two N."""
    series_tasks = scaling_tasks(results.plan)
    if len(series_tasks) < 2:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for preset in results.plan.presets:
        points = [(n, mean_ci(results.final(task, preset))) for n, task in series_tasks.items()]
        points = [(n, e) for n, e in points if e.n]
        if points:
            ns = [n for n, _ in points]
            ax.errorbar(
                ns, [e.mean for _, e in points], yerr=[np.nan_to_num(e.half_width) for _, e in points],
                marker="o", capsize=3, label=preset,
            )  # fmt: skip
    ax.set_xticks(list(series_tasks))
    ax.set_xlabel("agents and landmarks N (mpe-spread-N)")
    ax.set_ylabel(f"final greedy test return ({CONFIDENCE:.0%} CI)")
    ax.set_title("High-dimensional series")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def final_table(results: SweepResults) -> str:
    """Markdown: final greedy test return, mean ± CI over seeds; the best mean per task in bold."""
    plan = results.plan
    header = "| preset | " + " | ".join(plan.tasks) + " |\n|---|" + "---|" * len(plan.tasks) + "\n"
    cells = {(t, p): mean_ci(results.final(t, p)) for t in plan.tasks for p in plan.presets}
    best = {
        t: max((cells[t, p].mean for p in plan.presets if cells[t, p].n), default=None) for t in plan.tasks
    }
    rows = []
    for p in plan.presets:
        row = []
        for t in plan.tasks:
            estimate = cells[t, p]
            text = "–" if not estimate.n else str(estimate)
            row.append(f"**{text}**" if estimate.n and estimate.mean == best[t] else text)
        rows.append(f"| {p} | " + " | ".join(row) + " |")
    return header + "\n".join(rows) + "\n"


def verdict(difference: Estimate, name: str) -> str:
    if math.isnan(difference.half_width):
        return "one seed: no interval"
    if difference.mean - difference.half_width > 0:
        return f"**{name} higher**"
    if difference.mean + difference.half_width < 0:
        return f"**{name} lower**"
    return "no clear difference"


def pairs_section(results: SweepResults) -> str | None:
    """Markdown: each credit-function preset against its learned-mixer counterpart, per task."""
    plan = results.plan
    pairs = [p for p in CREDIT_PAIRS if p.credit in plan.presets and p.baseline in plan.presets]
    rows = []
    for task in plan.tasks:
        for pair in pairs:
            ours, theirs = results.final(task, pair.credit), results.final(task, pair.baseline)
            if ours and theirs:
                difference = difference_ci(ours, theirs)
                rows.append(
                    f"| {task} | {pair.credit} vs {pair.baseline} | {mean_ci(ours)} | {mean_ci(theirs)} | "
                    f"{signed_text(difference)} | {verdict(difference, pair.credit)} |"
                )
    if not rows:
        return None
    notes = "; ".join(pair.note for pair in pairs)
    return (
        f"## Credit function against a learned mixer\n\n{notes}. A verdict needs the interval of the "
        f"difference to exclude 0.\n\n| task | pair | credit function | learned mixer | difference "
        f"({CONFIDENCE:.0%} CI, Welch) | verdict |\n|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def signed_text(difference: Estimate) -> str:
    if math.isnan(difference.half_width):
        return f"{difference.mean:+.3g}"
    return f"{difference.mean:+.3g} ± {difference.half_width:.2g}"


def reproduce_command(plan: SweepPlan, sweep_dir: Path) -> str:
    parts = [
        f"qllm sweep {sweep_dir}",
        f"--tasks {','.join(plan.tasks)}",
        f"--mixers {','.join(plan.presets)}",
        f"--seeds {len(plan.seeds)}"
        if plan.seeds == tuple(range(len(plan.seeds)))
        else f"--seeds {plan.seeds}",
        f"--steps {plan.steps}",
        *(f"--task-steps {task}={steps}" for task, steps in plan.task_steps.items()),
        *(f"--set {name}={value}" for name, value in plan.overrides.items()),
        *(f"--tfcaf {task}={path}" for task, path in plan.credit_files.items()),
    ]
    if plan.credit_presets and set(plan.credit_files) != set(plan.tasks):
        g = plan.generation
        parts.append(
            f"--coder {g['coder']} --evaluator {g['evaluator']} --mode {g['mode']} "
            f"--selection {g['selection']} --candidates {g['candidates']} --rounds {g['rounds']}"
        )
    return " \\\n    ".join(parts)


def budgets_text(plan: SweepPlan, tasks: Sequence[str]) -> str:
    """``task 40,000, ...``: each task's budget in environment steps."""
    return ", ".join(f"{t} {plan.steps_for(t):,}" for t in tasks)


def overrides_text(plan: SweepPlan) -> str:
    """The training settings applied on top of every preset, as code spans (``none`` without any)."""
    return ", ".join(f"`{k}={v}`" for k, v in plan.overrides.items()) or "none"


def budget_section(results: SweepResults, ledger: Ledger) -> str:
    plan = results.plan
    done = [r for r in ledger.records() if r.status == "done"]
    presets = {key.name: key.preset for key in plan.runs()}
    per_preset = {p: [r.seconds for r in done if presets.get(r.run) == p] for p in plan.presets}
    times = ", ".join(f"{p} {np.mean(s):.0f} s" for p, s in per_preset.items() if s)
    budgets, overrides = budgets_text(plan, plan.tasks), overrides_text(plan)
    lines = [
        f"- **Runs**: {len(results.curves)} of {len(plan.runs())} finished "
        f"({len(plan.tasks)} tasks x {len(plan.presets)} presets x {len(plan.seeds)} seeds).",
        f"- **Budget per run** (environment steps): {budgets}.",
        f"- **Settings**: each preset's own (`qllm/rl/config.py`), with these for every preset: {overrides}.",
        f"- **Training time**: {sum(r.seconds for r in done) / 3600:.2f} hours of runs in all"
        f"{_wall_time(done)}; mean per run: {times}.",
    ]
    failed = sorted(
        {r.run for r in ledger.records() if r.status == "failed"} - {k.name for k in results.curves}
    )
    if failed:
        lines.append(f"- **Failed** (see `ledger.jsonl`): {', '.join(failed)}.")
    return "\n".join(lines) + "\n"


def _wall_time(done: Sequence[RunRecord]) -> str:
    """``, in H hours of wall time`` from the first run's start to the last one's end (ledger times)."""
    if not done:
        return ""
    ends = [datetime.strptime(r.finished, "%Y-%m-%dT%H:%M:%S%z").timestamp() for r in done]
    starts = [end - r.seconds for end, r in zip(ends, done, strict=True)]
    return f", in {(max(ends) - min(starts)) / 3600:.2f} hours of wall time"


def credit_section(sweep_dir: Path, results: SweepResults, out_dir: Path) -> str:
    """Per task: the credit function and the weights it gave a trained team over a greedy episode."""
    plan = results.plan
    parts = []
    for task in plan.tasks:
        runs = [
            k for p in plan.credit_presets for k in sorted(results.curves) if (k.task, k.preset) == (task, p)
        ]
        path = credit_file(sweep_dir, task)
        if not runs or not path.is_file():
            continue
        run = runs[0]
        episode = credit_episode(sweep_dir / RUNS_DIR / run.name, path)
        plot = plot_credit_episode(
            episode,
            out_dir / f"credit_{task}.png",
            f"{task}: {run.preset}, seed {run.seed}, best of {EPISODES} greedy episodes",
        )
        mean_weights = ", ".join(
            f"{name} {w:.2f}"
            for name, w in zip(episode.agent_names, episode.weights.mean(axis=0), strict=True)
        )
        parts.append(
            f"### {task}\n\n![credit over an episode]({plot.name})\n\n"
            f"Run `{run.name}`, the best of {EPISODES} greedy episodes (return "
            f"{episode.episode_return:.3g}); mean weight per agent: "
            f"{mean_weights}; the weights range from {episode.weights.min():.2f} to "
            f"{episode.weights.max():.2f}.\n\n"
            f"<details><summary>The credit function ({path.name})</summary>\n\n```python\n"
            f"{path.read_text().strip()}\n```\n\n</details>\n"
        )
    return "\n".join(parts)


def write_report(sweep_dir: Path, out_dir: Path | None = None) -> Path:
    """Render the report of the sweep in ``sweep_dir`` into ``out_dir`` (default ``SWEEP/report``)."""
    results = load_results(sweep_dir)
    if not results.curves:
        raise NoFinishedRunError(f"{sweep_dir} has no finished run yet")
    out_dir = out_dir or sweep_dir / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = plot_curves(results, out_dir / "curves.png")
    sections = [
        f"# Sweep report: {sweep_dir.name}\n",
        budget_section(results, Ledger(sweep_dir)),
        f"Reproduce:\n\n```bash\n{reproduce_command(results.plan, sweep_dir)}\n```\n",
        f"## Learning curves\n\n![learning curves]({curves.name})\n",
        f"## Final greedy test return (mean ± {CONFIDENCE:.0%} CI over seeds)\n\n{final_table(results)}",
    ]
    pairs = pairs_section(results)
    if pairs:
        sections.append(pairs)
    scaling = plot_scaling(results, out_dir / "scaling.png")
    if scaling is not None:
        sections.append(f"## High-dimensional series (mpe-spread-N)\n\n![return against N]({scaling.name})\n")
    credit = credit_section(sweep_dir, results, out_dir)
    if credit:
        sections.append(
            "## What the credit functions do\n\nThe weight of each agent's Q at every state of a greedy "
            f"episode of a trained team, the best of {EPISODES} (top), the team reward (middle) and each "
            "agent's action (bottom).\n\n" + credit
        )
    path = out_dir / REPORT_FILE
    path.write_text("\n".join(sections))
    return path
