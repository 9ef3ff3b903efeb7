"""Before against after: a template credit function's Python under RestrictedPython, in this process.

Each side's python loads the credit function FILE as the sandbox does (``load_credit_function``: the
restricted globals, their guards on every subscript, iteration and augmented assignment) and times it on
400 recorded states of lbf-8x8-2p-2f, the size of a trainer's credit call; it prints the median of
``--calls`` calls. The sides run as whole processes in alternating pairs (paired_runs.py's loop and
ratio). No sandbox: this is the part of a credit call that is the function itself.

Run:  .venv/bin/python reports/training-speed/restricted_credit.py --before BEFORE/bin/python \
          --after .venv/bin/python --pairs 6 --tfcaf FILE
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from paired_runs import (  # this script's folder
    add_sides,
    alternating_pairs,
    snippet_seconds,
    speed_ratio,
)

TIMED = """
import statistics, sys, time
import torch
from qllm.envs.recording import record
from qllm.sandbox.restricted import load_credit_function
function = load_credit_function(open(sys.argv[1]).read()).function
states = record("lbf-8x8-2p-2f", 8, seed=0).episodes.state.reshape(-1, 24)[:400].contiguous()
agents_q = torch.zeros(400, 2)
seconds = []
for _ in range(int(sys.argv[2])):
    began = time.perf_counter()
    function(agents_q, states)
    seconds.append(time.perf_counter() - began)
print(statistics.median(seconds[5:]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sides(parser, "python")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--tfcaf", type=Path, required=True)
    args = parser.parse_args()
    python = {"before": args.before, "after": args.after}
    timed = (TIMED, str(args.tfcaf.resolve()), str(args.calls))
    took = alternating_pairs(args.pairs, lambda side, _: snippet_seconds(python[side], *timed))
    medians = {side: statistics.median(seconds) * 1e3 for side, seconds in took.items()}
    print(f"a credit function on 400 states, medians: before {medians['before']:.2f} ms, "
          f"after {medians['after']:.2f} ms; speed after/before {speed_ratio(took)}")  # fmt: skip


if __name__ == "__main__":
    main()
