"""The compiled GRU recurrence (qllm.rl.kernels) against torch.nn.GRU: alone, and inside one learner update.

Prints, for the shapes of the value-based presets' updates on lbf-8x8-2p-2f (50-step episodes, so 51
states: qmix 32 episodes x 2 agents = 64 sequences of 64 units, riit 128 x 2 = 256 of 64, the qllm preset
64 x 2 = 128 of 128), the time of the GRU's forward and backward pass, and of one whole
``QLearner.update`` on a batch of full-length episodes, each way. Both ways run in this one process,
alternating in rounds, with the process tuned as training tunes it (one torch thread, freed memory
kept: qllm.rl.tuning); the median and the fastest round are printed. The update includes the target
network's unroll, done in line as when collecting ahead (the default).

Run:  .venv/bin/python benchmarks/gru_kernel.py [--rounds 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from qllm.envs import EnvInfo
from qllm.envs.episodes import Episodes
from qllm.envs.tasks import make_env
from qllm.rl import kernels
from qllm.rl.config import preset
from qllm.rl.train import build_q_learner
from qllm.rl.tuning import tune_process

TASK = "lbf-8x8-2p-2f"
WAYS = ("nn.GRU", "kernel")


Calls = dict[str, Callable[[], object]]


def timed_rounds(calls: Calls, rounds: int, per_round: int) -> dict[str, list[float]]:
    """Milliseconds per call of each way, per round; the ways alternate within every round."""
    spent: dict[str, list[float]] = {way: [] for way in calls}
    for call in calls.values():
        call()  # warm-up
    for _ in range(rounds):
        for way, call in calls.items():
            began = time.perf_counter()
            for _ in range(per_round):
                call()
            spent[way].append((time.perf_counter() - began) / per_round * 1e3)
    return spent


def with_kernel(use: bool, call: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        original = kernels.available
        kernels.available = (lambda: True) if use else (lambda: False)  # type: ignore[assignment]
        try:
            return call()
        finally:
            kernels.available = original  # type: ignore[assignment]

    return run


def gru_pass(sequences: int, units: int, steps: int = 51) -> Calls:
    gru = torch.nn.GRU(units, units)
    x = torch.randn(steps, sequences, units, requires_grad=True)
    upstream = torch.randn(steps, sequences, units)

    def torch_gru() -> None:
        gru(x)[0].backward(upstream)

    def compiled() -> None:
        gates_in = F.linear(x, gru.weight_ih_l0, gru.bias_ih_l0)
        kernels.gru_recurrence(gates_in, gru.weight_hh_l0, gru.bias_hh_l0).backward(upstream)

    return {"nn.GRU": torch_gru, "kernel": compiled}


def full_episodes(batch_size: int) -> tuple[Episodes, EnvInfo]:
    info = make_env(TASK).info
    generator = torch.Generator().manual_seed(0)
    batch = Episodes.zeros(batch_size, info)
    for field in (batch.obs, batch.state, batch.reward):
        field.uniform_(generator=generator)
    batch.avail_actions.fill_(True)
    batch.actions.random_(0, info.n_actions, generator=generator)
    batch.filled.fill_(1.0)
    return batch, info


def learner_update(name: str) -> Calls:
    config = preset(name, task=TASK)
    if name == "qllm":  # its networks and batch; a sum stands in for the stored credit's weighted sum
        config = config.replace(mixer="vdn")
    batch, info = full_episodes(config.batch_size)
    learner = build_q_learner(config, info, torch.device("cpu"))

    def update() -> None:
        learner.update(batch, 1)

    return {way: with_kernel(way == "kernel", update) for way in WAYS}


def report(label: str, spent: dict[str, list[float]]) -> None:
    medians = {way: statistics.median(times) for way, times in spent.items()}
    parts = [f"{way} {medians[way]:6.2f} ms (fastest {min(spent[way]):6.2f})" for way in WAYS]
    ratio = medians["nn.GRU"] / medians["kernel"]
    print(f"{label:38s} " + "   ".join(parts) + f"   nn.GRU / kernel {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    tune_process(1, torch.device("cpu"))
    if not kernels.available():
        raise SystemExit("the kernel is not available here: nothing to compare")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, 1 thread, {args.rounds} rounds, medians over rounds")
    for label, sequences, units in [("qmix", 64, 64), ("riit", 256, 64), ("qllm preset", 128, 128)]:
        report(f"GRU forward+backward, {label}", timed_rounds(gru_pass(sequences, units), args.rounds, 10))
    for name in ("qmix", "riit", "qllm"):
        report(f"one update, {name}", timed_rounds(learner_update(name), args.rounds, 4))


if __name__ == "__main__":
    main()
