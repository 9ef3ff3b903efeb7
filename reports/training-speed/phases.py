"""Where one `qllm train` run's time goes: the whole CLI run in this process, with timers around its phases.

Prints one line to stderr: seconds spent importing qllm, collecting episodes in this process
(evaluation, and training episodes collected in line), waiting for the episodes a collector process
collects ahead (where qllm has one), evaluating, building the q learner (its networks and optimiser),
in the learner's updates, logging, checkpointing, plotting, in the sandbox where the mixer is a credit
function (its worker's start and close, the validation, the credit calls), and the total. The timers
wrap the functions by name, so a checkout of any qllm with the same functions can be timed with the same
script: run it with that checkout's venv. Extra arguments go to `qllm train` (say, --collect-in-line).

``--ask`` pins when each batch is asked for (``ask_pinned.py``); the line then also gives the updates'
count and mean. The update's phase includes whatever it waits for, so with the batch asked for after the
unroll it is the update's own time beside the collection.

Run (before / after in turn):  BEFORE/.venv/bin/python reports/training-speed/phases.py --steps 20000
                               .venv/bin/python reports/training-speed/phases.py --steps 20000
      the qllm preset:         .venv/bin/python reports/training-speed/phases.py --mixer qllm --tfcaf FILE
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

start = time.perf_counter()
train_module = importlib.import_module("qllm.rl.train")  # the module, not the function qllm.rl exports
from qllm.cli import main as qllm_main  # noqa: E402
from qllm.rl.credit import SandboxCredit  # noqa: E402
from qllm.rl.learner import QLearner  # noqa: E402
from qllm.rl.runner import ParallelRunner  # noqa: E402
from qllm.sandbox.client import Sandbox, SandboxWorker  # noqa: E402

imported_s = time.perf_counter() - start

spent: defaultdict[str, float] = defaultdict(float)


def timed(owner: Any, name: str, phase: str) -> None:
    function: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[phase] += time.perf_counter() - began

    setattr(owner, name, wrapper)


def counted(owner: Any, name: str) -> list[None]:
    """A list that grows by one at each call of ``owner.name``."""
    calls: list[None] = []
    function: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(None)
        return function(*args, **kwargs)

    setattr(owner, name, wrapper)
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--mixer", default="qmix")
    parser.add_argument("--task", default="lbf-8x8-2p-2f")
    parser.add_argument("--ask", choices=["BEFORE_UPDATE", "AFTER_UNROLL"], help="ask for every batch so")
    args, extra = parser.parse_known_args()
    if args.ask:  # imported only here: qllm before the ask schedule has none
        from qllm.rl.collector import Ask, AskSchedule  # noqa: PLC0415

        pinned = Ask[args.ask]
        AskSchedule.ask = lambda schedule: pinned  # type: ignore[method-assign]
    timed(ParallelRunner, "run", "collect (in this process)")
    if hasattr(train_module, "TrainingRun"):
        timed(train_module.TrainingRun, "take_batch", "take the next batch (waiting included)")
    timed(QLearner, "__init__", "build the learner (networks, optimiser)")
    timed(QLearner, "update", "update")
    updates = counted(QLearner, "update")
    for name, phase in [("save_checkpoint", "checkpoint"), ("log_training", "log"),
                        ("plot_learning_curve", "plot")]:  # fmt: skip
        timed(train_module, name, phase)
    if hasattr(train_module, "log_evaluation"):  # qllm before the collector played the evaluations
        timed(train_module, "log_evaluation", "evaluate")
    else:  # the trainer waits for the rest of an evaluation the collector began in its idle time
        timed(train_module.TrainingRun, "log_evaluation", "evaluate (waiting for the collector's)")
    # The sandbox, for the tfcaf mixer (--mixer qllm --tfcaf FILE): its worker's start (about 10 s under
    # gVisor) and close, the validation of the file, and the credit calls of a function linear in Q.
    timed(SandboxWorker, "start", "sandbox worker start")
    timed(SandboxWorker, "close", "sandbox worker close")
    timed(Sandbox, "validate", "validation (worker start included)")
    if hasattr(train_module, "NewCredit"):  # the credit is computed on a thread while the learner unrolls
        timed(SandboxCredit, "__call__", "credit calls (their own thread)")
        timed(train_module.NewCredit, "wait", "waiting for the credit (in the update, included)")
    else:
        timed(SandboxCredit, "__call__", "credit calls")
    with tempfile.TemporaryDirectory() as runs:
        argv = ["train", "--task", args.task, "--mixer", args.mixer, "--steps", str(args.steps), *extra]
        sys.argv = ["qllm", *argv, "--runs-dir", runs]
        try:
            qllm_main()
        except SystemExit as exit_:
            if exit_.code:
                raise
    phases = ", ".join(f"{phase} {seconds:.2f}" for phase, seconds in spent.items())
    total = time.perf_counter() - start
    print(f"import {imported_s:.2f}, {phases}, total {total:.2f} s", file=sys.stderr)
    if args.ask and updates:
        print(f"asked {args.ask}: {len(updates)} updates, {1e3 * spent['update'] / len(updates):.1f} ms each",
              file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
