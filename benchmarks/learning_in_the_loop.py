"""Learning in the loop, measured: do the credit functions the graph chooses help a team learn?

For each task and generation seed, the graph generates a credit function twice with the built-in
local model, once with ``--selection consensus`` (no trials) and once with ``--selection trial`` (every
round's candidates trained briefly beside equal weights, ``qllm.agents.trial``). Then every chosen
function is trained for ``--factor`` times its family's trial budget, with several training seeds that
no trial used, beside VDN and QMIX with the same RL settings (the trials' settings: EPyMARL's QMIX
preset, epsilon annealed over half the budget; only the mixer differs). The report gives the final
greedy return of each method with 95% intervals and the verdict of each selection against VDN.

Phases (each resumable: finished work is read back, not redone)::

    .venv/bin/python benchmarks/learning_in_the_loop.py generate --out runs/bench/lil
    .venv/bin/python benchmarks/learning_in_the_loop.py train --out runs/bench/lil
    .venv/bin/python benchmarks/learning_in_the_loop.py report --out runs/bench/lil \\
        --report reports/learning-in-the-loop

``all`` runs the three in order. Intervals over a selection's functions are taken over the per-function
means (one per generation seed, each the mean of its training seeds): the generation is the random
draw whose effect is being measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qllm.agents import GenerationRun, GenerationSettings, RunStatus
from qllm.agents.run import SETTINGS_FILE
from qllm.agents.trace import DecisionEvent, LLMCallEvent, TrialEvent, read_events
from qllm.agents.trial import TrialSettings, function_identity
from qllm.envs import resolve_task
from qllm.sweep.execute import InlineExecutor, RunJob, RunRecord
from qllm.sweep.report import difference_ci, mean_ci

TASKS = ("matrix-climbing", "mpe-spread-3", "lbf-8x8-2p-2f")
SELECTIONS = ("consensus", "trial")
BASELINES = ("vdn", "qmix")


@dataclass(frozen=True)
class Plan:
    tasks: tuple[str, ...]
    selections: tuple[str, ...]
    generation_seeds: tuple[int, ...]
    training_seeds: tuple[int, ...]
    baseline_seeds: tuple[int, ...]
    """VDN and QMIX: as many training seeds as the functions get, or more (they are cheaper)."""
    factor: int
    rounds: int
    candidates: int
    trial_seeds: int

    def long_settings(self, task: str) -> TrialSettings:
        """The longer training: the trials' RL settings at ``factor`` times their budget."""
        steps = self.factor * resolve_task(task).trial_steps
        return TrialSettings(task=task, steps=steps, seeds=self.training_seeds, timeout_s=3600.0)


# --- phase 1: generate ----------------------------------------------------------------------------


def generation_dir(out: Path, task: str, selection: str, seed: int) -> Path:
    return out / "generate" / f"{task}__{selection}__{seed}"


def generate(plan: Plan, out: Path) -> None:
    for task in plan.tasks:
        for seed in plan.generation_seeds:
            for selection in plan.selections:
                parent = generation_dir(out, task, selection, seed)
                summary = parent / "summary.json"
                if summary.is_file():
                    continue
                settings = GenerationSettings(
                    task=task, selection=selection, seed=seed, rounds=plan.rounds,
                    candidates=plan.candidates, trial_seeds=plan.trial_seeds,
                )  # fmt: skip
                started = time.perf_counter()
                existing = [p for p in parent.glob("*") if (p / SETTINGS_FILE).is_file()]
                run = GenerationRun.open(existing[0]) if existing else GenerationRun.create(settings, parent)
                outcome = run.execute()
                wall = time.perf_counter() - started
                record = _generation_record(outcome, task, selection, seed, wall)
                summary.write_text(json.dumps(record, indent=2) + "\n")
                print(
                    f"{task} {selection} seed {seed}: {record['status']} in {wall / 60:.1f} min "
                    f"(LLM {record['llm_seconds'] / 60:.1f}, trials {record['trial_seconds'] / 60:.1f} "
                    f"core-min); beats equal weights on trial: {record['beats_reference']}",
                    flush=True,
                )


def _generation_record(outcome: Any, task: str, selection: str, seed: int, wall: float) -> dict[str, Any]:
    events = list(read_events(outcome.run_dir / "trace.jsonl"))
    decisions = [e for e in events if isinstance(e, DecisionEvent)]
    source = outcome.artifact.read_text() if outcome.artifact else None
    return {
        "task": task,
        "selection": selection,
        "seed": seed,
        "status": outcome.status.value,
        "run_dir": str(outcome.run_dir),
        "artifact": str(outcome.artifact) if outcome.artifact else None,
        "identity": function_identity(source) if source else None,
        "rounds": len(decisions),
        "beats_reference": decisions[-1].beats_reference if decisions else None,
        "wall_seconds": wall,
        "llm_seconds": sum(e.latency_s for e in events if isinstance(e, LLMCallEvent)),
        "trial_seconds": sum(e.wall_s for e in events if isinstance(e, TrialEvent)),
        "trials": sum(isinstance(e, TrialEvent) for e in events),
    }


