"""Where one `qllm train` process tree spends its CPU time, process by process, against its wall time.

Runs `QLLM train ARGS...` (a `qllm` executable: this checkout's or an earlier one's) in a temporary runs
folder, samples every 0.25 s the user + system CPU seconds of the process and each of its descendants
(the trainer, the collector, gVisor's sandbox and gofer processes), and prints each process's last
sample with its role, the sum, and the wall time. On a 2-core machine the sum over the wall time says
how much of the second core the run used; a process that ends between two samples loses at most its
last 0.25 s.

Run:  .venv/bin/python reports/training-speed/tree_cpu.py .venv/bin/qllm --task lbf-8x8-2p-2f \\
          --mixer qllm --steps 50000 --tfcaf FILE
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from tree_memory import sampled_training  # this script's folder
from vs_epymarl import process_tree  # the benchmark's walk of /proc

PERIOD_S = 0.25
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime


def role(pid: int, root: int) -> str:
    """What the process is: the trainer (the root), the collector (its forked python child), a gVisor
    process (named by its command line, where it has one), or its name."""
    if pid == root:
        return "trainer"
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return "?"
    if parent == root and name.startswith(("python", "qllm")):
        return "collector"
    if name == "exe":  # runsc runs itself again under this name; its command line may say which part
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        return f"gVisor {command or '(no command line)'}"
    return name


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    qllm, args = sys.argv[1], sys.argv[2:]
    seen: dict[int, tuple[str, float]] = {}

    def sample(root: int, _: float) -> None:
        for pid in process_tree(root):
            seconds = cpu_seconds(pid)
            if seconds is not None:
                seen[pid] = (seen[pid][0] if pid in seen else role(pid, root), seconds)

    wall = sampled_training(qllm, args, PERIOD_S, sample)
    ranked = sorted(seen.values(), key=lambda entry: -entry[1])
    parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in ranked if seconds >= 0.05)
    total = sum(seconds for _, seconds in ranked)
    print(f"{qllm}: wall {wall:.1f} s, CPU {total:.1f} s ({total / wall:.2f} cores): {parts}")


if __name__ == "__main__":
    main()
