"""A scripted OpenAI-compatible chat server on 127.0.0.1, to test the real provider path offline.

Each POST to ``/v1/chat/completions`` takes the next script item: a string is returned as the
assistant's reply; an ``(status, message)`` tuple is returned as that HTTP error; a :class:`Slow` reply
comes after its delay. Requests are kept.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Slow:
    """A reply that takes ``seconds`` to come (a model still thinking when the test interrupts it)."""

    reply: str
    seconds: float


ScriptItem = str | tuple[int, str] | Slow


class StubServer(ThreadingHTTPServer):
    def __init__(self, script: list[ScriptItem]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def next_item(self, request: dict[str, Any]) -> ScriptItem:
        with self.lock:
            self.requests.append(request)
            return self.script.pop(0) if self.script else (500, "script exhausted")


class _Handler(BaseHTTPRequestHandler):
    server: StubServer

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        item = self.server.next_item(request)
        if isinstance(item, Slow):
            time.sleep(item.seconds)
            item = item.reply
        if isinstance(item, tuple):
            status, body = item[0], {"error": {"message": item[1], "type": "stub", "code": str(item[0])}}
        else:
            status, body = 200, _completion(item, request.get("model", "stub"))
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass


def _completion(text: str, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }


@contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[None]:
    """``server`` answering on a thread of its own for the ``with`` block, then shut down."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def stub_server(script: list[ScriptItem]) -> Iterator[StubServer]:
    server = StubServer(script)
    with serving(server):
        yield server
