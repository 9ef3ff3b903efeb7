"""Learning check: QMIX and VDN on lbf-8x8-2p-2f and mpe-spread-3, final greedy test return over seeds.

A correctness check of the trainer, not a tuned result: with a stated budget, does the learned greedy
policy beat a random policy, and by how much? Prints, per (task, preset), the random-policy return (the
same evaluation seeds), the final greedy test return per seed, and their mean. EPyMARL's own QMIX runs
on this machine kind (one seed each) reach at most ~0.16 on LBF at 100k steps; several hundred thousand steps
are needed before methods separate.

Run:  .venv/bin/python benchmarks/learning_check.py [--steps 100000] [--seeds 0,1] [--collect-in-line]
      [--json out.json]
``--collect-in-line`` trains with the in-line loop (each batch collected after the update) instead of the
default, the next batch collected ahead in a second process during the update. The mean comes with a
95% interval over seeds (Student's t), where there are two seeds or more.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import scipy.stats

from qllm.envs.recording import record
from qllm.rl import preset, train
from qllm.rl.evaluation import EVAL_SEED_OFFSET


def random_return(task: str, episodes: int) -> float:
    """Mean team return of the uniform random policy on the evaluation seeds."""
    return float(record(task, episodes, seed=EVAL_SEED_OFFSET).episodes.returns.mean())


def half_width_95(values: list[float]) -> float | None:
    """Half-width of the 95% Student-t interval of the mean of ``values`` (None for fewer than two)."""
    if len(values) < 2:
        return None
    t = scipy.stats.t.ppf(0.975, len(values) - 1)
    return float(t * statistics.stdev(values) / len(values) ** 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="lbf-8x8-2p-2f,mpe-spread-3")
    parser.add_argument("--presets", default="qmix,vdn")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--collect-in-line", action="store_true", help="collect each batch after the update")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            baseline = random_return(task, args.eval_episodes)
            for name in args.presets.split(","):
                returns = []
                for seed in seeds:
                    start = time.perf_counter()
                    config = preset(
                        name, task=task, steps=args.steps, seed=seed, eval_interval=args.steps // 5,
                        eval_episodes=args.eval_episodes, checkpoint_interval=10**9,
                        collect_ahead=not args.collect_in_line,
                    )  # fmt: skip
                    result = train(config, runs_dir=Path(tmp))
                    returns.append(result.final_test_return)
                    print(f"{task} {name} seed {seed}: {result.final_test_return:.3f} "
                          f"({time.perf_counter() - start:.0f}s)", flush=True)  # fmt: skip
                rows.append({
                    "task": task, "preset": name, "steps": args.steps, "seeds": seeds, "returns": returns,
                    "mean": statistics.mean(returns), "ci95": half_width_95(returns), "random": baseline,
                    "collect_ahead": not args.collect_in_line,
                })  # fmt: skip
    print(f"\nbudget: {args.steps} env steps per run, {len(seeds)} seeds, {args.eval_episodes} test episodes")
    collection = "in line, after each update" if args.collect_in_line else "ahead, during the update"
    print(f"collection: {collection}")
    print(f"{'task':16s} {'preset':6s} {'random':>8s} {'final (mean ± 95%)':>20s}  per seed")
    for r in rows:
        per_seed = ", ".join(f"{v:.3f}" for v in r["returns"])
        mean = f"{r['mean']:.3f}" + ("" if r["ci95"] is None else f" ± {r['ci95']:.3f}")
        print(f"{r['task']:16s} {r['preset']:6s} {r['random']:8.3f} {mean:>20s}  {per_seed}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
