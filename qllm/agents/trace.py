"""The run's trace: every LLM call, sandbox verdict, trial and decision, as one JSON object per line.

Each line is one :data:`TraceEvent`, a pydantic union discriminated by ``event``; :func:`read_events` is
the one loader (the trace view, the eval scorers and ``qllm generate``'s progress all read typed events).
Where an event sits in the run is in its fields (``round``, ``slot``, ``attempt``), never parsed back
out of an id.

Append-only and flushed per event, so a killed run keeps everything it did. Each event recorded inside a
graph step also goes to the graph's ``custom`` stream (what ``qllm generate`` prints and the LangGraph API
streams). The trace doubles as the replay journal that makes resume cheap: each LLM call is stored under a
key derived from the role, the call's place in the run and the exact messages, and each finished trial
training under its trial key; a resumed run answers a call or a trial with that key from the trace instead
of repeating it (LangGraph's checkpoints only cover finished steps; this covers the work inside an
interrupted one too).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from langgraph.config import get_stream_writer
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, model_validator

from qllm.agents.state import Decision
from qllm.agents.trial import Trial
from qllm.sandbox import ValidationResult

TRACE_FILE = "trace.jsonl"


class TraceFormatError(ValueError):
    """A trace line this version cannot read (written by another version of qllm, or edited by hand)."""


class CallPlace(BaseModel, frozen=True):
    """Where an LLM call sits in a run: one attempt of a candidate, or a round's evaluation."""

    round: int
    slot: int | None = None
    """The candidate's slot in its round; ``None`` for the round's evaluation."""
    attempt: int = 0
    """The candidate's attempt (0 the draft, 1.. repairs), or the evaluator's ask (1 when asked again)."""

    @property
    def label(self) -> str:
        """The call's name in prompts, progress and the replay key: ``r1-c0-a0`` or ``r1-eval0``."""
        if self.slot is None:
            return f"r{self.round}-eval{self.attempt}"
        return f"r{self.round}-c{self.slot}-a{self.attempt}"

    @property
    def candidate_id(self) -> str | None:
        return None if self.slot is None else f"r{self.round}-c{self.slot}"


_LEGACY_LABEL = re.compile(r"r(?P<round>\d+)-(?:c(?P<slot>\d+)-a(?P<attempt>\d+)|eval(?P<ask>\d+))")


def _legacy_place(label: str) -> dict[str, Any] | None:
    """The place of a call in a trace written before events carried it (the only label ever parsed)."""
    match = _LEGACY_LABEL.fullmatch(label)
    if match is None:
        return None
    slot = match["slot"]
    attempt = match["attempt"] if slot is not None else match["ask"]
    return {
        "round": int(match["round"]),
        "slot": None if slot is None else int(slot),
        "attempt": int(attempt),
    }


class _Event(BaseModel):
    time: float = Field(default_factory=time.time)


class RunStarted(_Event):
    """The run started, or was resumed, with these settings and prompts."""

    event: Literal["started", "resumed"]
    settings: dict[str, Any]
    prompt_version: str
    prompt_hashes: dict[str, str]


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0


class _Call(_Event):
    role: str
    """``coder`` or ``evaluator``."""
    model: str
    label: str
    place: CallPlace | None = None
    """``None`` only for a call whose label names no place in the graph (none are made today)."""
    latency_s: float

    @model_validator(mode="before")
    @classmethod
    def _place_of_legacy_calls(cls, data: Any) -> Any:
        if isinstance(data, dict) and "place" not in data and "label" in data:
            data = {**data, "place": _legacy_place(data["label"])}
        return data


class LLMCallEvent(_Call):
    """A call that was answered."""

    event: Literal["llm_call"]
    key: str
    """:func:`call_key`: a resumed run replays the reply of a call with the same key."""
    messages: list[tuple[str, str]]
    response: str
    parsed: dict[str, Any] | None = None
    usage: Usage = Field(default_factory=Usage)


class LLMErrorEvent(_Call):
    """A call that failed; ``transient`` ones are retried."""

    event: Literal["llm_error"]
    error: str
    transient: bool


