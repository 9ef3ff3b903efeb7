"""Greedy evaluation of the agent network: whole episodes on fixed seeds, the team return's mean and spread.

Every evaluation of a run plays the same episodes (seeds from a range training never uses), so the
curve it draws changes only with the network. :meth:`Evaluator.steps` plays them a step at a time, for
the process that collects training episodes to play between batches (:mod:`qllm.rl.collector`);
:meth:`Evaluator.evaluate` plays them at once.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import torch

from qllm.envs.episodes import finish
from qllm.rl.agent import RNNAgent
from qllm.rl.runner import GREEDY, ParallelRunner

EVAL_ENVS = 8
"""Greedy evaluation steps this many environments together, whatever the training rollouts use."""
EVAL_SEED_OFFSET = 1_000_000_000
"""Evaluation episodes are seeded from a range training never uses."""


@dataclass(frozen=True)
class EvalReturns:
    """What one evaluation measured: the greedy team return over its episodes."""

    return_mean: float
    return_std: float
    episodes: int

    def metrics(self) -> dict[str, float]:
        return {
            "eval/return_mean": self.return_mean,
            "eval/return_std": self.return_std,
            "eval/episodes": self.episodes,
        }


class Evaluator:
    """Plays ``episodes`` greedy evaluation episodes of one task, :data:`EVAL_ENVS` at a time."""

    def __init__(self, task: str, episodes: int, device: torch.device) -> None:
        if episodes < 1:
            raise ValueError(f"an evaluation needs at least one episode, got {episodes}")
        self.episodes, self.device = episodes, device
        self.runner = ParallelRunner(task, min(episodes, EVAL_ENVS))

    def evaluate(self, agent: RNNAgent) -> EvalReturns:
        return finish(self.steps(agent))

    def steps(self, agent: RNNAgent) -> Generator[None, None, EvalReturns]:
        """:meth:`evaluate` a step at a time; ``agent``'s weights must stay as they are until it ends."""
        returns: list[float] = []
        generator = torch.Generator().manual_seed(0)  # unused when greedy; keeps training's untouched
        while len(returns) < self.episodes:
            count = min(len(self.runner.envs), self.episodes - len(returns))
            seeds = [EVAL_SEED_OFFSET + len(returns) + e for e in range(count)]
            _, rollout = yield from self.runner.run_steps(agent, seeds, GREEDY, generator, self.device)
            returns += rollout.returns
        values = torch.tensor(returns)
        spread = float(values.std()) if len(returns) > 1 else 0.0
        return EvalReturns(float(values.mean()), spread, len(returns))

    def close(self) -> None:
        self.runner.close()
