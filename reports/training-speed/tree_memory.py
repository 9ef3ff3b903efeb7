"""Peak memory of one `qllm train` process tree, and which processes held it at the peak.

Runs `QLLM train ARGS...` (a `qllm` executable: this checkout's or an earlier one's) in a temporary runs
folder, samples the summed PSS of the process and all its descendants every 0.1 s (the trainer, the
collector, gVisor's sentry and gofer, the sandbox worker), and prints the wall time, the peak, when it
came, and the peak's PSS by process name (``exe`` is gVisor's sentry, which holds the sandboxed
processes' memory). PSS, not RSS: a forked process's shared pages count once across the tree.

Run:  .venv/bin/python reports/training-speed/tree_memory.py .venv/bin/qllm --task lbf-8x8-2p-2f \\
          --mixer qllm --steps 50000 --tfcaf FILE
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from vs_epymarl import field_kb, process_tree  # the benchmark's walk of /proc

PERIOD_S = 0.1


def pss_by_name(pids: list[int]) -> dict[str, float]:
    """PSS in MB per process name (processes gone meanwhile are left out)."""
    by_name: defaultdict[str, float] = defaultdict(float)
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        by_name[name] += field_kb(Path(f"/proc/{pid}/smaps_rollup"), "Pss") / 1024
    return dict(by_name)


def sampled_training(
    qllm: str, args: list[str], period_s: float, sample: Callable[[int, float], None]
) -> float:
    """Run `QLLM train ARGS...` in a temporary runs folder, calling ``sample(pid, seconds since start)``
    every ``period_s`` while it runs; its wall time. Exits with its error if it fails."""
    with tempfile.TemporaryDirectory() as runs, tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        process = subprocess.Popen(
            [qllm, "train", *args, "--runs-dir", runs], stdout=subprocess.DEVNULL, stderr=errors
        )
        while process.poll() is None:
            sample(process.pid, time.perf_counter() - start)
            time.sleep(period_s)
        wall = time.perf_counter() - start
        if process.returncode:
            errors.seek(0)
            sys.exit(f"qllm train exited with {process.returncode}: {errors.read().decode()[-2000:]}")
    return wall


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    qllm, args = sys.argv[1], sys.argv[2:]
    peak, peak_at, peak_parts = 0.0, 0.0, {}

    def sample(pid: int, seconds: float) -> None:
        nonlocal peak, peak_at, peak_parts
        parts = pss_by_name(process_tree(pid))
        if sum(parts.values()) > peak:
            peak, peak_at, peak_parts = sum(parts.values()), seconds, parts

    wall = sampled_training(qllm, args, PERIOD_S, sample)
    held = ", ".join(f"{name} {mb:.0f}" for name, mb in sorted(peak_parts.items(), key=lambda kv: -kv[1]))
    print(f"{qllm}: wall {wall:.1f} s, peak PSS {peak:.0f} MB at {peak_at:.1f} s ({held})")


if __name__ == "__main__":
    main()
