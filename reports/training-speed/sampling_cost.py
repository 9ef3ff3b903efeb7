"""What vs_epymarl.py's memory sampling costs the runs it measures: the same runs sampled two ways.

vs_epymarl.py samples each run's process tree while it runs; reading a process's PSS (smaps_rollup) makes
the kernel walk all its mappings, about 5 ms for a torch-sized process, on the same two cores the run
uses. This script runs one side's command (``--side``: EPyMARL's schedule b, or qllm's preset) as whole
processes, alternating between PSS read at every ``--interval`` tick (as vs_epymarl.py did before
``--pss-interval``) and every ``--pss-interval`` s (its default), with the same seed within a pair, and
prints each run's wall time and the CPU time the sampling took, then the medians.

Run:  .venv/bin/python reports/training-speed/sampling_cost.py --epymarl /work/epymarl --side qllm [--pairs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import vs_epymarl  # the benchmark's own commands and sampling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epymarl", type=Path, required=True)
    parser.add_argument("--side", choices=["epymarl", "qllm"], default="qllm")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--pss-interval", type=float, default=2.0)
    args = parser.parse_args()
    args.epymarl = args.epymarl.resolve()
    args.epymarl_python = args.epymarl / ".venv" / "bin" / "python"
    args.qllm, args.qllm_before, args.timeout = vs_epymarl.REPO / ".venv" / "bin" / "qllm", None, 3600.0
    side = vs_epymarl.EPYMARL if args.side == "epymarl" else "qllm-qllm"
    ways = {"PSS every tick": args.interval, f"PSS every {args.pss_interval} s": args.pss_interval}
    walls: dict[str, list[float]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory() as folder:
        folders = {way: Path(folder) / str(k) for k, way in enumerate(ways)}  # run folders apart
        for way_folder in folders.values():
            way_folder.mkdir()
            vs_epymarl.prepare(way_folder)
        for pair in range(args.pairs):
            order = list(ways) if pair % 2 == 0 else list(reversed(ways))
            for way in order:
                args.pss_interval = ways[way]
                row = vs_epymarl.measure(side, "b", 100 + pair, args, folders[way])  # one seed per pair
                walls[way].append(row["wall_s"])
                print(
                    f"pair {pair + 1} {way:18s} wall {row['wall_s']:6.1f} s, sampling "
                    f"{row['sampling_cpu_s']:5.2f} CPU s, peak PSS {row['tree_pss_mb']:5.0f} MB",
                    flush=True,
                )
    for way, values in walls.items():
        print(f"median {way:18s} {statistics.median(values):6.1f} s ({min(values):.1f}-{max(values):.1f})")


if __name__ == "__main__":
    main()
