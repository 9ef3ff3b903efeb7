"""Shared test helpers: representative tasks of every family, a seeded random rollout, and a guard that
keeps tests away from real models.

Tests drive the graph with fake chat models. A test that means to use a real one (the built-in local
model's server, a provider's API) says so with ``@pytest.mark.real_model``; in every other test,
starting the local model's server and any HTTP request to a host other than this machine fail at once
with :class:`RealModelRefusedError`, instead of quietly costing minutes or money (pydantic-ai's test
suite blocks model requests the same way).
"""

from __future__ import annotations

import os

# Tests check every step against the environment contract (qllm.envs.contract.CHECKS), and so do the
# processes they start; set before qllm is imported, which reads it once.
os.environ["QLLM_CHECKS"] = "1"

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from qllm.envs import MultiAgentEnv, TimeStep
from qllm.envs.recording import random_policy
from qllm.llm import local

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
HTTP_CLIENTS: list[type] = [httpx.Client, httpx.AsyncClient]
try:  # the openai SDK's own HTTP client, where this openai release uses it
    import httpx2

    HTTP_CLIENTS += [httpx2.Client, httpx2.AsyncClient]
except ImportError:
    pass


class RealModelRefusedError(RuntimeError):
    """A test reached for a real model without ``@pytest.mark.real_model``."""


@pytest.fixture(autouse=True)
def no_real_models(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("real_model") is not None:
        return

    def refuse_to_serve(*args: Any, **kwargs: Any) -> local.ServerState:
        raise RealModelRefusedError(
            f"{request.node.nodeid} tried to start the local model's server: use a fake chat model, or "
            "mark the test @pytest.mark.real_model"
        )

    monkeypatch.setattr(local, "serve", refuse_to_serve)
    for client in HTTP_CLIENTS:
        monkeypatch.setattr(client, "send", _loopback_only(client.send, request.node.nodeid))


def _loopback_only(send: Any, test: str) -> Any:
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        http_request: httpx.Request = (
            kwargs["request"] if "request" in kwargs else args[0]
        )  # httpx streams by name
        if http_request.url.host not in LOOPBACK:
            raise RealModelRefusedError(
                f"{test} sent a request to {http_request.url.host}: tests never call real providers "
                "(mark the test @pytest.mark.real_model if it must)"
            )
        return send(self, *args, **kwargs)

    return guarded


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
