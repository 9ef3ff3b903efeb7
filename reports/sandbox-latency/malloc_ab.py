"""A/B of the sandbox worker's glibc malloc settings, under gVisor and bubblewrap, in one process.

Four warm sandboxes take turns call by call, 500 ms apart, on the latency benchmark's candidates: each
backend with the worker environment qllm sets (``backends._ENV``, malloc settings included) and with
those settings removed. Prints the median ms over all candidates and per candidate.

    .venv/bin/python reports/sandbox-latency/malloc_ab.py --repeats 40
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import sandbox_latency as bench

from qllm.envs.recording import record
from qllm.sandbox import Sandbox, ValidationInputs
from qllm.sandbox.backends import Backend, BwrapBackend, GvisorBackend

MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_TRIM_THRESHOLD_")


def without_malloc_settings(backend: type[Backend]) -> Backend:
    class Plain(backend):  # type: ignore[misc, valid-type]
        def environment(self) -> dict[str, str]:
            env = super().environment()
            return {key: value for key, value in env.items() if key not in MALLOC_SETTINGS}

    return Plain()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40, help="timed calls per sandbox (default: 40)")
    parser.add_argument("--task", default="lbf-2s-10x10-3p-3f", help="task (default: %(default)s)")
    args = parser.parse_args()
    candidates = bench.candidates_for(args.task)
    sources = list(candidates.values())
    inputs = ValidationInputs.from_recording(record(args.task, episodes=20), max_states=256)
    arms = {
        "gvisor, no malloc settings": without_malloc_settings(GvisorBackend),
        "gvisor": GvisorBackend(),
        "bwrap, no malloc settings": without_malloc_settings(BwrapBackend),
        "bwrap": BwrapBackend(),
    }
    with contextlib.ExitStack() as stack:
        calls = {}
        for name, backend in arms.items():
            box = stack.enter_context(Sandbox(backend=backend, warm=True))
            bench.check(box.validate(sources[-1], inputs), sources[-1], f"{name} warm-up")
            calls[name] = lambda source, box=box: box.validate(source, inputs)
        samples = bench.timed_in_turn(calls, sources, args.repeats, gap_s=0.5)
    print(f"median ms, 500 ms apart, {args.repeats} calls each; per candidate: " + ", ".join(candidates))
    for name, seconds in samples.items():
        each = bench.per_candidate_medians(seconds, len(sources))
        print(f"  {name:<28} {np.median(seconds) * 1e3:7.1f}   " + "  ".join(f"{m:7.1f}" for m in each))


if __name__ == "__main__":
    main()
