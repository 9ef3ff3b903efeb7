"""How much two busy processes get done on this machine against one: the ceiling of any parallelism.

Training runs two processes at once (the learner, and the collector of the next batch), and on a
machine with two cores one might expect twice one process's work. This prints what two processes
actually get: each runs a fixed piece of work alone, then two copies run at the same time, in
alternating rounds, as whole processes. The workloads are a pure-Python loop and stepping an
lbforaging environment through qllm's contract (random available actions), training's collection.

``speed-up`` is two pieces of work over the time the pair took, against one piece alone: 2.00 would be
two independent cores; virtual CPUs that are hyperthreads of one physical core give less.

Run:  .venv/bin/python benchmarks/cores.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

WORKLOADS = {
    "python-loop": "x = 0\nfor i in range(15_000_000):\n    x += i",
    "lbf-steps": (
        "import numpy as np\n"
        "from qllm.envs import make_env\n"
        "env, rng = make_env('lbf-8x8-2p-2f'), np.random.default_rng(0)\n"
        "ts, episode = env.reset(seed=0), 0\n"
        "began = time.perf_counter()\n"
        "for _ in range(15_000):\n"
        "    ts = env.step([rng.choice(np.flatnonzero(row)) for row in ts.avail_actions])\n"
        "    if ts.done:\n"
        "        episode += 1\n"
        "        ts = env.reset(seed=episode)"
    ),
}
"""Each prints nothing; the child times the part after its imports (``began``, where it sets one)."""

CHILD = """
import sys, time
began = time.perf_counter()
{work}
print(time.perf_counter() - began)
"""


def start(workload: str) -> subprocess.Popen[str]:
    code = CHILD.format(work=WORKLOADS[workload])
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def seconds(processes: list[subprocess.Popen[str]]) -> list[float]:
    outputs = [p.communicate()[0] for p in processes]
    if any(p.returncode for p in processes):
        raise SystemExit("a workload failed")
    return [float(out.strip()) for out in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"{'workload':12} {'alone s':>8} {'pair s':>8} {'speed-up':>9}   (medians of {args.rounds} rounds)")
    for workload in WORKLOADS:
        alone: list[float] = []
        pair: list[float] = []
        for _ in range(args.rounds):  # alternating: one alone, then two at once
            alone += seconds([start(workload)])
            pair.append(max(seconds([start(workload), start(workload)])))
            time.sleep(0.5)
        one, two = statistics.median(alone), statistics.median(pair)
        print(f"{workload:12} {one:8.2f} {two:8.2f} {2 * one / two:9.2f}")


if __name__ == "__main__":
    main()
