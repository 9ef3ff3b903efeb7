"""How often the graph ends with a valid credit function, and what a run costs, per task and model.

For each task and seed, one full generation run with the given settings (default: K=3, L=3, 2 repairs,
early stop, as ``qllm generate``) is made against the configured models (default: the built-in local
model). Per run: final status, LLM calls, tokens in/out, wall time, attempts, and the share of
attempts that passed the sandbox. Per task: the share of runs that ended with a valid artifact.

Run:  .venv/bin/python benchmarks/generation_local.py [--tasks matrix-climbing,mpe-spread-3]
          [--seeds 3] [--coder local] [--evaluator local] [--mode auto] [--json out.json]
Run folders are kept under --runs-dir (default runs/bench-generation) for inspection with
``qllm trace show``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from qllm.agents import GenerationRun, GenerationSettings, RunStatus
from qllm.agents.trace import LLMCallEvent, ValidationEvent, read_events

TASKS = ("matrix-climbing", "lbf-2s-10x10-3p-3f", "mpe-spread-3")


def measure(settings: GenerationSettings, runs_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    outcome = GenerationRun.create(settings, runs_dir).execute()
    wall = time.perf_counter() - started
    events = list(read_events(outcome.run_dir / "trace.jsonl"))
    calls = [e for e in events if isinstance(e, LLMCallEvent)]
    checks = [e for e in events if isinstance(e, ValidationEvent)]
    return {
        "task": settings.task,
        "seed": settings.seed,
        "status": outcome.status.value,
        "valid": outcome.status == RunStatus.SUCCEEDED,
        "llm_calls": len(calls),
        "coder_calls": sum(c.role == "coder" for c in calls),
        "tokens_in": sum(c.usage.input_tokens for c in calls),
        "tokens_out": sum(c.usage.output_tokens for c in calls),
        "llm_seconds": round(sum(c.latency_s for c in calls), 1),
        "attempts": len(checks),
        "attempts_passed": sum(e.ok for e in checks),
        "rounds": len(outcome.state.decisions),
        "wall_s": round(wall, 1),
        "run_dir": str(outcome.run_dir),
        "reason": outcome.reason,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--coder", default="local")
    parser.add_argument("--evaluator", default="local")
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", default="auto", help="code, spec or auto (as qllm generate --mode)")
    parser.add_argument("--selection", default="auto", help="evaluator, consensus or auto")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/bench-generation"))
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()

    rows = []
    header = (
        f"{'task':<22} {'seed':>4} {'status':<9} {'calls':>5} {'tok in/out':>12} {'pass':>7} {'wall s':>7}"
    )
    print(header)
    for task in args.tasks.split(","):
        for seed in range(args.seeds):
            settings = GenerationSettings(
                task=task, seed=seed, coder=args.coder, evaluator=args.evaluator,
                candidates=args.candidates, rounds=args.rounds, mode=args.mode, selection=args.selection,
            )  # fmt: skip
            row = measure(settings, args.runs_dir)
            rows.append(row)
            print(
                f"{task:<22} {seed:>4} {row['status']:<9} {row['llm_calls']:>5} "
                f"{row['tokens_in']:>6}/{row['tokens_out']:<5} "
                f"{row['attempts_passed']:>3}/{row['attempts']:<3} {row['wall_s']:>7.0f}",
                flush=True,
            )
    print("\nper task: runs ending with a valid artifact, mean LLM calls and wall time per run")
    for task in args.tasks.split(","):
        mine = [r for r in rows if r["task"] == task]
        valid = sum(r["valid"] for r in mine)
        calls = sum(r["llm_calls"] for r in mine) / len(mine)
        wall = sum(r["wall_s"] for r in mine) / len(mine)
        passed = sum(r["attempts_passed"] for r in mine) / max(1, sum(r["attempts"] for r in mine))
        print(
            f"{task:<22} valid {valid}/{len(mine)}  calls {calls:.1f}  wall {wall:.0f} s  "
            f"attempts passing {passed:.0%}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
