"""A saved gVisor worker's two costs: the first start that saves it, and credit calls in a resumed copy.

Two measurements, in rounds that alternate the two sides, each side a whole process:

- ``first start``: ``SandboxWorker.start`` with an empty snapshot folder (it starts fresh, saves the
  worker, then resumes a copy) against a fresh start with snapshots off (``QLLM_SANDBOX_SNAPSHOTS=0``);
- ``credit calls``: a trainer's credit session (one function loaded once, ``--calls`` calls of 400
  recorded states of lbf-8x8-2p-2f each) in a resumed copy against one in a fresh worker; prints the
  median call per round.

Run:  .venv/bin/python reports/training-speed/saved_worker.py --rounds 3 --calls 150 --tfcaf FILE
(FILE: a credit function linear in Q for lbf-8x8-2p-2f, say the one ``benchmarks/vs_epymarl.py``'s
``prepare`` writes for its ``qllm`` preset.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

FIRST_START = """
import sys, time
from qllm.sandbox.backends import detect_backend
from qllm.sandbox.client import SandboxWorker
worker = SandboxWorker(detect_backend("gvisor"))
began = time.perf_counter()
worker.start()
print(time.perf_counter() - began, worker.resumed)
worker.close()
"""

CREDIT_CALLS = """
import statistics, sys, time
from qllm.envs.recording import record
from qllm.sandbox.client import Sandbox
source, calls = open(sys.argv[1]).read(), int(sys.argv[2])
states = record("lbf-8x8-2p-2f", 40, seed=0).episodes.state.reshape(-1, 24)
batches = [states[k * 400 : (k + 1) * 400].contiguous() for k in range(4)]
with Sandbox(backend="gvisor", spares=False) as sandbox:
    session = sandbox.credit_session(source, 2, True)
    assert session.credit(batches[0]).ok  # starts the worker, loads the function
    seconds = []
    for k in range(calls):
        began = time.perf_counter()
        assert session.credit(batches[k % 4]).ok
        seconds.append(time.perf_counter() - began)
    print(statistics.median(seconds) * 1e3, sandbox._worker.resumed)
    session.close()
"""


def run(code: str, *args: str, env: dict[str, str]) -> list[str]:
    # -I would drop the environment's QLLM_CACHE: run from a folder outside the checkout instead.
    done = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, env=env, cwd="/"
    )
    return done.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--tfcaf", type=Path, required=True)
    args = parser.parse_args()
    fresh_env = {**os.environ, "QLLM_SANDBOX_SNAPSHOTS": "0"}
    saving: list[float] = []
    for round_ in range(1, args.rounds + 1):
        empty = Path(tempfile.mkdtemp(prefix="qllm-cache-"))  # no snapshot (a worker needs no other)
        try:
            first, resumed = run(FIRST_START, env={**os.environ, "QLLM_CACHE": str(empty)})
        finally:
            shutil.rmtree(empty, ignore_errors=True)
        fresh, _ = run(FIRST_START, env=fresh_env)
        saving.append(float(first))
        print(
            f"first start, round {round_}: saving {float(first):.2f} s (resumed {resumed}), "
            f"fresh {float(fresh):.2f} s",
            flush=True,
        )
    medians: dict[str, list[float]] = {"fresh": [], "resumed": []}
    for round_ in range(1, args.rounds + 1):
        sides = (("fresh", fresh_env), ("resumed", dict(os.environ)))
        for side, env in sides if round_ % 2 else reversed(sides):
            median_ms, resumed = run(CREDIT_CALLS, str(args.tfcaf.resolve()), str(args.calls), env=env)
            assert (resumed == "True") == (side == "resumed"), (side, resumed)
            medians[side].append(float(median_ms))
        print(
            f"credit calls, round {round_}: median fresh {medians['fresh'][-1]:.1f} ms, "
            f"resumed {medians['resumed'][-1]:.1f} ms",
            flush=True,
        )
    fresh_ms, resumed_ms = (statistics.median(medians[side]) for side in ("fresh", "resumed"))
    print(
        f"first start (saving) {min(saving):.2f}-{max(saving):.2f} s; median credit call fresh "
        f"{fresh_ms:.1f} ms, resumed {resumed_ms:.1f} ms"
    )


if __name__ == "__main__":
    main()
