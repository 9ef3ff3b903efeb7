"""The one place that pulls code and JSON out of free-form LLM replies.

Models that support structured output get it (see :mod:`qllm.agents.llm`); everything else, including
every coder reply, comes through here. Both extractors are deliberately forgiving about the wrapping
(fences with or without a language tag, prose before and after, an unclosed fence at the end of a
truncated reply) and strict about the content: the code must parse, the JSON must validate.
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from qllm.pysource import parse_python

FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)

Model = TypeVar("Model", bound=BaseModel)


class ExtractionError(ValueError):
    """The reply holds no usable code or no valid JSON object."""


def _parses(code: str) -> bool:
    try:
        parse_python(code)
    except SyntaxError:
        return False
    return True


def extract_code(reply: str, must_define: str | None = None) -> str:
    """The Python code in ``reply``: the fenced block that parses and defines ``must_define``, if any.

    Fenced blocks are preferred to the bare reply. Among the blocks that define ``must_define``, the
    first that parses wins; if none parses, the first is returned as is, so that its syntax error reaches
    the coder in the repair prompt.
    """
    blocks = [b for b in (textwrap.dedent(m.group(2)).strip() for m in FENCE.finditer(reply)) if b]
    candidates = blocks or [textwrap.dedent(reply).strip()]
    if not any(candidates):
        raise ExtractionError("the reply is empty: expected one Python code block")
    defining = [b for b in candidates if must_define is None or f"def {must_define}" in b]
    if not defining:
        raise ExtractionError(f"the reply has no Python code defining `{must_define}`")
    return next((b for b in defining if _parses(b)), defining[0])


def _json_objects(text: str) -> list[str]:
    """Every balanced ``{...}`` span in ``text``, outermost first, respecting strings."""
    spans, depth, start, in_string, escaped = [], 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans


def extract_json(reply: str, model: type[Model]) -> Model:
    """The first JSON object in ``reply`` that validates as ``model``; :class:`ExtractionError` if none."""
    problems = []
    for span in _json_objects(reply):
        try:
            return model.model_validate(json.loads(span))
        except json.JSONDecodeError as exc:
            problems.append(f"not valid JSON ({exc.msg} at character {exc.pos})")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the object"
            problems.append(f"{where}: {first['msg']}")
    if not problems:
        raise ExtractionError("the reply contains no JSON object")
    raise ExtractionError("the reply's JSON does not match the required form: " + "; ".join(problems[:3]))
