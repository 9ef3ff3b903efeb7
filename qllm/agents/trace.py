"""The run's trace: every LLM call, sandbox verdict, trial and decision, as one JSON object per line.

Append-only and flushed per event, so a killed run keeps everything it did. It doubles as the replay
journal that makes resume cheap: each LLM call is stored under a key derived from the role, the call's
place in the run and the exact messages, and each finished trial training under its trial key; a
resumed run answers a call or a trial with that key from the trace instead of repeating it
(LangGraph's checkpoints only cover finished steps; this covers the work inside an interrupted one too).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from qllm.agents.trial import Trial

TRACE_FILE = "trace.jsonl"

Event = dict[str, Any]
Listener = Callable[[Event], None]
JOURNALLED = ("llm_call", "trial")
"""Events a resumed run reads back instead of redoing their work, by their ``key``."""


def call_key(role: str, label: str, messages: Sequence[tuple[str, str]]) -> str:
    """Identity of one LLM call: who asks, for what, with exactly which messages."""
    payload = json.dumps([role, label, list(messages)], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class Trace:
    """Writes and reads ``trace.jsonl`` in a run folder; thread-safe (candidates run concurrently)."""

    def __init__(self, run_dir: Path, listener: Listener | None = None) -> None:
        self.path = run_dir / TRACE_FILE
        self.listener = listener
        self._lock = threading.Lock()
        self._journal = {(e["event"], e["key"]): e for e in self.events() if e.get("event") in JOURNALLED}

    def events(self) -> list[Event]:
        return list(read_events(self.path))

    def record(self, event: str, **data: Any) -> Event:
        entry = {"event": event, "time": time.time(), **data}
        line = json.dumps(entry, ensure_ascii=False, default=str)
        with self._lock:
            with self.path.open("a") as out:
                out.write(line + "\n")
            if event in JOURNALLED:
                self._journal[event, entry["key"]] = entry
        if self.listener is not None:
            self.listener(entry)
        return entry

    def recorded_reply(self, key: str) -> Event | None:
        """The earlier call with this key, if this run made it already."""
        with self._lock:
            return self._journal.get(("llm_call", key))

    def record_trial(self, trial: Trial) -> None:
        self.record("trial", **trial.model_dump(mode="json"))

    def recorded_trial(self, key: str) -> Trial | None:
        """The trial with this key, if this run finished it already."""
        with self._lock:
            entry = self._journal.get(("trial", key))
        return None if entry is None else Trial.model_validate(entry)


def read_events(path: Path) -> Iterator[Event]:
    """The events of a trace file. Lines that are not JSON are skipped: a run killed mid-write leaves a
    torn last line, and nothing else writes to the file."""
    if not path.is_file():
        return
    with path.open() as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
