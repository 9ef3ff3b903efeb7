"""Before against after, as whole `qllm train` processes in alternating pairs: each pair's wall times, and
the after/before speed ratio's geometric mean over the pairs with its 95% interval (Student t on the log
ratios: pairs share the machine's state of the moment, which is most of the run-to-run spread here).

Pair N runs both sides with seed N, in turn (which side goes first alternates), with the CLI's
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
from collections.abc import Callable
from pathlib import Path

from scipy import stats


SIDES = ("before", "after")


def alternating_pairs(pairs: int, seconds: Callable[[str, int], float]) -> dict[str, list[float]]:
    """Each side's seconds, ``seconds(side, pair)``, timed in ``pairs`` pairs, the side that goes first
    alternating; prints a line per pair."""
    took: dict[str, list[float]] = {side: [] for side in SIDES}
    for pair in range(pairs):
        order = SIDES if pair % 2 == 0 else SIDES[::-1]
        for side in order:
            took[side].append(seconds(side, pair))
        before, after = took["before"][-1], took["after"][-1]
        print(f"pair {pair + 1} ({order[0]} first): before {before:.4g} s, after {after:.4g} s, "
              f"speed after/before {before / after:.3f}", flush=True)  # fmt: skip
    return took


def add_sides(parser: argparse.ArgumentParser, program: str) -> None:
    """``--before`` and ``--after``: the earlier and the later qllm's ``program`` (its python, say)."""
    for side, which in zip(SIDES, ("earlier", "later"), strict=True):
        parser.add_argument(f"--{side}", type=Path, required=True, help=f"the {which} qllm's {program}")


def snippet_seconds(python: Path, code: str, *args: str) -> float:
    """Run ``code`` (with ``args``) in ``python`` and read the seconds it prints last."""
    # -I: each side imports its own install of qllm, whatever folder this runs from.
    done = subprocess.run([str(python), "-I", "-c", code, *args], check=True, capture_output=True, text=True)
    return float(done.stdout.split()[-1])


def speed_ratio(took: dict[str, list[float]]) -> str:
    """The after/before speed ratio's geometric mean over the pairs, with its 95% interval."""
    logs = [math.log(before / after) for before, after in zip(took["before"], took["after"], strict=True)]
    centre = statistics.mean(logs)
    half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return (f"{math.exp(centre):.3f} over {len(logs)} pairs "
            f"(95% interval {math.exp(centre - half):.3f}-{math.exp(centre + half):.3f})")  # fmt: skip


def wall_seconds(qllm: Path, seed: int, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as runs:
        command = [str(qllm), "train", *extra, "--seed", str(seed), "--runs-dir", runs]
        began = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sides(parser, "executable")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("train_args", nargs="*", help="after --: what both sides' `qllm train` gets")
    args = parser.parse_args()
    qllm = {"before": args.before, "after": args.after}
    took = alternating_pairs(
        args.pairs, lambda side, pair: wall_seconds(qllm[side], pair + 1, args.train_args)
    )
    print(f"speed after/before: {speed_ratio(took)}")
    print(f"command: qllm train {' '.join(args.train_args)}", file=sys.stderr)


if __name__ == "__main__":
    main()
