"""Before against after: how long a sandbox worker takes to start, as whole processes in alternating pairs.

Each side's python starts one worker through the sandbox's client (``SandboxWorker.start``: the backend's
isolation, the worker's ``import torch``, until it says it is ready) and prints the seconds; the pairs and
their after/before speed ratio are paired_runs.py's (geometric mean, Student t 95% interval).

Run:  .venv/bin/python reports/training-speed/worker_start.py --before BEFORE/bin/python \
          --after .venv/bin/python --pairs 8 --backend gvisor
"""

from __future__ import annotations

import argparse
import statistics

from paired_runs import (  # this script's folder
    add_sides,
    alternating_pairs,
    snippet_seconds,
    speed_ratio,
)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sides(parser, "python")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--backend", default="gvisor")
    args = parser.parse_args()
    python = {"before": args.before, "after": args.after}
    took = alternating_pairs(args.pairs, lambda side, _: snippet_seconds(python[side], TIMED, args.backend))
    medians = {side: statistics.median(seconds) for side, seconds in took.items()}
    print(f"{args.backend} worker start, medians: before {medians['before']:.2f} s, "
          f"after {medians['after']:.2f} s; speed after/before {speed_ratio(took)}")  # fmt: skip


if __name__ == "__main__":
    main()
