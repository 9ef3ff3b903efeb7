"""The graph's typed state: what is checkpointed after every step, and what the trace is made of.

Two states: :class:`GenerationState` for the outer loop (rounds, the evaluator's decisions, the best
function so far) and :class:`CandidateState` for one candidate's draft-check-repair loop, which runs once
per ``Send`` in each round. Candidates and decisions are pydantic models so that they round-trip
through the SQLite checkpointer and the trace as plain data (the serializer allow-lists them).
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from qllm.agents.trial import (
    REFERENCE,
    CurvePoint,
    Difference,
    Trial,
    TrialStatus,
    TrialSummary,
    function_identity,
    summarise,
)
from qllm.sandbox.result import AgentWeightStats, ErrorKind, Timings, ValidationResult, WeightReport


class Attempt(BaseModel):
    """One coder reply for a candidate and its sandbox verdict (the first draft, or a repair)."""

    number: int
    """0 for the first draft, 1.. for repairs."""
    reply: str
    """The coder's raw reply."""
    code: str
    """The code extracted from the reply ("" if none could be)."""
    source: str
    """The complete TFCAF assembled from the code ("" if it could not be)."""
    result: ValidationResult


class Candidate(BaseModel):
    """One of the K functions of a round, with every attempt it took."""

    id: str
    """``r{round}-c{slot}``."""
    round: int
    slot: int
    attempts: list[Attempt]

    @property
    def final(self) -> Attempt:
        return self.attempts[-1]

    @property
    def ok(self) -> bool:
        return self.final.result.ok

    @property
    def subject(self) -> str:
        """What trials know this candidate by (identical functions share their trials)."""
        return function_identity(self.final.source)


class Critique(BaseModel):
    candidate: int = Field(description="the candidate's number as shown in the prompt")
    critique: str = Field(description="one sentence on the candidate's weights")


class Evaluation(BaseModel):
    """The evaluator's reply: which candidate is best, why, and how to improve it."""

    choice: int = Field(description="number of the best candidate, as shown in the prompt")
    critiques: list[Critique] = Field(default_factory=list)
    tips: str = Field(default="", description="concrete advice for improving the chosen function")
    satisfied: bool = Field(default=False, description="true if the chosen function needs no further work")


DecisionSource = Literal["evaluator", "consensus", "trial", "fallback", "no-valid-candidate", "person"]
"""Who decided: ``person`` is a reviewer's answer (:mod:`qllm.agents.review`), after the chooser's."""


class Decision(BaseModel):
    """What was chosen at the end of a round, and on what grounds."""

    round: int
    chosen: str | None
    """Candidate id of the best function after this round (may be an earlier round's)."""
    contenders: list[str]
    """Candidate ids shown to the evaluator, in the order numbered there (1-based)."""
    source: DecisionSource
    evaluation: Evaluation | None = None
    note: str = ""
    """Why the evaluator was not used or not followed, when it was not; how consensus was reached; or,
    under trial selection, each contender's trial fitness and how a tie was broken."""
    satisfied: bool = False
    """No further round is needed: the evaluator said so, consensus was unanimous, or (trial selection)
    the chosen function beat equal weights beyond the noise."""
    beats_reference: bool | None = None
    """Whether the chosen function's trials beat equal weights (VDN) beyond the noise; ``None`` without
    trials."""


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(kw_only=True)
class GenerationState:
    """The outer loop: L rounds of K candidates and one evaluation each."""

    round: int = 1
    """The round being generated (1-based); ``rounds + 1`` once the last evaluation is done."""
    candidates: Annotated[list[Candidate], operator.add] = field(default_factory=list)
    """Every candidate of every round, valid or not, appended by the candidate branches."""
    decisions: Annotated[list[Decision], operator.add] = field(default_factory=list)
    """One per finished round."""
    best: Candidate | None = None
    """The best valid candidate so far: what the next round improves and what the artifact will be."""
    tips: str = ""
    """The evaluator's advice for the next round."""
    trials: Annotated[list[Trial], operator.add] = field(default_factory=list)
    """Every finished trial training (the reference's included), appended by the trial node."""
    stopped: bool = False
    """A person reviewing the run stopped it (:mod:`qllm.agents.review`): it finishes with the best so far."""
    status: RunStatus = RunStatus.RUNNING
    reason: str = ""
    """Why the run ended as it did."""

    def of_round(self, round_: int) -> list[Candidate]:
        return [c for c in self.candidates if c.round == round_]

    def by_id(self, candidate_id: str) -> Candidate:
        return next(c for c in self.candidates if c.id == candidate_id)

    def trial_summary(self, candidate: Candidate) -> TrialSummary | None:
        """How ``candidate`` trained on trial against equal weights (``None`` if it was not trained)."""
        if not any(t.subject == candidate.subject for t in self.trials):
            return None
        return summarise(self.trials, candidate.subject)

    def reference_summary(self) -> TrialSummary | None:
        """How equal weights (VDN) trained on trial (``None`` without trials)."""
        return summarise(self.trials, REFERENCE) if self.trials else None

    def failure_summary(self) -> str:
        """The most common reason candidates failed, for the failure status."""
        kinds = Counter(c.final.result.error_kind for c in self.candidates if not c.ok)
        if not kinds:
            return "no candidate was generated"
        kind, count = kinds.most_common(1)[0]
        example = next(c for c in self.candidates if c.final.result.error_kind == kind).final.result.message
        attempts = sum(len(c.attempts) for c in self.candidates)
        return (
            f"no candidate passed validation ({len(self.candidates)} candidates, {attempts} attempts); "
            f"most common error: {kind} ({count}x), e.g. {example}"
        )


@dataclass(frozen=True)
class CandidateTask:
    """What one candidate branch is asked to do (the payload of its ``Send``)."""

    round: int
    slot: int
    parent: Candidate | None = None
    """The best function so far, to improve on (``None`` in round 1)."""
    tips: str = ""
    parent_trial: TrialSummary | None = None
    """How ``parent`` trained on trial against equal weights, when the run trains trials."""

    @property
    def candidate_id(self) -> str:
        return f"r{self.round}-c{self.slot}"


@dataclass(kw_only=True)
class CandidateState:
    """One candidate's draft -> check -> repair loop."""

    task: CandidateTask
    reply: str = ""
    """The latest coder reply, not yet checked."""
    attempts: Annotated[list[Attempt], operator.add] = field(default_factory=list)
    candidates: Annotated[list[Candidate], operator.add] = field(default_factory=list)
    """The finished candidate (one element), handed back to the outer loop."""


@dataclass(kw_only=True)
class CandidateOutput:
    """What a candidate branch hands back to :class:`GenerationState`."""

    candidates: Annotated[list[Candidate], operator.add] = field(default_factory=list)


CHECKPOINTED_TYPES = (
    Attempt, Candidate, Critique, Evaluation, Decision, RunStatus, CandidateTask,
    ValidationResult, ErrorKind, WeightReport, AgentWeightStats, Timings, Trial, TrialStatus, CurvePoint,
    TrialSummary, Difference,
)  # fmt: skip
"""Types the checkpoint serializer may rebuild (it refuses anything else)."""
