"""Before against after: how long a sandbox worker takes to start, as whole processes in alternating pairs.

Each side's python starts one worker through the sandbox's client (``SandboxWorker.start``: the backend's
isolation, the worker's ``import torch``, until it says it is ready) and prints the seconds; the pairs'
after/before speed ratio is summarised as paired_runs.py does (geometric mean, Student t 95% interval).

Run:  .venv/bin/python reports/training-speed/worker_start.py --before BEFORE/bin/python \
          --after .venv/bin/python --pairs 8 --backend gvisor
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
from pathlib import Path

from scipy import stats

TIMED = """
import sys, time
from qllm.sandbox.backends import detect_backend
from qllm.sandbox.client import SandboxWorker
worker = SandboxWorker(detect_backend(sys.argv[1]))
began = time.perf_counter()
worker.start()
print(time.perf_counter() - began)
worker.close()
"""


def start_seconds(python: Path, backend: str) -> float:
    # -I: each side imports its own install of qllm, whatever folder this runs from.
    command = [str(python), "-I", "-c", TIMED, backend]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the earlier qllm's python")
    parser.add_argument("--after", type=Path, required=True, help="the later qllm's python")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--backend", default="gvisor")
    args = parser.parse_args()
    ratios, seconds = [], {"before": [], "after": []}
    for pair in range(args.pairs):
        sides = [("before", args.before), ("after", args.after)]
        order = sides if pair % 2 == 0 else sides[::-1]
        took = {name: start_seconds(python, args.backend) for name, python in order}
        for name, value in took.items():
            seconds[name].append(value)
        ratios.append(took["before"] / took["after"])
        print(f"pair {pair + 1} ({order[0][0]} first): before {took['before']:.2f} s, "
              f"after {took['after']:.2f} s, speed after/before {ratios[-1]:.3f}", flush=True)  # fmt: skip
    logs = [math.log(ratio) for ratio in ratios]
    centre = statistics.mean(logs)
    half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    print(f"{args.backend} worker start, medians: before {statistics.median(seconds['before']):.2f} s, "
          f"after {statistics.median(seconds['after']):.2f} s; speed after/before over {len(ratios)} pairs: "
          f"{math.exp(centre):.3f} "
          f"(95% interval {math.exp(centre - half):.3f}-{math.exp(centre + half):.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
