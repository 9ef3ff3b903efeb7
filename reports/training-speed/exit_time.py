"""How long a `qllm train` process takes to end once it has printed its last line, before against after.

Each side runs a tiny training (`--steps 400` by default) as a whole process, alternating; the time from
its last line of output (the learning curve's path, printed when the run is done) to the process's exit
is the interpreter's shutdown: atexit handlers, the last garbage collections, freeing the modules.

Run:  .venv/bin/python reports/training-speed/exit_time.py --before BEFORE_VENV/bin/qllm \\
          --after .venv/bin/qllm --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time

from paired_runs import add_sides, alternating_pairs  # this script's folder


def seconds_to_exit(qllm: str, steps: int) -> float:
    """One run's time from its last line of output to its exit."""
    with tempfile.TemporaryDirectory() as runs:
        command = [qllm, "train", "--mixer", "riit", "--steps", str(steps), "--runs-dir", runs]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        last_line_at = time.monotonic()
        for _ in process.stdout:
            last_line_at = time.monotonic()
        if process.wait() != 0:
            raise SystemExit(f"{qllm} failed (exit {process.returncode})")
        return time.monotonic() - last_line_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sides(parser, "executable")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    qllm = {side: str(getattr(args, side)) for side in ("before", "after")}
    took = alternating_pairs(args.rounds, lambda side, _: seconds_to_exit(qllm[side], args.steps))
    for side, values in took.items():
        print(f"{side}: median {statistics.median(values):.3f} s (range {min(values):.3f}-{max(values):.3f})")


if __name__ == "__main__":
    main()
