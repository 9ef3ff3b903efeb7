"""What the coder is asked to write: one agent's weight, a structured credit spec, or the whole function.

Every mode ends in the same place, a complete TFCAF file (``credit_assignment(agents_q, state)``), so
validation, evaluation, artifacts and training never know which mode produced it. They differ in the
prompts, in the reply's format and in how a reply becomes that file (:meth:`WritingMode.to_source`):

- ``code``: the coder writes ``agent_weight(s, i)``, one agent's weight in one state as plain Python on
  named values, and :mod:`qllm.agents.template` assembles the TFCAF around it (normalised, monotonic
  by construction).
- ``spec``: the coder picks per-agent quantities and says whether the agents with the highest or the
  lowest value of each get more credit, as JSON constrained by a schema (a grammar for the local
  model); :mod:`qllm.agents.spec` compiles it into an ``agent_weight`` for the same template.
- ``function``: the coder writes ``credit_assignment(agents_q, state)`` itself, over batched tensors,
  given the state's named column slices: the kind of function the QLLM paper's coder writes. Nothing
  is assembled around it, so nothing guarantees its properties: the sandbox's checks (monotonic when
  training needs it, as always) are all that stand between it and the trainer, and a repair shows the
  shapes it was called with. Meant for strong hosted models.

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
from qllm.agents.messages import (
    coder_messages,
    contract_prompt,
    example_row,
    improve_trial,
    repair_messages,
)
from qllm.agents.spec import (
    SPEC_TEMPLATE_ID,
    CreditSpec,
    Quantity,
    SpecError,
    compile_spec,
    per_agent_quantities,
    quantity_table,
    spec_file,
    spec_model,
)
from qllm.agents.state import Attempt, Candidate
from qllm.agents.template import (
    FUNCTION_TEMPLATE_ID,
    TEMPLATE_ID,
    WRITTEN_FUNCTION,
    NamedState,
    assemble,
    column_slices,
    keep_definitions,
    written_function,
)
from qllm.agents.trial import TrialSummary
from qllm.llm.providers import ModelSpec
from qllm.prompts import PromptLibrary
from qllm.sandbox import ValidationInputs
from qllm.sandbox.restricted import FUNCTION_NAME

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f]")


class Mode(StrEnum):
    """What the coder writes (``GenerationSettings.mode``)."""

    AUTO = "auto"
    """``spec`` for the built-in local model, ``code`` for every other provider."""
    CODE = "code"
    SPEC = "spec"
    FUNCTION = "function"


class WritingMode(Protocol):
    """How the coder's prompts are built and how its replies become a TFCAF."""

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

    def to_source(
        self, reply: str, named: NamedState, docstring: str, credit_floor: float
    ) -> tuple[str, str]:
        """The code the coder wrote in ``reply`` (as shown back to it) and the complete TFCAF file made of
        it; :class:`ExtractionError`, :class:`SpecError` or :class:`TemplateError` when there is none."""
        ...


def _assembled(
    code: str, named: NamedState, docstring: str, template_id: str, credit_floor: float
) -> tuple[str, str]:
    """``code`` defining ``agent_weight``, and the TFCAF the template assembles around it."""
    written = keep_definitions(code)
    return code, assemble(
        named, written, docstring=docstring, template_id=template_id, credit_floor=credit_floor
    )


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

    def to_source(
        self, reply: str, named: NamedState, docstring: str, credit_floor: float
    ) -> tuple[str, str]:
        code = extract_code(reply, must_define=WRITTEN_FUNCTION)
        return _assembled(code, named, docstring, self.template_id, credit_floor)


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

    def to_source(
        self, reply: str, named: NamedState, docstring: str, credit_floor: float
    ) -> tuple[str, str]:
        # A grammar-made string may hold a raw newline: strict JSON refuses it, as whitespace it is harmless.
        spec = extract_json(CONTROL_CHARACTERS.sub(" ", reply), self.reply_schema)
        # The file carries the spec in its header too: a trainer computes its weights from the spec.
        code = compile_spec(spec, list(self.quantities))
        return code, spec_file(named, spec, docstring=docstring, credit_floor=credit_floor)


@dataclass(frozen=True)
class FunctionMode:
    """The coder writes the whole ``credit_assignment(agents_q, state)`` over batched tensors."""

    n_agents: int
    state_dim: int
    batch: int
    """States in the validation batch: the shapes a repair prompt says the function was called with."""
    name: str = "function"
    template_id: str = FUNCTION_TEMPLATE_ID
    reply_schema: type[BaseModel] | None = None

    def contract(self, prompts: PromptLibrary, named: NamedState, inputs: ValidationInputs) -> str:
        example = [round(v, 3) for v in example_row(inputs)]
        return prompts.render(
            "function_contract",
            n_agents=self.n_agents,
            state_dim=self.state_dim,
            slices=column_slices(named.schema),
            example=example,
        )

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
        return coder_messages(
            prompts, task, contract, parent, tips, parent_trial=parent_trial,
            system="function_system", improve="function_improve",
        )  # fmt: skip

    def repair(self, prompts: PromptLibrary, task: str, contract: str, failed: Attempt) -> Messages:
        human = prompts.render(
            "function_repair",
            task=task,
            contract=contract,
            code=failed.code or "# (no code found)",
            error=failed.result.feedback(),
            batch=self.batch,
            n_agents=self.n_agents,
            state_dim=self.state_dim,
        )
        return [("system", prompts.render("function_system")), ("human", human)]

    def to_source(
        self, reply: str, named: NamedState, docstring: str, credit_floor: float
    ) -> tuple[str, str]:
        code = extract_code(reply, must_define=FUNCTION_NAME)
        return code, written_function(named, code, docstring)


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


def writing_mode(mode: Mode, named: NamedState, inputs: ValidationInputs) -> WritingMode:
    """The mode object for a resolved mode (``code``, ``spec`` or ``function``), for candidates validated on
    ``inputs``."""
    if mode == Mode.CODE:
        return CodeMode()
    if mode == Mode.FUNCTION:
        return FunctionMode(named.info.n_agents, named.info.state_dim, batch=inputs.states.shape[0])
    quantities = tuple(per_agent_quantities(named))
    if not quantities:
        raise SpecError(
            f"task {named.info.task} has no per-agent quantities in its state schema: use mode code"
        )
    return SpecMode(quantities)


__all__ = [
    "CodeMode",
    "FunctionMode",
    "Mode",
    "SpecError",
    "SpecMode",
    "WritingMode",
    "resolve_mode",
    "writing_mode",
]
