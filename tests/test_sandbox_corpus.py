"""Every hostile or broken function of the corpus is contained and classified, and nothing escapes.

Each file in ``tests/sandbox_corpus/`` starts with ``# expect: <error kind>`` (and optionally
``# options: monotonic``). ``{CANARY}`` in a file is replaced by a path on the host that no candidate may
create, ``{PORT}`` by the port of a listener on the host that no candidate may reach. After the whole
corpus has run, the canary must not exist, the listener must have accepted nothing, torch in this
process must be untouched, and the same sandbox must still validate a good function. The whole corpus
runs under every isolation backend that can run here (``scripts/setup.sh`` installs gVisor and
bubblewrap; ``unshare`` comes with util-linux; Docker where an engine runs).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from qllm.envs.recording import record
from qllm.sandbox import CheckOptions, ErrorKind, Sandbox, SandboxLimits, ValidationInputs
from qllm.sandbox.backends import available_backends

CORPUS = sorted((Path(__file__).parent / "sandbox_corpus").glob("*.py"))
VDN = "def credit_assignment(agents_q, state):\n    return agents_q.sum(dim=1, keepdim=True)\n"
ORIGINAL_TORCH = {"sum": torch.sum, "load": torch.load, "softmax": F.softmax, "tensor_sum": torch.Tensor.sum}


class Listener:
    """A TCP server on the host's loopback that records every connection it accepts."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.server.close()


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("escape") / "canary"


@pytest.fixture(scope="module", params=available_backends())
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    # Short budgets: the corpus has several infinite loops.
    with Sandbox(limits=SandboxLimits(wall_s=3.0, cpu_s=3, memory_mb=512), backend=request.param) as box:
        yield box


def test_the_corpus_runs_under_the_strong_backends() -> None:
    assert {"gvisor", "bwrap"} <= set(available_backends())  # installed by scripts/setup.sh
    if os.environ.get("QLLM_REQUIRE_DOCKER") == "1":  # scripts/test.sh found or started an engine
        assert "docker" in available_backends()


@pytest.fixture(scope="module")
def inputs() -> ValidationInputs:
    return ValidationInputs.from_recording(record("lbf-8x8-2p-2f", episodes=5), max_states=64)


def _expectation(source: str) -> tuple[ErrorKind, CheckOptions]:
    lines = source.splitlines()
    kind = ErrorKind(lines[0].removeprefix("# expect:").strip())
    return kind, CheckOptions(require_monotonic="# options: monotonic" in lines[1])


def test_the_corpus_is_large_and_covers_every_threat() -> None:
    assert len(CORPUS) >= 40
    prefixes = {path.stem.split("_")[0] for path in CORPUS}
    for threat in ("file", "net", "proc", "import", "dunder", "frame", "patch", "loop", "memory", "output",
                   "signal", "mutate", "nan", "shape", "coupling"):  # fmt: skip
        assert threat in prefixes, threat


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_hostile_function_is_contained_and_classified(
    path: Path, sandbox: Sandbox, inputs: ValidationInputs, listener: Listener, canary: Path
) -> None:
    source = path.read_text().replace("{CANARY}", str(canary)).replace("{PORT}", str(listener.port))
    expected, options = _expectation(source)
    result = sandbox.validate(source, inputs, options)
    assert not result.ok
    assert result.error_kind == expected, f"{result.error_kind}: {result.message}\n{result.traceback}"
    assert result.message and len(result.message) < 1000
    assert not canary.exists(), "a candidate wrote to the host"
    assert listener.accepted == 0, "a candidate reached a host socket"


def test_nothing_escaped_and_the_sandbox_still_works(
    sandbox: Sandbox, inputs: ValidationInputs, listener: Listener, canary: Path
) -> None:
    for path in CORPUS:  # again, all in a row on one warm worker, to catch leaks from job to job
        sandbox.validate(path.read_text().replace("{CANARY}", str(canary)), inputs)
    assert not canary.exists()
    assert listener.accepted == 0
    assert torch.sum is ORIGINAL_TORCH["sum"] and torch.load is ORIGINAL_TORCH["load"]
    assert F.softmax is ORIGINAL_TORCH["softmax"] and torch.Tensor.sum is ORIGINAL_TORCH["tensor_sum"]
    result = sandbox.validate(VDN, inputs)
    assert result.ok, result.message
