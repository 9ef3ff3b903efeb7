"""Credit sessions: one credit function loaded once in a limited child of the worker, called many times.

A trainer asks for the credit of new states after every collected batch; a session spares each call a
fork and a compile. What must still hold, under every backend that hides the host (gvisor and bwrap,
both installed by ``scripts/setup.sh``): each call has its own wall-clock, CPU-time and output limits,
a call that fails ends the session and the next call loads the function afresh, the answers are the
one-shot job's, and a worker that dies takes its sessions with it without the caller noticing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch

from qllm.sandbox import ErrorKind, Sandbox, SandboxLimits

LINEAR = (
    "def credit_assignment(agents_q, state):\n    return agents_q.sum(dim=1, keepdim=True) + state[:, :1]\n"
)
COUNTER = (
    "calls = []\n"
    "def credit_assignment(agents_q, state):\n"
    "    calls.append(1)\n"
    "    if state.shape[0] > 100:\n"
    "        raise ValueError('too many states')\n"
    "    return agents_q.sum(dim=1, keepdim=True) + len(calls)\n"
)
"""Its bias counts the calls this loaded copy of it has answered; it fails on large batches."""
HANGS_ON_LARGE_BATCHES = (
    "def credit_assignment(agents_q, state):\n"
    "    if state.shape[0] > 100:\n"
    "        while True:\n"
    "            pass\n"
    "    return agents_q.sum(dim=1, keepdim=True)\n"
)
BURNS_CPU = (
    "def credit_assignment(agents_q, state):\n"
    "    total = 0\n"
    "    for i in range(3 * 10**6):\n"
    "        total += i\n"
    "    return agents_q.sum(dim=1, keepdim=True)\n"
)
"""About a third of a second of CPU a call here: a third of the 1 s budget each call may use."""
PRINTS = (
    "def credit_assignment(agents_q, state):\n"
    "    print('x' * N)\n"
    "    return agents_q.sum(dim=1, keepdim=True)\n"
)


@pytest.fixture(scope="module", params=("gvisor", "bwrap"))
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    with Sandbox(backend=request.param, limits=SandboxLimits(wall_s=3.0, cpu_s=1)) as box:
        yield box


def states(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, 6, generator=torch.Generator().manual_seed(seed))


def test_a_session_answers_what_a_one_shot_job_answers_and_loads_the_function_once(sandbox: Sandbox) -> None:
    session = sandbox.credit_session(LINEAR, n_agents=2, monotonic=True)
    for seed in range(3):
        batch = states(20, seed)
        from_session, one_shot = session.credit(batch), sandbox.credit(LINEAR, batch, 2, True)
        assert from_session.ok and one_shot.ok and from_session.backend == sandbox.backend.name
        assert (from_session.credit.to_array() == one_shot.credit.to_array()).all()
    counter = sandbox.credit_session(COUNTER, n_agents=2, monotonic=True)
    biases = [counter.credit(states(4)).credit.to_array()[0, -1] for _ in range(3)]
    assert biases == [1.0, 2.0, 3.0]  # one loaded copy answered all three
    session.close()
    counter.close()


def test_each_call_has_its_own_wall_clock_budget_and_a_failure_reloads_the_function(sandbox: Sandbox) -> None:
    session = sandbox.credit_session(HANGS_ON_LARGE_BATCHES, n_agents=2, monotonic=True)
    assert session.credit(states(10)).ok
    start = time.monotonic()
    hung = session.credit(states(200))
    assert hung.error_kind == ErrorKind.TIMEOUT and time.monotonic() - start < 3.0 + 2.0
    assert session.credit(states(10)).ok  # loaded again, in a new child
    counter = sandbox.credit_session(COUNTER, n_agents=2, monotonic=True)
    assert counter.credit(states(4)).credit.to_array()[0, -1] == 1.0
    assert counter.credit(states(200)).error_kind == ErrorKind.RUNTIME
    assert counter.credit(states(4)).credit.to_array()[0, -1] == 1.0  # a fresh copy: its count restarted
    session.close()
    counter.close()


def test_each_call_has_its_own_cpu_time_budget(sandbox: Sandbox) -> None:
    session = sandbox.credit_session(BURNS_CPU, n_agents=2, monotonic=True)
    session.credit(states(4))  # loaded (and the worker started), outside the measured calls
    walls = []
    for _ in range(8):
        start = time.monotonic()
        assert session.credit(states(4)).ok
        walls.append(time.monotonic() - start)
    # A busy loop uses CPU as fast as the wall clock runs: together the calls used well over the 1 s
    # budget that each call may use, and every one of them ran.
    assert sum(walls) > 2.0, walls
    forever = sandbox.credit_session(HANGS_ON_LARGE_BATCHES, n_agents=2, monotonic=True)
    assert forever.credit(states(200)).error_kind == ErrorKind.TIMEOUT
    session.close()


def test_each_call_has_its_own_output_budget(sandbox: Sandbox) -> None:
    limit = sandbox.limits.output_bytes
    chatty = sandbox.credit_session(PRINTS.replace("N", str(limit // 4)), n_agents=2, monotonic=True)
    for _ in range(8):  # twice the budget in all, a quarter of it per call
        result = chatty.credit(states(4))
        assert result.ok, result.message
    flood = sandbox.credit_session(PRINTS.replace("N", str(2 * limit)), n_agents=2, monotonic=True)
    assert flood.credit(states(4)).error_kind == ErrorKind.OUTPUT_LIMIT
    chatty.close()


def test_a_function_that_does_not_load_answers_why_on_every_call(sandbox: Sandbox) -> None:
    session = sandbox.credit_session("def credit_assignment(agents_q, state)\n    return 1\n", 2, True)
    for _ in range(2):
        result = session.credit(states(4))
        assert result.error_kind == ErrorKind.SYNTAX and result.credit is None


def test_sessions_survive_a_new_worker_by_loading_again(sandbox: Sandbox) -> None:
    session = sandbox.credit_session(COUNTER, n_agents=2, monotonic=True)
    assert session.credit(states(4)).credit.to_array()[0, -1] == 1.0
    killed = sandbox.probe("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert not killed.ok
    again = session.credit(states(4))  # a new worker: the function is loaded there first
    assert again.ok and again.credit.to_array()[0, -1] == 1.0
    session.close()


def test_a_cold_sandbox_refuses_sessions() -> None:
    with pytest.raises(ValueError, match="warm worker"):
        Sandbox(backend="process", warm=False).credit_session(LINEAR, 2, True)
