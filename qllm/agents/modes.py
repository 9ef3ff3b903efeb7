"""What the coder is asked to write: free-form code, or a structured credit spec that we compile.

Both modes end in the same place, an ``agent_weight(s, i)`` that :mod:`qllm.agents.template` assembles
into a TFCAF, so validation, evaluation, artifacts and training never know which mode produced it.
They differ in the prompts, in the reply's format and in how a reply becomes code:

- ``code``: the coder writes ``agent_weight`` itself (strong models; the paper's setting).
- ``spec``: the coder picks per-agent quantities and says whether the agents with the highest or the
  lowest value of each get more credit, as JSON constrained by a schema (a grammar for the local
  model); :mod:`qllm.agents.spec` compiles it.

``auto`` picks ``spec`` for the built-in local model and ``code`` for every other provider.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Protocol

from pydantic import BaseModel

from qllm.agents.extract import ExtractionError, extract_code, extract_json
from qllm.agents.llm import Messages
from qllm.agents.messages import coder_messages, contract_prompt, improve_trial, repair_messages
from qllm.agents.spec import (
    SPEC_TEMPLATE_ID,
    CreditSpec,
    Quantity,
    SpecError,
    compile_spec,
    per_agent_quantities,
    quantity_table,
    spec_model,
)
from qllm.agents.state import Attempt, Candidate
from qllm.agents.template import TEMPLATE_ID, WRITTEN_FUNCTION, NamedState
from qllm.agents.trial import TrialSummary
from qllm.llm.providers import ModelSpec
from qllm.prompts import PromptLibrary
from qllm.sandbox import ValidationInputs

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f]")


class Mode(StrEnum):
    """What the coder writes (``GenerationSettings.mode``)."""

    AUTO = "auto"
    """``spec`` for the built-in local model, ``code`` for every other provider."""
    CODE = "code"
    SPEC = "spec"


class WritingMode(Protocol):
    """How the coder's prompts are built and how its replies become ``agent_weight`` code."""

    name: str
    template_id: str
    reply_schema: type[BaseModel] | None
    """Structured output asked of the coder (``None``: free text with a code block)."""

    def contract(self, prompts: PromptLibrary, named: NamedState, inputs: ValidationInputs) -> str:
        """What the coder must answer: the same for every coder call of a run."""
        ...

    def draft(
        self,
        prompts: PromptLibrary,
        task: str,
        contract: str,
        parent: Candidate | None,
        tips: str,
        *,
        parent_trial: TrialSummary | None = None,
    ) -> Messages:
        """A first draft, or an improvement of ``parent`` (with how it trained on trial, if it was)."""
        ...

    def repair(self, prompts: PromptLibrary, task: str, contract: str, failed: Attempt) -> Messages: ...

    def to_code(self, reply: str) -> str:
        """The ``agent_weight`` source in ``reply`` (:class:`ExtractionError` or :class:`SpecError`)."""
        ...


@dataclass(frozen=True)
class CodeMode:
    """The coder writes ``agent_weight(s, i)`` as Python."""

    name: str = "code"
    template_id: str = TEMPLATE_ID
    reply_schema: type[BaseModel] | None = None

    def contract(self, prompts: PromptLibrary, named: NamedState, inputs: ValidationInputs) -> str:
        return contract_prompt(prompts, named, inputs)

    def draft(
        self,
        prompts: PromptLibrary,
        task: str,
        contract: str,
        parent: Candidate | None,
        tips: str,
        *,
        parent_trial: TrialSummary | None = None,
    ) -> Messages:
        return coder_messages(prompts, task, contract, parent, tips, parent_trial=parent_trial)

    def repair(self, prompts: PromptLibrary, task: str, contract: str, failed: Attempt) -> Messages:
        return repair_messages(prompts, task, contract, failed.code, failed.result.feedback())

    def to_code(self, reply: str) -> str:
        return extract_code(reply, must_define=WRITTEN_FUNCTION)


@dataclass(frozen=True)
class SpecMode:
    """The coder answers with a :class:`~qllm.agents.spec.CreditSpec` over the task's per-agent quantities."""

    quantities: tuple[Quantity, ...]
    name: str = "spec"
    template_id: str = SPEC_TEMPLATE_ID

    @cached_property
    def reply_schema(self) -> type[CreditSpec]:
        return spec_model(list(self.quantities))

    def contract(self, prompts: PromptLibrary, named: NamedState, inputs: ValidationInputs) -> str:
        return prompts.render("spec_contract", quantities=quantity_table(list(self.quantities)))

    def draft(
        self,
        prompts: PromptLibrary,
        task: str,
        contract: str,
        parent: Candidate | None,
        tips: str,
        *,
        parent_trial: TrialSummary | None = None,
    ) -> Messages:
        parts = [task, contract]
        if parent is not None:
            parts.append(
                prompts.render(
                    "spec_improve",
                    spec=_shown_spec(parent.final.reply),
                    trial=improve_trial(parent_trial),
                    tips=tips.strip() or "make the weights reflect which agents matter in each state",
                )
            )
        return [("system", prompts.render("spec_system")), ("human", "\n".join(parts))]

    def repair(self, prompts: PromptLibrary, task: str, contract: str, failed: Attempt) -> Messages:
        human = prompts.render(
            "spec_repair",
            task=task,
            contract=contract,
            reply=failed.reply.strip() or "(empty)",
            error=failed.result.feedback(),
        )
        return [("system", prompts.render("spec_system")), ("human", human)]

    def to_code(self, reply: str) -> str:
        # A grammar-made string may hold a raw newline: strict JSON refuses it, as whitespace it is harmless.
        spec = extract_json(CONTROL_CHARACTERS.sub(" ", reply), self.reply_schema)
        return compile_spec(spec, list(self.quantities))


def _shown_spec(reply: str) -> str:
    """An earlier spec, as the coder wrote it (re-serialised when it parses, so it is tidy)."""
    try:
        return extract_json(reply, CreditSpec).model_dump_json(indent=2)
    except (ExtractionError, ValueError):
        return reply.strip()


def resolve_mode(mode: Mode, coder: ModelSpec) -> Mode:
    """``auto`` -> ``spec`` for the built-in local model, ``code`` otherwise; other modes unchanged."""
    if mode == Mode.AUTO:
        return Mode.SPEC if coder.provider == "local" else Mode.CODE
    return mode


def writing_mode(mode: Mode, named: NamedState) -> WritingMode:
    """The mode object for a resolved mode (``code`` or ``spec``)."""
    if mode == Mode.CODE:
        return CodeMode()
    quantities = tuple(per_agent_quantities(named))
    if not quantities:
        raise SpecError(
            f"task {named.info.task} has no per-agent quantities in its state schema: use mode code"
        )
    return SpecMode(quantities)


__all__ = [
    "CodeMode",
    "Mode",
    "SpecError",
    "SpecMode",
    "WritingMode",
    "resolve_mode",
    "writing_mode",
]
