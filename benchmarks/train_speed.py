"""Training speed and peak memory per mixer and task, each preset against the others in one session.

Each (preset, task) trains in a fresh Python process (so its peak RSS is its own) with EPyMARL's QMIX
schedule: one environment (the riit and qllm recipes keep their own 8), a greedy test of
``--test-episodes`` episodes every ``--test-interval`` steps, start-up included in the wall time.
Ratios against EPyMARL itself come from ``benchmarks/vs_epymarl.py``, which runs both side by side.

Run:  .venv/bin/python benchmarks/train_speed.py [--steps 20000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_PRESETS = "iql,vdn,qmix,qatten,qllm,riit"
DEFAULT_TASKS = "lbf-8x8-2p-2f,lbf-2s-10x10-3p-3f,mpe-spread-3,rware-tiny-2ag"
SOFTMAX_TFCAF = """import torch


def credit_assignment(agents_q, state):
    n = agents_q.shape[1]
    weights = torch.softmax(state[:, :n], dim=1) * n
    return (weights * agents_q).sum(dim=1, keepdim=True)
"""

CHILD = """
import json, resource, sys, time
from pathlib import Path
from qllm.rl import preset, train
start = time.perf_counter()
args = json.loads(sys.argv[1])
config = preset(args.pop("preset"), **args)
result = train(config, runs_dir=Path(sys.argv[2]))
wall = time.perf_counter() - start
print(json.dumps({"steps": result.t_env, "wall_s": wall,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(
    preset: str, task: str, workdir: Path, *, steps: int, test_interval: int, test_episodes: int
) -> dict:
    tfcaf = workdir / "softmax_tfcaf.py"
    tfcaf.write_text(SOFTMAX_TFCAF)
    args = {
        "preset": preset, "task": task, "steps": steps, "envs": 1, "eval_interval": test_interval,
        "eval_episodes": test_episodes, "log_interval": 10**9, "checkpoint_interval": 10**9,
        "tfcaf": str(tfcaf) if preset in {"qllm", "riit-qllm"} else None,
    }  # fmt: skip
    if preset in {"riit", "qllm", "riit-qllm"}:
        del args["envs"]  # these recipes' own parallel rollouts (8 environments)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args), str(workdir / "runs")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {"preset": preset, "task": task, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=DEFAULT_PRESETS)
    parser.add_argument("--tasks", default=DEFAULT_TASKS)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--test-interval", type=int, default=10_000)
    parser.add_argument("--test-episodes", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            for preset in args.presets.split(","):
                row = measure(
                    preset, task, Path(tmp), steps=args.steps, test_interval=args.test_interval,
                    test_episodes=args.test_episodes,
                )  # fmt: skip
                row["steps_per_s"] = row["steps"] / row["wall_s"]
                rows.append(row)
                print(
                    f"{task:20s} {preset:7s} {row['steps_per_s']:7.0f} steps/s  {row['peak_mb']:5.0f} MB",
                    flush=True,
                )
    print(f"\n{'task':20s} {'preset':7s} {'steps/s':>8s} {'peak MB':>8s}")
    for r in rows:
        print(f"{r['task']:20s} {r['preset']:7s} {r['steps_per_s']:8.0f} {r['peak_mb']:8.0f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
