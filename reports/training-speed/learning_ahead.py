"""Learning with the next batch collected ahead against in line: final greedy returns per seed, their
means with 95% intervals, the paired difference (same seeds) with its interval, and a plot.

Reads the JSON files `benchmarks/learning_check.py --json` wrote: in-line runs (any number of files,
their seeds pooled) and collect-ahead runs. Writes `learning_ahead.png` beside this script.

Run:  .venv/bin/python reports/training-speed/learning_ahead.py \
          --in-line learning_after.json learning_in_line.json --ahead learning_ahead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import scipy.stats

HERE = Path(__file__).parent


def returns_by_seed(paths: list[Path]) -> tuple[dict[str, dict[int, float]], float]:
    """preset -> seed -> final greedy return, pooled over the files; and the random policy's return."""
    pooled: dict[str, dict[int, float]] = {}
    for path in paths:
        for row in json.loads(path.read_text()):
            pooled.setdefault(row["preset"], {}).update(zip(row["seeds"], row["returns"], strict=True))
            random_return = row["random"]
    return pooled, random_return


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% Student-t interval."""
    half = scipy.stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return statistics.mean(values), float(half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-line", nargs="+", type=Path, required=True)
    parser.add_argument("--ahead", nargs="+", type=Path, required=True)
    args = parser.parse_args()
    (in_line, random_return), (ahead, _) = returns_by_seed(args.in_line), returns_by_seed(args.ahead)
    figure, axes = plt.subplots(1, len(ahead), figsize=(4 * len(ahead), 3.2), squeeze=False)
    print("| preset | seeds | in line (mean ± 95%) | ahead (mean ± 95%) | ahead - in line, paired (± 95%) |")
    print("|---|---|---|---|---|")
    for axis, preset in zip(axes[0], sorted(ahead), strict=True):
        seeds = sorted(set(in_line[preset]) & set(ahead[preset]))
        a, b = [in_line[preset][s] for s in seeds], [ahead[preset][s] for s in seeds]
        (ma, ha), (mb, hb) = interval(a), interval(b)
        md, hd = interval([y - x for x, y in zip(a, b, strict=True)])
        print(f"| {preset} | {', '.join(map(str, seeds))} | {ma:.3f} ± {ha:.3f} | {mb:.3f} ± {hb:.3f} "
              f"| {md:+.3f} ± {hd:.3f} |")  # fmt: skip
        for x, y in zip(a, b, strict=True):
            axis.plot([0, 1], [x, y], color="0.75", zorder=1)
        axis.scatter([0] * len(a), a, zorder=2, label="seeds")
        axis.scatter([1] * len(b), b, zorder=2)
        axis.axhline(random_return, color="0.5", linestyle="--", label="random policy")
        axis.errorbar([-0.15, 1.15], [ma, mb], yerr=[ha, hb], fmt="ks", capsize=4, label="mean ± 95%")
        axis.set_xticks([0, 1], ["in line", "ahead"])
        axis.set_xlim(-0.5, 1.5)
        axis.set_title(f"{preset}, lbf-8x8-2p-2f, 200k steps")
        axis.set_ylabel("final greedy return (100 episodes)")
    axes[0][0].legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    figure.savefig(HERE / "learning_ahead.png", dpi=120)


if __name__ == "__main__":
    main()
