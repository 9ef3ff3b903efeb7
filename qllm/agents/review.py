"""A person in the loop: after each round the run pauses, a person sees what the round chose and decides.

With ``review`` on, the graph's ``review`` node calls LangGraph's ``interrupt()`` with a
:class:`ReviewRequest` (the round's contenders, their measured weights and trial results, the chooser's
pick and tips) and waits. The run resumes with ``Command(resume=answer)``, where ``answer`` is a
:class:`ReviewAnswer`: accept the pick, pick another contender, or stop the run with the best so far;
the tips for the next round may be edited with either of the first two. The checkpoint holds a pending
review, so a run killed while it waits asks again when resumed. The answer becomes a
:class:`~qllm.agents.state.Decision` whose source is ``person`` in the state and the trace.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field, ValidationError

from qllm.agents.state import Candidate, Decision, DecisionSource, GenerationState


class ReviewAction(StrEnum):
    ACCEPT = "accept"
    """Keep the chooser's pick (and its tips, unless the answer gives new ones)."""
    PICK = "pick"
    """Make another of the round's contenders the best so far."""
    STOP = "stop"
    """End the run now, with the best so far as the credit function."""


class ReviewedCandidate(BaseModel):
    """One contender as the person sees it."""

    id: str
    code: str
    """What the coder wrote (the function or the spec's code), as validated."""
    mean_weights: list[float]
    """Each agent's mean weight over the validation states."""
    weight_state_variation: float
    """How much the weights move with the state (0: equal weights whatever the state, VDN-like)."""
    trial: str = ""
    """How it trained on trial against equal weights, when the run trains trials."""


class ReviewRequest(BaseModel):
    """What the run shows a person after a round, and waits on."""

    round: int
    contenders: list[ReviewedCandidate]
    chosen: str
    """The chooser's pick."""
    chooser: DecisionSource
    """Who picked it: the evaluator, consensus, trial or a fallback."""
    tips: str
    """The tips the next round's coder would get."""
    note: str = ""
    """The chooser's note: how consensus agreed, each contender's trial fitness, why a fallback."""
    problem: str = ""
    """Why the previous answer to this request was refused ("" the first time it is asked)."""

    def candidate_ids(self) -> list[str]:
        return [c.id for c in self.contenders]


class ReviewAnswer(BaseModel):
    """A person's decision on a :class:`ReviewRequest`."""

    action: ReviewAction
    candidate: str | None = Field(default=None, description="the contender to make the best (pick only)")
    tips: str | None = Field(default=None, description="new tips for the next round (None: keep them)")

    def problem_with(self, request: ReviewRequest) -> str:
        """Why this answer cannot be applied to ``request`` ("" when it can)."""
        if self.action == ReviewAction.PICK and self.candidate not in request.candidate_ids():
            return f"pick needs one of {', '.join(request.candidate_ids())}, got {self.candidate!r}"
        return ""


def review_request(state: GenerationState, contenders: list[Candidate], problem: str = "") -> ReviewRequest:
    """What the person is shown about the round just decided (its last decision)."""
    decision = state.decisions[-1]
    return ReviewRequest(
        round=decision.round,
        contenders=[_reviewed(state, c) for c in contenders],
        chosen=decision.chosen or "",
        chooser=decision.source,
        tips=state.tips,
        note=decision.note,
        problem=problem,
    )


def _reviewed(state: GenerationState, candidate: Candidate) -> ReviewedCandidate:
    report = candidate.final.result.weights
    summary = state.trial_summary(candidate)
    trial = ""
    if summary is not None and summary.vs_reference is not None:
        trial = f"{summary.vs_reference.mean:+.3g} ± {summary.vs_reference.noise:.2g} against equal weights"
    elif summary is not None:
        trial = f"did not finish: {summary.problem[:160]}"
    return ReviewedCandidate(
        id=candidate.id,
        code=candidate.final.code,
        mean_weights=[a.mean for a in report.agents] if report is not None else [],
        weight_state_variation=report.weight_state_variation if report is not None else 0.0,
        trial=trial,
    )


def read_answer(value: object, request: ReviewRequest) -> tuple[ReviewAnswer | None, str]:
    """The answer a run was resumed with, or ``None`` and why it cannot be used (it comes from a person
    at a terminal, or from any client of the LangGraph API)."""
    try:
        answer = ReviewAnswer.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "answer"
        return None, f"not an answer ({where}: {first['msg']}): give action accept, pick or stop"
    problem = answer.problem_with(request)
    return (None, problem) if problem else (answer, "")


def person_decision(request: ReviewRequest, answer: ReviewAnswer, chooser: Decision) -> Decision:
    """The person's answer as the round's final decision (the chooser's stays in the state before it)."""
    chosen = answer.candidate if answer.action == ReviewAction.PICK else request.chosen
    note = {
        ReviewAction.ACCEPT: f"a person accepted the {request.chooser}'s pick",
        ReviewAction.PICK: f"a person picked {chosen} over the {request.chooser}'s {request.chosen}",
        ReviewAction.STOP: "a person stopped the run with the best so far",
    }[answer.action]
    if answer.tips is not None and answer.action != ReviewAction.STOP:
        note += "; the tips were edited"
    return Decision(
        round=request.round,
        chosen=chosen,
        contenders=request.candidate_ids(),
        source="person",
        note=note,
        # Accepting keeps the chooser's verdict on whether more rounds are needed; another pick has none.
        # (Whether the choice beat equal weights on trial is the graph's to add, as for every decision.)
        satisfied=chooser.satisfied if answer.action == ReviewAction.ACCEPT else False,
    )