class ValidationEvent(_Event):
    """The sandbox's verdict on one attempt of a candidate."""

    event: Literal["validation"]
    candidate: str
    round: int
    slot: int
    attempt: int
    code: str
    ok: bool
    result: ValidationResult
    subject: str = ""
    """The assembled function's :func:`~qllm.agents.trial.function_identity` (its trials' subject);
    "" when nothing could be assembled."""

    @model_validator(mode="before")
    @classmethod
    def _slot_of_legacy_events(cls, data: Any) -> Any:
        if isinstance(data, dict) and "slot" not in data and "candidate" in data:
            place = _legacy_place(f"{data['candidate']}-a0") or {"slot": 0}
            data = {**data, "slot": place["slot"]}
        return data


class TrialEvent(Trial, _Event):
    """One ended trial training (:mod:`qllm.agents.trial`)."""

    event: Literal["trial"]

    def trial(self) -> Trial:
        return Trial.model_validate(self.model_dump(exclude={"event", "time"}))


class DecisionEvent(Decision, _Event):
    """What a round chose."""

    event: Literal["decision"]

    def decision(self) -> Decision:
        return Decision.model_validate(self.model_dump(exclude={"event", "time"}))


class FinishedEvent(_Event):
    event: Literal["finished"]
    status: str
    reason: str


TraceEvent = Annotated[
    RunStarted | LLMCallEvent | LLMErrorEvent | ValidationEvent | TrialEvent | DecisionEvent | FinishedEvent,
    Field(discriminator="event"),
]
_EVENT: TypeAdapter[TraceEvent] = TypeAdapter(TraceEvent)


def _to_stream(event: TraceEvent) -> None:
    """Hand ``event`` to the graph's ``custom`` stream when it is recorded inside a graph step: that
    stream is what ``qllm generate`` prints and what the LangGraph API streams. Events recorded outside
    the graph (the run's start) have no stream; whoever records them yields them itself."""
    try:
        write = get_stream_writer()
    except RuntimeError:  # not inside a graph step
        return
    except AttributeError:  # in the LangGraph server's graph factory, whose runtime streams nothing
        return
    write(event)


def call_key(role: str, label: str, messages: Sequence[tuple[str, str]]) -> str:
    """Identity of one LLM call: who asks, for what, with exactly which messages."""
    payload = json.dumps([role, label, list(messages)], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class Trace:
    """Writes and reads ``trace.jsonl`` in a run folder; thread-safe (candidates run concurrently)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / TRACE_FILE
        self._lock = threading.Lock()
        self._replies: dict[str, LLMCallEvent] = {}
        self._trials: dict[str, Trial] = {}
        for event in read_events(self.path):
            self._journal(event)

    def events(self) -> list[TraceEvent]:
        return list(read_events(self.path))

    def record(self, event: TraceEvent) -> TraceEvent:
        line = json.dumps(event.model_dump(mode="json"), ensure_ascii=False)  # as readable as ever by grep
        with self._lock:
            with self.path.open("a") as out:
                out.write(line + "\n")
            self._journal(event)
        _to_stream(event)
        return event

    def _journal(self, event: TraceEvent) -> None:
        if isinstance(event, LLMCallEvent):
            self._replies[event.key] = event
        elif isinstance(event, TrialEvent) and event.status.final:  # timed-out and lost ones are redone
            self._trials[event.key] = event.trial()

    def recorded_reply(self, key: str) -> LLMCallEvent | None:
        """The earlier call with this key, if this run made it already."""
        with self._lock:
            return self._replies.get(key)

    def record_trial(self, trial: Trial) -> None:
        self.record(TrialEvent(event="trial", **trial.model_dump()))

    def recorded_trial(self, key: str) -> Trial | None:
        """The trial with this key, if this run finished it already."""
        with self._lock:
            return self._trials.get(key)


def read_events(path: Path) -> Iterator[TraceEvent]:
    """The typed events of a trace file. A line that is not JSON is skipped: a run killed mid-write leaves
    a torn last line, and nothing else writes to the file. A JSON line that is not an event this version
    knows raises :class:`TraceFormatError` naming the line."""
    if not path.is_file():
        return
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            try:
                yield _EVENT.validate_python(data)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise TraceFormatError(
                    f"{path}, line {number}: not an event this version reads ({where}: {first['msg']})"
                ) from None