def generations(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "generate").glob("*/summary.json"))]


# --- phase 2: train the chosen functions and the baselines for longer -------------------------------


def training_jobs(plan: Plan, out: Path) -> list[RunJob]:
    jobs = []
    chosen = [g for g in generations(out) if g["status"] == RunStatus.SUCCEEDED.value]
    for task in plan.tasks:
        long = plan.long_settings(task)
        subjects: dict[str, str | None] = dict.fromkeys(BASELINES)
        subjects |= {g["identity"][:12]: g["artifact"] for g in chosen if g["task"] == task}
        for subject, artifact in subjects.items():
            for seed in plan.baseline_seeds if artifact is None else plan.training_seeds:
                config = long.config(seed, Path(artifact) if artifact else None)
                config = config.replace(
                    mixer=subject if artifact is None else "tfcaf", preset=subject,
                    eval_interval=max(1, long.steps // 2),  # the final return is what is compared
                )  # fmt: skip
                name = f"{task}__{subject}__{seed}"
                jobs.append(RunJob(name, config.to_dict(), str((out / "train" / name).resolve()), 1))
    return jobs


def train(plan: Plan, out: Path, workers: int) -> None:
    from qllm.sweep.ray_executor import RayExecutor  # Ray starts only in this phase

    ledger = out / "train.jsonl"
    done = (
        {json.loads(line)["run"] for line in ledger.read_text().splitlines()} if ledger.is_file() else set()
    )
    jobs = [job for job in training_jobs(plan, out) if job.name not in done]
    print(f"{len(jobs)} training runs to do ({len(done)} done)", flush=True)
    if not jobs:
        return
    executor = InlineExecutor() if workers == 1 else RayExecutor(workers=workers)
    try:
        for job in jobs:
            executor.submit(job)
        remaining = len(jobs)
        while remaining:
            for job, record in executor.wait(5.0):
                remaining -= 1
                with ledger.open("a") as f:
                    f.write(json.dumps(record.__dict__) + "\n")
                final = f"{record.final_return:.3g}" if record.final_return is not None else record.error
                print(f"  {job.name}: {record.status} in {record.seconds:.0f} s, return {final}", flush=True)
    finally:
        executor.close()


# --- phase 3: report ------------------------------------------------------------------------------


def _finals(out: Path) -> dict[str, float]:
    records = [RunRecord(**json.loads(line)) for line in (out / "train.jsonl").read_text().splitlines()]
    return {r.run: r.final_return for r in records if r.status == "done" and r.final_return is not None}


def results(plan: Plan, out: Path) -> dict[str, dict[str, Any]]:
    """Per task: each method's per-unit final returns (baselines: per training seed; selections: per
    generation seed, the mean over its training seeds)."""
    finals = _finals(out)
    chosen = generations(out)
    table: dict[str, dict[str, Any]] = {}
    for task in plan.tasks:
        row: dict[str, Any] = {}
        for baseline in BASELINES:
            row[baseline] = [
                finals[n] for s in plan.baseline_seeds if (n := f"{task}__{baseline}__{s}") in finals
            ]
        for selection in plan.selections:
            per_function = []
            for g in (g for g in chosen if g["task"] == task and g["selection"] == selection):
                if g["identity"] is None:
                    continue
                runs = [f"{task}__{g['identity'][:12]}__{s}" for s in plan.training_seeds]
                values = [finals[n] for n in runs if n in finals]
                if values:
                    per_function.append(statistics.fmean(values))
            row[selection] = per_function
        table[task] = row
    return table


def _verdict(a: list[float], b: list[float]) -> str:
    d = difference_ci(a, b)
    if d.n < 2:
        return f"{d.mean:+.3g} (too few runs for an interval)"
    if abs(d.mean) <= d.half_width:
        return f"{d.mean:+.3g} ± {d.half_width:.2g}: no clear difference"
    return f"**{d.mean:+.3g} ± {d.half_width:.2g}: {'higher' if d.mean > 0 else 'lower'}**"


def _trial_versus(generation: dict[str, Any]) -> str:
    """The chosen function's trial difference from equal weights, as its artifact recorded it."""
    if not generation["artifact"]:
        return "-"
    metadata = json.loads((Path(generation["artifact"]).parent / "artifact.json").read_text())
    trials = metadata.get("trials")
    if not trials or not trials["chosen"].get("vs_reference"):
        return "-"
    d = trials["chosen"]["vs_reference"]
    verdict = "beats" if generation["beats_reference"] else "within noise"
    return f"{d['mean']:+.3g} ± {d['noise']:.2g} ({verdict})"


def plot(table: dict[str, dict[str, Any]], methods: list[str], out: Path) -> None:
    """Each task's final returns: every unit as a dot, the mean with its 95% interval as a bar."""
    import matplotlib  # only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(4.2 * len(table), 3.6), layout="constrained")
    for ax, (task, row) in zip(list(getattr(axes, "flat", [axes])), table.items(), strict=True):
        for k, method in enumerate(methods):
            values = row[method]
            if not values:
                continue
            estimate = mean_ci(values)
            ax.scatter([k] * len(values), values, s=14, color="0.5", zorder=3)
            half = 0.0 if estimate.n < 2 else estimate.half_width
            ax.errorbar([k], [estimate.mean], yerr=[half], fmt="o", color="C0", capsize=5, zorder=4)
        ax.set_xticks(range(len(methods)), methods)
        ax.set_title(task)
        ax.grid(alpha=0.3, axis="y")
    fig.supylabel("final greedy return")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def report(plan: Plan, out: Path, report_dir: Path, command: str) -> Path:
    table = results(plan, out)
    gens = generations(out)
    methods = [*plan.selections, *BASELINES]
    lines = [
        "# Learning in the loop: do the chosen credit functions help a team learn?",
        "",
        f"Reproduce: `{command}`",
        "",
        "## Final greedy return (mean ± 95% CI)",
        "",
        "Selections: one value per generation seed (the mean over its training seeds); baselines: one "
        "per training seed.",
        "",
        "| task | steps | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for task, row in table.items():
        cells = [str(mean_ci(row[m])) if row[m] else "-" for m in methods]
        lines.append(f"| {task} | {plan.long_settings(task).steps:,} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Against VDN (Welch 95% CI of the difference)",
        "",
        "| task | selection | difference |",
        "|---|---|---|",
    ]
    for task, row in table.items():
        for selection in plan.selections:
            if row[selection] and row["vdn"]:
                lines.append(f"| {task} | {selection} | {_verdict(row[selection], row['vdn'])} |")
    finals = _finals(out)
    lines += [
        "",
        "## Each generation: its function, its trial against VDN, and its longer training against VDN",
        "",
        "Trial: the chosen function's mean greedy return over its trial minus equal weights' on the same "
        "seed (from `artifact.json`; consensus runs train no trials). Long run: the function's mean final "
        "return over its training seeds minus VDN's mean.",
        "",
        "| task | selection | seed | function | rounds | trial vs VDN | long run vs VDN | minutes | trials |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in gens:
        row = table[g["task"]]
        vdn = statistics.fmean(row["vdn"]) if row["vdn"] else None
        ident = (g["identity"] or "")[:12]
        runs = [finals[n] for s in plan.training_seeds if (n := f"{g['task']}__{ident}__{s}") in finals]
        long = f"{statistics.fmean(runs) - vdn:+.3g}" if runs and vdn is not None else "-"
        lines.append(
            f"| {g['task']} | {g['selection']} | {g['seed']} | `{ident[:8]}` | {g['rounds']} | "
            f"{_trial_versus(g)} | {long} | {g['wall_seconds'] / 60:.1f} | {g['trials']} |"
        )
    report_dir.mkdir(parents=True, exist_ok=True)
    plot(table, methods, report_dir / "final_returns.png")
    lines += ["", "![final greedy return per method and task](final_returns.png)"]
    (report_dir / "results.json").write_text(
        json.dumps({"table": table, "generations": gens}, indent=2) + "\n"
    )
    path = report_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=["generate", "train", "report", "all"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/learning-in-the-loop"))
    parser.add_argument("--report", type=Path, default=Path("reports/learning-in-the-loop"))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--selections", default=",".join(SELECTIONS))
    parser.add_argument("--generation-seeds", type=int, default=3)
    parser.add_argument("--training-seeds", type=int, default=3)
    parser.add_argument("--baseline-seeds", type=int, help="default: --training-seeds")
    parser.add_argument("--factor", type=int, default=5, help="longer budget = factor x the trial budget")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--trial-seeds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    plan = Plan(
        tasks=tuple(args.tasks.split(",")),
        selections=tuple(args.selections.split(",")),
        generation_seeds=tuple(range(args.generation_seeds)),
        training_seeds=tuple(100 + k for k in range(args.training_seeds)),  # seeds no trial used
        baseline_seeds=tuple(100 + k for k in range(args.baseline_seeds or args.training_seeds)),
        factor=args.factor,
        rounds=args.rounds,
        candidates=args.candidates,
        trial_seeds=args.trial_seeds,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase in ("generate", "all"):
        generate(plan, args.out)
    if args.phase in ("train", "all"):
        train(plan, args.out, args.workers)
    if args.phase in ("report", "all"):
        command = (
            f"python benchmarks/learning_in_the_loop.py all --tasks {args.tasks} "
            f"--selections {args.selections} "
            f"--generation-seeds {args.generation_seeds} --training-seeds {args.training_seeds} "
            f"--baseline-seeds {args.baseline_seeds or args.training_seeds} "
            f"--factor {args.factor} --rounds {args.rounds} --candidates {args.candidates} "
            f"--trial-seeds {args.trial_seeds}"
        )
        report(plan, args.out, args.report, command)


if __name__ == "__main__":
    main()
