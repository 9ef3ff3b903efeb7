"""Learning, one way of training against another on the same seeds: final greedy returns per seed, their
means with 95% intervals, the paired difference (same seeds) with its interval, and a plot.

Reads the JSON files `benchmarks/learning_check.py --json` wrote: the first way's runs (any number of
files, their seeds pooled) and the second way's. Writes the plot beside this script.

Run (collecting in line against ahead; the compiled GRU kernel's commit against the one before it;
acting in numpy against the kernel's commit):
    .venv/bin/python reports/training-speed/learning_paired.py --labels "in line" ahead \
        --first learning_after.json learning_in_line.json --second learning_ahead.json \
        --png learning_ahead.png
    .venv/bin/python reports/training-speed/learning_paired.py --labels "before" "kernel" \
        --first learning_ahead.json --second learning_kernel_qmix.json learning_kernel_vdn.json \
        --png learning_kernel.png
    .venv/bin/python reports/training-speed/learning_paired.py --labels kernel "numpy acting" \
        --first learning_kernel_qmix.json learning_kernel_vdn.json \
        --second learning_numpy_qmix.json learning_numpy_vdn.json --png learning_numpy.png
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
    parser.add_argument("--first", nargs="+", type=Path, required=True)
    parser.add_argument("--second", nargs="+", type=Path, required=True)
    parser.add_argument("--labels", nargs=2, default=["first", "second"], metavar=("FIRST", "SECOND"))
    parser.add_argument("--png", default="learning_paired.png", help="file name, beside this script")
    args = parser.parse_args()
    first_label, second_label = args.labels
    (first, random_return), (second, _) = returns_by_seed(args.first), returns_by_seed(args.second)
    figure, axes = plt.subplots(1, len(second), figsize=(4 * len(second), 3.2), squeeze=False)
    print(f"| preset | seeds | {first_label} (mean ± 95%) | {second_label} (mean ± 95%) "
          f"| {second_label} - {first_label}, paired (± 95%) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for axis, preset in zip(axes[0], sorted(second), strict=True):
        seeds = sorted(set(first[preset]) & set(second[preset]))
        a, b = [first[preset][s] for s in seeds], [second[preset][s] for s in seeds]
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
        axis.set_xticks([0, 1], [first_label, second_label])
        axis.set_xlim(-0.5, 1.5)
        axis.set_title(f"{preset}, lbf-8x8-2p-2f, 200k steps")
        axis.set_ylabel("final greedy return (100 episodes)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below the plots, clear of the points
    figure.savefig(HERE / args.png, dpi=120)


if __name__ == "__main__":
    main()
