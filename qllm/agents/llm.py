"""Asking the coder and the evaluator: one call path for every provider, traced and replayable.

Each call is recorded in the trace (messages, reply, token usage, latency). A call the run already made
(same role, place and messages: see :func:`qllm.agents.trace.call_key`) is answered from the trace,
which is what lets ``--resume`` skip completed LLM calls. Failures are sorted into two kinds:
:class:`TransientLLMError` (timeouts, 429, 5xx), which the graph's retry policy retries with backoff,
and :class:`~qllm.llm.providers.ProviderError` (bad credentials, unknown model), which ends the run
with a clear message and no stack trace.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel

from qllm.agents.trace import CallPlace, LLMCallEvent, LLMErrorEvent, Trace, Usage, call_key
from qllm.llm.providers import ModelSpec, is_transient, provider_error

Messages = Sequence[tuple[str, str]]
"""``(role, content)`` pairs, role one of ``system`` / ``human``: what LangChain accepts, and JSON-able."""


class TransientLLMError(RuntimeError):
    """A provider failure worth retrying (timeout, rate limit, server error)."""


@dataclass(frozen=True)
class ChatRole:
    """A model playing one role in the graph."""

    name: str
    """``coder`` or ``evaluator``."""
    spec: ModelSpec
    model: BaseChatModel
    structured_output: bool = False
    """Use the provider's structured output for typed replies (else JSON is extracted from text)."""


@dataclass(frozen=True)
class LLMReply:
    text: str
    """The reply text (for structured output: the JSON arguments the model returned)."""
    parsed: dict[str, Any] | None = None
    """The structured reply, when the provider parsed one."""
    replayed: bool = False
    """Answered from this run's trace instead of the provider."""


def _text(message: AIMessage) -> str:
    return message.text if isinstance(message.text, str) else str(message.content)


def _usage(message: AIMessage | None) -> Usage:
    usage = getattr(message, "usage_metadata", None) or {}
    return Usage(
        input_tokens=int(usage.get("input_tokens", 0)), output_tokens=int(usage.get("output_tokens", 0))
    )


def _tracing_config(role: ChatRole, place: CallPlace) -> RunnableConfig:
    """What a tracer (LangSmith) records of this call besides the messages: its name, where it sits in
    the run, and who asked (merged with the run's own metadata: the task and the run's folder)."""
    metadata: dict[str, Any] = {
        "qllm_role": role.name,
        "qllm_model": str(role.spec),
        "qllm_round": place.round,
    }
    if place.candidate_id is not None:
        metadata |= {"qllm_candidate": place.candidate_id, "qllm_attempt": place.attempt}
    return {"run_name": f"{role.name} {place.label}", "metadata": metadata, "tags": [f"qllm:{role.name}"]}


def call_seed(run_seed: int, label: str) -> int:
    """A sampling seed per call: reproducible for the run, different for each candidate and attempt."""
    return int.from_bytes(hashlib.sha256(f"{run_seed}:{label}".encode()).digest()[:4], "little") & 0x7FFFFFFF


class LLMCaller:
    """Makes, traces and replays calls for the graph's nodes."""

    def __init__(self, trace: Trace, seed: int = 0) -> None:
        self.trace = trace
        self.seed = seed

    def ask(
        self, role: ChatRole, place: CallPlace, messages: Messages, schema: type[BaseModel] | None = None
    ) -> LLMReply:
        """``role``'s reply to ``messages``, asked from ``place`` in the run."""
        key = call_key(role.name, place.label, messages)
        earlier = self.trace.recorded_reply(key)
        if earlier is not None:
            return LLMReply(earlier.response, earlier.parsed, replayed=True)
        started = time.perf_counter()
        try:
            seed = call_seed(self.seed, place.label)
            message, parsed = self._invoke(role, messages, schema, seed, _tracing_config(role, place))
        except Exception as exc:
            self._raise_classified(exc, role, place, time.perf_counter() - started)
        latency = time.perf_counter() - started
        text = json.dumps(parsed) if parsed is not None and not _text(message).strip() else _text(message)
        self.trace.record(
            LLMCallEvent(
                event="llm_call", key=key, role=role.name, model=str(role.spec), label=place.label,
                place=place, messages=[tuple(m) for m in messages], response=text, parsed=parsed,
                usage=_usage(message), latency_s=round(latency, 3),
            )
        )  # fmt: skip
        return LLMReply(text, parsed)

    @staticmethod
    def _invoke(
        role: ChatRole, messages: Messages, schema: type[BaseModel] | None, seed: int, config: RunnableConfig
    ) -> tuple[AIMessage, dict[str, Any] | None]:
        model: Any = role.model
        if role.spec.info.langchain_provider == "openai":
            # OpenAI-compatible servers accept a sampling seed: the local model's runs become reproducible.
            model = model.bind(seed=seed)
        if schema is not None and role.structured_output:
            # Tool calling, not the SDK's JSON-schema parse: that raises on a malformed reply, whereas
            # include_raw hands it back, and the graph then reads the JSON from the raw text itself.
            structured = model.with_structured_output(schema, method="function_calling", include_raw=True)
            out = structured.invoke(list(messages), config)
            parsed = out.get("parsed")
            return out["raw"], parsed.model_dump() if isinstance(parsed, BaseModel) else None
        if schema is not None and role.spec.provider == "local":
            # llama.cpp turns the JSON schema into a grammar: the reply can only be a valid instance.
            model = model.bind(response_format={"type": "json_object", "schema": schema.model_json_schema()})
        return model.invoke(list(messages), config), None

    def _raise_classified(self, exc: Exception, role: ChatRole, place: CallPlace, latency: float) -> None:
        fatal = provider_error(exc, role.spec)
        transient = fatal is None and is_transient(exc)
        self.trace.record(
            LLMErrorEvent(
                event="llm_error", role=role.name, model=str(role.spec), label=place.label, place=place,
                latency_s=round(latency, 3), error=f"{type(exc).__name__}: {exc}"[:500], transient=transient,
            )
        )  # fmt: skip
        if fatal is not None:
            raise fatal from None
        if transient:
            raise TransientLLMError(f"{role.spec}: {type(exc).__name__}: {exc}") from exc
        raise exc
