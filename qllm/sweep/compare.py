"""`qllm compare SWEEP SWEEP ...`: sweeps whose credit functions were written differently, side by side.

The QLLM paper's ablations train one preset on the same tasks with credit functions written under
different generation settings: Figure 7 varies the number of candidates K, section 5.3.2 drops the
evaluator. Here each setting is one sweep, and this module puts them side by side:

- what differs between the sweeps' generation settings, which names each sweep (``candidates=3``);
- per task and credit preset, the final greedy test return (mean ± 95% CI over seeds) of each sweep,
  and each sweep's difference from the first (Welch), with a verdict;
- a figure per task: final return against the sweeps, in the order given, and the learning curves;
- what each generation cost and produced: rounds, LLM calls, minutes, attempts that passed the
  sandbox, the chosen candidate, what its coder wrote and the weights it gives over a recorded episode.

The sweeps must train alike (the same budget per task and the same training overrides); otherwise a
difference in return would not be the generation's, and the comparison is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qllm.agents.run import RunFolderError
from qllm.agents.trace_view import RunSummary, load_run
from qllm.agents.trial import function_identity
from qllm.sweep.credit import credit_file, generation_dir
from qllm.sweep.plan import SweepError, SweepPlan
from qllm.sweep.report import (
    CONFIDENCE,
    REPORT_FILE,
    CurvePanel,
    SweepResults,
    budgets_text,
    difference_ci,
    load_results,
    mean_ci,
    overrides_text,
    plot_curve_panels,
    pyplot,
    signed_text,
    verdict,
)

GENERATION_NOT_COMPARED = ("seed", "task")
"""Generation settings that name a run rather than how it writes (they may differ freely)."""


class ComparisonError(SweepError):
    """Sweeps that cannot be compared: too few, nothing in common, or trained differently."""


@dataclass(frozen=True)
class Arm:
    """One sweep of the comparison, named by the generation settings that set it apart."""

    label: str
    sweep_dir: Path
    results: SweepResults
    generations: dict[str, GenerationFacts | None]
    """Task -> what its generation cost and chose (None: the credit function was given)."""
    functions: dict[str, str]
    """Task -> the identity of its credit function (:func:`function_identity`), when it has one."""

    def same_function(self, other: Arm, task: str) -> bool:
        """Whether both sweeps trained ``task`` with the same function (comments and docstrings aside):
        with the same seeds, their runs are then the same runs."""
        mine = self.functions.get(task)
        return mine is not None and mine == other.functions.get(task)


@dataclass(frozen=True)
class Comparison:
    arms: tuple[Arm, ...]
    tasks: tuple[str, ...]
    """The tasks every sweep trained, in the first sweep's order."""
    presets: tuple[str, ...]
    """The credit-function presets every sweep trained."""
    varied: tuple[str, ...]
    """The generation settings that differ between the sweeps."""


def _generation(plan: SweepPlan) -> dict[str, Any]:
    return {k: v for k, v in plan.generation.items() if k not in GENERATION_NOT_COMPARED}


def _check_trained_alike(plans: Sequence[tuple[Path, SweepPlan]], tasks: Sequence[str]) -> None:
    (first_dir, first), *others = plans
    for sweep_dir, plan in others:
        if plan.overrides != first.overrides:
            raise ComparisonError(
                f"{sweep_dir} trains with settings {plan.overrides}, {first_dir} with {first.overrides}: "
                "a difference in return would not be the credit function's"
            )
        for task in tasks:
            if plan.steps_for(task) != first.steps_for(task):
                raise ComparisonError(
                    f"{sweep_dir} trains {task} for {plan.steps_for(task):,} steps, {first_dir} for "
                    f"{first.steps_for(task):,}: compare sweeps with the same budget"
                )


