"""Shared test helpers: representative tasks of every family and a seeded random rollout."""

from __future__ import annotations

import os

# Tests check every step against the environment contract (qllm.envs.contract.CHECKS), and so do the
# processes they start; set before qllm is imported, which reads it once.
os.environ["QLLM_CHECKS"] = "1"

from collections.abc import Iterator

import numpy as np
import pytest

from qllm.envs import MultiAgentEnv, TimeStep
from qllm.envs.recording import random_policy

# One or more tasks per family, covering variants whose state layouts differ.
REPRESENTATIVE_TASKS = (
    "matrix-climbing",
    "matrix-penalty-50",
    "matrix-qtran",
    "mpe-spread-3",
    "mpe-spread-6",
    "mpe-adversary",
    "mpe-tag",
    "lbf-8x8-2p-2f",
    "lbf-2s-10x10-3p-3f",
    "lbf-8x8-2p-2f-coop",
    "rware-tiny-2ag",
    "rware-small-4ag-hard",
)


def rollout(
    env: MultiAgentEnv, seed: int, max_steps: int | None = None
) -> Iterator[tuple[np.ndarray, TimeStep]]:
    """Yield (actions, next time step) for one random episode; the reset step is yielded with actions None."""
    rng = np.random.default_rng(seed)
    ts = env.reset(seed=seed)
    yield None, ts
    steps = 0
    while not ts.done and (max_steps is None or steps < max_steps):
        actions = random_policy(ts.avail_actions, rng)
        ts = env.step(actions)
        steps += 1
        yield actions, ts


@pytest.fixture(params=REPRESENTATIVE_TASKS)
def task(request: pytest.FixtureRequest) -> str:
    return request.param
