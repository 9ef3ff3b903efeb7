"""LangSmith tracing with the standard variables, against a stub LangSmith endpoint on loopback.

A generation with scripted models runs in a child process (LangSmith reads its variables once per
process) with ``LANGSMITH_ENDPOINT`` pointing at the stub, which keeps every run the tracer posts.
With ``LANGSMITH_TRACING=true`` the graph's nodes and the LLM calls arrive with qllm's metadata; with it
off, the stub hears nothing at all.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from openai_stub import serving

TESTS = Path(__file__).resolve().parent

GENERATION = """
import sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from graph_fakes import GOOD, GOOD_OTHER, evaluation, generate, scripted
from langchain_core.tracers.langchain import wait_for_all_tracers
outcome = generate(Path(tempfile.mkdtemp()), scripted([GOOD, GOOD_OTHER]), scripted([evaluation()]))
wait_for_all_tracers()
print(outcome.status)
"""


class StubLangSmith(ThreadingHTTPServer):
    """Answers every request with an empty JSON object and keeps the runs posted to it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.paths: list[str] = []
        self.runs: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StubLangSmith

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    do_PATCH = do_POST  # noqa: N815 - http.server's naming

    def _answer(self, body: bytes) -> None:
        runs = _posted_runs(self.headers.get("Content-Type", ""), body)
        with self.server.lock:
            self.server.paths.append(self.path)
            self.server.runs.extend(runs)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


def _posted_runs(content_type: str, body: bytes) -> list[dict[str, Any]]:
    """The runs of a multipart ingest request: a part ``post.<id>`` (or ``patch.<id>``) holds a run's
    fields, and parts ``post.<id>.<field>`` hold its larger fields (inputs, outputs, extra)."""
    match = re.search(r"boundary=([^;]+)", content_type)
    if match is None:
        return []
    runs: dict[str, dict[str, Any]] = {}
    for part in body.split(b"--" + match[1].encode()):
        head, _, payload = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="(?:post|patch)\.([0-9a-f-]+)(?:\.(\w+))?"', head)
        if name is None:
            continue
        fields = json.loads(payload.rstrip(b"\r\n"))
        run = runs.setdefault(name[1].decode(), {})
        run.update(fields if name[2] is None else {name[2].decode(): fields})
    return list(runs.values())


@contextmanager
def stub_langsmith() -> Iterator[StubLangSmith]:
    server = StubLangSmith()
    with serving(server):
        yield server


def generate_with(environment: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_"))}
    result = subprocess.run(
        [sys.executable, "-c", GENERATION, str(TESTS)], env=env | environment, capture_output=True, text=True,
        timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and "succeeded" in result.stdout, result.stderr[-3000:]


def test_with_tracing_on_the_nodes_and_calls_arrive_with_qllms_metadata() -> None:
    with stub_langsmith() as stub:
        generate_with(
            {"LANGSMITH_TRACING": "true", "LANGSMITH_ENDPOINT": stub.url, "LANGSMITH_API_KEY": "test-key",
             "LANGSMITH_PROJECT": "qllm-tests"}
        )  # fmt: skip
        runs = list(stub.runs)
    names = {run.get("name") for run in runs}
    assert {"candidate", "write", "check", "evaluate", "review", "finish"} <= names
    assert {"coder r1-c0-a0", "coder r1-c1-a0", "evaluator r1-eval0"} <= names
    (coder,) = [r for r in runs if r.get("name") == "coder r1-c0-a0" and "extra" in r]
    metadata = coder["extra"]["metadata"]
    assert metadata["qllm_task"] == "matrix-climbing" and metadata["qllm_candidate"] == "r1-c0"
    assert metadata["qllm_round"] == 1 and metadata["qllm_attempt"] == 0 and metadata["qllm_role"] == "coder"
    assert metadata["qllm_run"].startswith("matrix-climbing__tfcaf__")
    assert all(r.get("session_name") in (None, "qllm-tests") for r in runs)


def test_with_tracing_off_nothing_is_sent() -> None:
    with stub_langsmith() as stub:
        generate_with(
            {"LANGSMITH_TRACING": "false", "LANGSMITH_ENDPOINT": stub.url, "LANGSMITH_API_KEY": "k"}
        )
        assert stub.paths == []