def _labels(plans: Sequence[tuple[Path, SweepPlan]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Each sweep's label (the settings that differ, else its folder name) and the differing names."""
    settings = [_generation(plan) for _, plan in plans]
    names = sorted({name for s in settings for name in s})
    varied = tuple(n for n in names if len({repr(s.get(n)) for s in settings}) > 1)
    if not varied:
        return tuple(d.name for d, _ in plans), varied
    return tuple(", ".join(f"{n}={s.get(n)}" for n in varied) for s in settings), varied


def compare_sweeps(sweep_dirs: Sequence[Path]) -> Comparison:
    """Load the sweeps and check that they can be compared (:class:`ComparisonError` if not)."""
    if len(sweep_dirs) < 2:
        raise ComparisonError("a comparison needs at least two sweeps")
    plans = [(d, SweepPlan.load(d)) for d in sweep_dirs]
    first = plans[0][1]
    tasks = tuple(t for t in first.tasks if all(t in plan.tasks for _, plan in plans))
    presets = tuple(p for p in first.credit_presets if all(p in plan.credit_presets for _, plan in plans))
    if not tasks or not presets:
        raise ComparisonError(
            "the sweeps have no task and credit-function preset in common "
            f"(tasks: {', '.join(first.tasks)}; credit presets: {', '.join(first.credit_presets) or 'none'})"
        )
    _check_trained_alike(plans, tasks)
    labels, varied = _labels(plans)
    arms = tuple(
        Arm(
            label,
            d,
            load_results(d),
            {task: generation_facts(d, task) for task in tasks},
            {
                t: function_identity(credit_file(d, t).read_text())
                for t in tasks
                if credit_file(d, t).is_file()
            },
        )
        for label, (d, _) in zip(labels, plans, strict=True)
    )
    return Comparison(arms, tasks, presets, varied)


# --- returns ----------------------------------------------------------------------------------------


def returns_table(comparison: Comparison) -> str:
    """Markdown: each sweep's final return per task and preset, and its difference from the first."""
    base = comparison.arms[0]
    rows = []
    for task in comparison.tasks:
        for preset in comparison.presets:
            reference = base.results.final(task, preset)
            for arm in comparison.arms:
                ours = arm.results.final(task, preset)
                if not ours:
                    rows.append(f"| {task} | {preset} | {arm.label} | – | – | no finished run |")
                    continue
                if arm is base:
                    rows.append(f"| {task} | {preset} | {arm.label} | {mean_ci(ours)} | (reference) | |")
                    continue
                difference = difference_ci(ours, reference) if reference else None
                shown = signed_text(difference) if difference else "–"
                if arm.same_function(base, task):
                    said = "the same function as the reference: it trains identically"
                elif difference:
                    said = verdict(difference, arm.label)
                else:
                    said = "reference has no finished run"
                rows.append(f"| {task} | {preset} | {arm.label} | {mean_ci(ours)} | {shown} | {said} |")
    return (
        f"| task | preset | sweep | final return (mean ± {CONFIDENCE:.0%} CI) | difference from "
        f"`{base.label}` (Welch) | verdict |\n|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def plot_returns(comparison: Comparison, out: Path) -> Path:
    """One panel per task: each sweep's final return (mean and 95% CI; seeds as dots), per preset."""
    plt = pyplot()
    tasks = comparison.tasks
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.8), squeeze=False)
    positions = np.arange(len(comparison.arms))
    offsets = np.linspace(-0.15, 0.15, len(comparison.presets)) if len(comparison.presets) > 1 else [0.0]
    for ax, task in zip(axes.flat, tasks, strict=True):
        for preset, offset in zip(comparison.presets, offsets, strict=True):
            finals = [arm.results.final(task, preset) for arm in comparison.arms]
            estimates = [mean_ci(values) for values in finals]
            shown = [(p + offset, e) for p, e in zip(positions, estimates, strict=True) if e.n]
            ax.errorbar(
                [x for x, _ in shown], [e.mean for _, e in shown],
                yerr=[np.nan_to_num(e.half_width) for _, e in shown],
                marker="o", capsize=4, linestyle="none", label=preset,
            )  # fmt: skip
            for p, values in zip(positions, finals, strict=True):
                ax.scatter([p + offset + 0.06] * len(values), values, s=10, color="grey", alpha=0.6)
        ax.set_xticks(positions, [arm.label for arm in comparison.arms], fontsize="small")
        ax.set_title(task)
        ax.set_ylabel(f"final greedy test return ({CONFIDENCE:.0%} CI)")
        ax.grid(alpha=0.3, axis="y")
        if len(comparison.presets) > 1:
            ax.legend(fontsize="small")
    fig.suptitle("Final return per sweep: mean, 95% CI over seeds, and each seed (grey)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_curves(comparison: Comparison, out: Path) -> Path:
    """One panel per task and preset: each sweep's mean learning curve with its 95% band."""
    panels = [
        CurvePanel(
            f"{task}: {preset}",
            [
                (arm.label, arm.results.seeds_of(task, preset), arm.results.plan.steps_for(task))
                for arm in comparison.arms
            ],
        )
        for task in comparison.tasks
        for preset in comparison.presets
    ]
    return plot_curve_panels(panels, out, "sweep (seeds)")


# --- the generations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationFacts:
    """What one sweep's generation for one task cost and produced."""

    status: str
    rounds: int
    candidates: int
    attempts: int
    passed: int
    distinct: int
    """Different functions among the candidates that passed (comments and docstrings aside)."""
    llm_calls: int
    minutes: float
    chosen: str
    written: str
    """What the coder wrote for the chosen candidate (code, or a credit spec's JSON)."""
    mean_weights: tuple[float, ...]
    """Each agent's mean weight over the recorded episode in ``artifact.json``."""

    @classmethod
    def of(cls, summary: RunSummary) -> GenerationFacts:
        attempts = [a for r in summary.rounds for c in r.candidates for a in c.attempts]
        # A candidate's subject is its function's identity, comments and docstrings aside (the spec's
        # reasoning lives in a docstring); older traces have none, so their code stands in.
        valid = {c.final.subject or c.final.code for r in summary.rounds for c in r.candidates if c.ok}
        artifact = summary.artifact or {}
        weights = np.asarray(artifact.get("episode_weights", {}).get("weights") or [[]], dtype=float)
        return cls(
            status=summary.status,
            rounds=len(summary.rounds),
            candidates=sum(len(r.candidates) for r in summary.rounds),
            attempts=len(attempts),
            passed=sum(a.ok for a in attempts),
            distinct=len(valid),
            llm_calls=summary.totals.llm_calls,
            minutes=summary.totals.wall_s / 60,
            chosen=summary.final_choice or "–",
            written=str(artifact.get("written_code", "")).strip(),
            mean_weights=tuple(float(w) for w in weights.mean(axis=0)) if weights.size else (),
        )


def generation_facts(sweep_dir: Path, task: str) -> GenerationFacts | None:
    """The facts of the sweep's (latest) generation run for ``task``; None when the file was given."""
    runs = sorted(d for d in generation_dir(sweep_dir, task).glob("*") if d.is_dir())
    if not runs:
        return None
    try:
        return GenerationFacts.of(load_run(runs[-1]))
    except RunFolderError as exc:  # a trace this version cannot read: say which, in one line
        raise ComparisonError(f"{sweep_dir}'s generation for {task}: {exc}") from None


def generation_section(comparison: Comparison) -> str:
    rows, written = [], []
    for task in comparison.tasks:
        for arm in comparison.arms:
            facts = arm.generations[task]
            if facts is None:
                rows.append(f"| {task} | {arm.label} | given with --tfcaf | | | | | | | |")
                continue
            weights = ", ".join(f"{w:.2f}" for w in facts.mean_weights) or "–"
            rows.append(
                f"| {task} | {arm.label} | {facts.status} | {facts.rounds} | {facts.candidates} | "
                f"{facts.passed}/{facts.attempts} | {facts.distinct} | {facts.llm_calls} | "
                f"{facts.minutes:.1f} | {facts.chosen}: {weights} |"
            )
            earlier = next(
                (a for a in comparison.arms[: comparison.arms.index(arm)] if a.same_function(arm, task)), None
            )
            if earlier is not None:
                written.append(f"{task}, `{arm.label}`: the same function as `{earlier.label}`.\n")
            elif facts.written:
                written.append(
                    f"<details><summary>{task}, {arm.label}: what the coder wrote ({facts.chosen})</summary>"
                    f"\n\n```\n{facts.written}\n```\n\n</details>\n"
                )
    table = (
        "| task | sweep | status | rounds | candidates | attempts passed | distinct valid functions | LLM "
        "calls | minutes | chosen: mean weight per agent over a recorded episode |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    return "## The generations\n\n" + table + "\n" + "\n".join(written)


def write_comparison(sweep_dirs: Sequence[Path], out_dir: Path) -> Path:
    """Render the comparison of ``sweep_dirs`` into ``out_dir``: report.md and its PNGs."""
    comparison = compare_sweeps(sweep_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)
    finals = plot_returns(comparison, out_dir / "final_returns.png")
    curves = plot_curves(comparison, out_dir / "curves.png")
    first = comparison.arms[0].results.plan
    varied = ", ".join(f"`{name}`" for name in comparison.varied) or "nothing (the sweeps are repeats)"
    sweeps = "\n".join(
        f"- `{arm.label}`: `{arm.sweep_dir}` ({len(arm.results.curves)} of "
        f"{len(arm.results.plan.runs())} runs finished)"
        for arm in comparison.arms
    )
    budgets, overrides = budgets_text(first, comparison.tasks), overrides_text(first)
    sections = [
        "# Comparison of sweeps\n",
        f"What differs between the sweeps' generation settings: {varied}.\n\n{sweeps}\n",
        f"- **Budget per run** (environment steps): {budgets}.\n"
        f"- **Settings** for every preset: {overrides}.\n",
        "Reproduce: `qllm compare " + " ".join(str(a.sweep_dir) for a in comparison.arms) + "`\n",
        f"## Final greedy test return\n\n![final returns]({finals.name})\n\n{returns_table(comparison)}\n"
        "A verdict needs the interval of the difference to exclude 0.\n",
        f"## Learning curves\n\n![learning curves]({curves.name})\n",
        generation_section(comparison),
    ]
    path = out_dir / REPORT_FILE
    path.write_text("\n".join(sections))
    return path
