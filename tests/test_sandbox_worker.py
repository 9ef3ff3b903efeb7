"""How the sandbox worker hands a job to a forked child, driven in this process (no isolation backend).

A child is forked before its job and says it is ready once it has the job; the worker reads that, then
the answer. A busy machine can leave the worker descheduled long enough for a quick child to have said
ready *and* answered before the worker reads anything: both frames then arrive in one read.
"""

from __future__ import annotations

import array
import fcntl
import termios
import time
from collections.abc import Callable

import pytest

from qllm.sandbox import SandboxLimits, worker
from qllm.sandbox.protocol import encode_frame


def _bytes_waiting(fd: int) -> int:
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


def test_a_child_that_answers_before_the_worker_reads_that_it_is_ready_keeps_its_answer_and_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    child = worker._fork_child(None)
    ready_bytes = len(encode_frame(worker.READY))
    write_all: Callable[[int, bytes, float], None] = worker._write_all

    def write_then_look_away(fd: int, data: bytes, deadline: float) -> None:
        write_all(fd, data, deadline)
        give_up = time.monotonic() + 30
        while _bytes_waiting(child.results) <= ready_bytes:  # until its answer is behind the ready frame
            assert time.monotonic() < give_up, "the child did not answer"
            time.sleep(0.01)

    monkeypatch.setattr(worker, "_write_all", write_then_look_away)
    # To fd 1 itself: this process's sys.stdout is pytest's capture, not the child's output pipe.
    probe = "import os\nos.write(1, b'from the job')"
    job = {"kind": "probe", "source": probe, "limits": SandboxLimits(wall_s=20).to_dict()}

    assert child.begin(job) is None
    answer = child.answer_once()
    worker._reap_retired()

    assert answer["ok"], answer
    assert "from the job" in answer["printed"]
