"""Before against after, as whole `qllm train` processes in alternating pairs: each pair's wall times, and
the after/before speed ratio's geometric mean over the pairs with its 95% interval (Student t on the log
ratios: pairs share the machine's state of the moment, which is most of the run-to-run spread here).

Each pair runs both sides with the same seed, in turn (which side goes first alternates), with the CLI's
default logging and checkpoints, in a fresh runs folder that is deleted afterwards. Extra arguments go to
both sides' `qllm train` (say, --mixer riit).

Run:  .venv/bin/python reports/training-speed/paired_runs.py --before BEFORE/bin/qllm --after .venv/bin/qllm \
          --pairs 5 -- --task lbf-8x8-2p-2f --mixer qmix --steps 50000
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scipy import stats


def wall_seconds(qllm: Path, seed: int, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as runs:
        command = [str(qllm), "train", *extra, "--seed", str(seed), "--runs-dir", runs]
        began = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the earlier qllm's executable")
    parser.add_argument("--after", type=Path, required=True, help="the later qllm's executable")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("train_args", nargs="*", help="after --: what both sides' `qllm train` gets")
    args = parser.parse_args()
    ratios = []
    for pair in range(args.pairs):
        sides = [("before", args.before), ("after", args.after)]
        order = sides if pair % 2 == 0 else sides[::-1]
        wall = {name: wall_seconds(qllm, pair + 1, args.train_args) for name, qllm in order}
        ratios.append(wall["before"] / wall["after"])
        print(f"pair {pair + 1} (seed {pair + 1}, {order[0][0]} first): before {wall['before']:.1f} s, "
              f"after {wall['after']:.1f} s, speed after/before {ratios[-1]:.3f}", flush=True)  # fmt: skip
    logs = [math.log(ratio) for ratio in ratios]
    centre = statistics.mean(logs)
    half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    print(f"speed after/before over {len(ratios)} pairs: {math.exp(centre):.3f} "
          f"(95% interval {math.exp(centre - half):.3f}-{math.exp(centre + half):.3f})")  # fmt: skip
    print(f"command: qllm train {' '.join(args.train_args)}", file=sys.stderr)


if __name__ == "__main__":
    main()
