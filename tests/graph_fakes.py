"""Scripted LangChain fake chat models and replies for the graph tests."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from qllm.agents import GenerationOutcome, GenerationRun, GenerationSettings, Models

GOOD = "Here you go:\n```python\ndef agent_weight(s, i):\n    return 1.0 + i\n```\n"
GOOD_OTHER = (
    "```python\ndef agent_weight(s, i):\n    return 3.0 if i == 0 and s['last_joint_action'][0] else 1.0\n```"
)
BAD_KEY = "```python\ndef agent_weight(s, i):\n    return s['no_such_field'][i]\n```"
BAD_SYNTAX = "```python\ndef agent_weight(s, i)\n    return 1\n```"
NO_CODE = "I am not sure how to do that."


def evaluation(choice: int = 1, tips: str = "weight the agent that moved", satisfied: bool = False) -> str:
    critiques = [{"candidate": choice, "critique": "reasonable"}]
    reply = {"choice": choice, "critiques": critiques, "tips": tips, "satisfied": satisfied}
    return "Verdict:\n" + json.dumps(reply)


class HTTPError(Exception):
    """Stands in for a provider SDK error carrying an HTTP status."""

    def __init__(self, status_code: int, message: str = "") -> None:
        super().__init__(message or f"HTTP {status_code}")
        self.status_code = status_code


class ScriptedChat(GenericFakeChatModel):
    """Replies from a script, in order; an exception in the script is raised instead of replying.

    ``prompts`` records the human message of every call the model actually received.
    """

    prompts: list[str] = Field(default_factory=list)

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        self.prompts.append(str(messages[-1].content))
        try:
            item = next(self.messages)
        except StopIteration:
            raise AssertionError("the graph asked for more replies than the script has") from None
        if isinstance(item, BaseException):
            raise item
        message = AIMessage(
            content=item, usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def scripted(replies: Iterable[str | BaseException]) -> ScriptedChat:
    items: Iterator[str | BaseException] = iter(list(replies))
    return ScriptedChat(messages=items)


def settings(**overrides: Any) -> GenerationSettings:
    base = {
        "task": "matrix-climbing",
        "candidates": 2,
        "rounds": 1,
        "repairs": 1,
        "record_episodes": 3,
        "retry_initial_s": 0.01,
        # The fakes stand in for a strong model writing code and judging it; spec mode and consensus
        # are set by the tests that use them.
        "mode": "code",
        "selection": "evaluator",
    }
    return GenerationSettings(**{**base, **overrides})


def generate(
    tmp_path: Path, coder_chat: ScriptedChat, evaluator_chat: ScriptedChat, **overrides: Any
) -> GenerationOutcome:
    """A new run with these settings overrides, driven by the scripted models."""
    run = GenerationRun.create(settings(**overrides), tmp_path)
    return run.execute(Models(coder_chat, evaluator_chat))
