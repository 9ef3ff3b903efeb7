"""Acting on CPU: the agent network's step in numpy (qllm's default) against torch's, alone and in collection.

For lbf-8x8-2p-2f with 1 and 8 environments (2 and 16 rows of the agent network, qmix's sizes), prints
the time of one acting step of each actor (:class:`qllm.rl.agent.NumpyActor`, and
:class:`qllm.rl.agent.TorchActor`, which runs :meth:`RNNAgent.step`), and the time per environment step
of whole rollouts through ``ParallelRunner.run`` with each (epsilon 0.5, the same seeds both ways).
Both ways run in this one process, tuned as training tunes it (one thread for torch and for numpy's
BLAS: qllm.rl.tuning), alternating in rounds; the median and the fastest round are printed. The
machine's speed drifts within minutes here, so compare the two columns of one row, not rows of
different runs.

Run:  .venv/bin/python benchmarks/acting.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from qllm.rl.agent import Actor, RNNAgent, TorchActor
from qllm.rl.runner import ParallelRunner
from qllm.rl.tuning import tune_process

Timed = dict[str, Callable[[], float]]
"""Each way's call, which returns its own time per unit in microseconds."""

TASK = "lbf-8x8-2p-2f"
CPU = torch.device("cpu")


class TorchActingAgent(RNNAgent):
    """The same network, acting through torch on CPU."""

    def actor(self, rows: int, device: torch.device) -> Actor:
        return TorchActor(self, rows, device)


def timed_rounds(calls: Timed, rounds: int) -> dict[str, list[float]]:
    """Microseconds per unit of each way, per round; the ways alternate within every round."""
    spent: dict[str, list[float]] = {way: [] for way in calls}
    for call in calls.values():
        call()  # warm-up
    for _ in range(rounds):
        for way, call in calls.items():
            spent[way].append(call())
    return spent


def step_calls(agents: dict[str, RNNAgent], envs: int, repeats: int = 500) -> Timed:
    inputs = np.random.default_rng(0).standard_normal((envs, 2, agents["numpy"].fc1.in_features))
    inputs = inputs.astype(np.float32)

    def call(agent: RNNAgent) -> Callable[[], float]:
        def run() -> float:
            actor = agent.actor(2 * envs, CPU)
            began = time.perf_counter()
            for _ in range(repeats):
                actor.step(inputs)
            return (time.perf_counter() - began) / repeats * 1e6

        return run

    return {way: call(agent) for way, agent in agents.items()}


def rollout_calls(agents: dict[str, RNNAgent], envs: int, episodes: int = 8) -> Timed:
    runner = ParallelRunner(TASK, envs)

    def call(agent: RNNAgent) -> Callable[[], float]:
        def run() -> float:
            steps, began = 0, time.perf_counter()
            for first in range(0, episodes, envs):
                seeds = list(range(first, first + envs))
                _, stats = runner.run(agent, seeds, 0.5, torch.Generator().manual_seed(first), CPU)
                steps += stats.steps
            return (time.perf_counter() - began) / steps * 1e6

        return run

    return {way: call(agent) for way, agent in agents.items()}


def report(label: str, spent: dict[str, list[float]]) -> None:
    medians = {way: statistics.median(times) for way, times in spent.items()}
    parts = [f"{way} {medians[way]:7.1f} us (fastest {min(times):7.1f})" for way, times in spent.items()]
    print(f"{label:44s} " + "   ".join(parts) + f"   torch / numpy {medians['torch'] / medians['numpy']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    tune_process(1, CPU)
    torch.manual_seed(0)
    info = ParallelRunner(TASK, 1).info
    numpy_agent = RNNAgent(info.obs_dim + info.n_actions + info.n_agents, info.n_actions)
    torch_agent = TorchActingAgent(numpy_agent.fc1.in_features, info.n_actions)
    torch_agent.load_state_dict(numpy_agent.state_dict())
    agents: dict[str, RNNAgent] = {"numpy": numpy_agent, "torch": torch_agent}
    print(f"torch {torch.__version__}, numpy {np.__version__}, 1 thread, {args.rounds} rounds, medians")
    for envs in (1, 8):
        spent = timed_rounds(step_calls(agents, envs), args.rounds)
        report(f"one acting step, {envs} env(s) x 2 agents", spent)
    for envs in (1, 8):
        spent = timed_rounds(rollout_calls(agents, envs), args.rounds)
        report(f"rollouts, per env step, {envs} env(s)", spent)


if __name__ == "__main__":
    main()
