"""Choosing among valid candidates by what they do, not by an LLM's opinion of their code: consensus, and
the ranking by trial training (:func:`rank_by_trial`).

A small evaluator model is a weak judge (measured: its choices agreed with the semantic probes about
two times in three, and it is often "satisfied" with anything). Sampling several candidates and keeping
the one the others agree with most is a sturdier use of a weak model (self-consistency): independent
mistakes rarely agree, while the sensible reading of a task recurs. Agreement is measured on behaviour,
the weights each candidate gives on the same recorded states in the sandbox, so two differently written
functions that credit the same agents agree.

``agreement(a, b)`` is the mean over states of the cosine between the centred weight vectors
``w - 1`` (weights sum to ``n_agents``, so 1 is the equal share), skipping states where both give
equal shares and counting 0 where only one does. A candidate whose weights never leave the equal
share agrees with nothing: consensus never prefers a VDN in disguise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from qllm.agents.state import Candidate
from qllm.agents.trial import Trial, paired_difference, summarise
from qllm.llm.providers import ModelSpec
from qllm.sandbox import WeightReport

EQUAL = 1e-6
"""Distance from the equal share below which a state's weights count as equal."""
UNANIMOUS = 0.9
"""Agreement with every other contender above which another round is not expected to change much."""


class Selection(StrEnum):
    """How a round's best candidate is chosen (``GenerationSettings.selection``)."""

    AUTO = "auto"
    """``consensus`` when the evaluator is the built-in local model, ``evaluator`` otherwise."""
    EVALUATOR = "evaluator"
    """The evaluator LLM reads the candidates, their weights (and trial results) and gives tips."""
    CONSENSUS = "consensus"
    """The candidate whose measured weights the others agree with most (no LLM call)."""
    TRIAL = "trial"
    """The best trial fitness; the judge (``auto``'s choice) breaks ties within the noise."""


def agreement(a: WeightReport, b: WeightReport) -> float:
    """Mean cosine between the two functions' centred weights over the states both were measured on."""
    total, count = 0.0, 0
    for wa, wb in zip(a.example_weights, b.example_weights, strict=False):
        ca, cb = [w - 1.0 for w in wa], [w - 1.0 for w in wb]
        na, nb = math.sqrt(sum(x * x for x in ca)), math.sqrt(sum(x * x for x in cb))
        if na < EQUAL and nb < EQUAL:
            continue  # both give equal shares here: no evidence either way
        count += 1
        if na >= EQUAL and nb >= EQUAL:
            total += sum(x * y for x, y in zip(ca, cb, strict=True)) / (na * nb)
    return total / count if count else 0.0


@dataclass(frozen=True)
class Consensus:
    chosen: Candidate
    support: dict[str, float]
    """Candidate id -> its mean agreement with the other contenders."""
    unanimous: bool
    """Whether the chosen candidate agrees strongly with every other contender."""

    def note(self) -> str:
        ranked = ", ".join(f"{cid} {s:.2f}" for cid, s in sorted(self.support.items(), key=lambda kv: -kv[1]))
        return f"mean agreement of each contender's weights with the others': {ranked}"


def judge_for(evaluator: ModelSpec) -> Selection:
    """Who judges candidates by what they are: ``consensus`` when the evaluator is the built-in local model
    (a weak judge: measured in ``qllm/evals/reference/local-levers.md``), the ``evaluator`` otherwise."""
    return Selection.CONSENSUS if evaluator.provider == "local" else Selection.EVALUATOR


def resolve_selection(selection: Selection, evaluator: ModelSpec) -> Selection:
    """``auto`` resolved for this evaluator (:func:`judge_for`); every other selection unchanged."""
    return judge_for(evaluator) if selection == Selection.AUTO else selection


def consensus(contenders: Sequence[Candidate]) -> Consensus:
    """The contender whose measured weights agree most with the others' (ties: the most state-dependent)."""
    reports = {c.id: c.final.result.weights for c in contenders}
    support: dict[str, float] = {}
    closest: dict[str, float] = {}
    for c in contenders:
        mine = reports[c.id]
        others = [agreement(mine, r) for cid, r in reports.items() if cid != c.id and mine and r]
        support[c.id] = sum(others) / len(others) if others else 0.0
        closest[c.id] = min(others, default=0.0)

    def rank(c: Candidate) -> tuple[float, float]:
        report = reports[c.id]
        return support[c.id], report.weight_state_variation if report else 0.0

    chosen = max(contenders, key=rank)
    unanimous = len(contenders) > 1 and closest[chosen.id] >= UNANIMOUS
    return Consensus(chosen, support, unanimous)


@dataclass(frozen=True)
class TrialRanking:
    """The contenders by trial fitness, and those within the noise of the best (the tie)."""

    best: Candidate | None
    """The fittest contender whose trials finished (``None`` when none did)."""
    tied: list[Candidate]
    """Contenders within the noise of ``best`` (``best`` first); one means a clear winner."""
    note: str


def rank_by_trial(contenders: Sequence[Candidate], trials: Sequence[Trial]) -> TrialRanking:
    """The fittest contender, and every contender whose paired difference from it is within the noise
    (:func:`qllm.agents.trial.paired_difference`). Contenders with no finished trial never win."""
    fitness = {c.id: summarise(trials, c.subject).fitness for c in contenders}
    finished = sorted((c for c in contenders if fitness[c.id] is not None), key=lambda c: -fitness[c.id])
    if not finished:
        return TrialRanking(None, [], "no contender's trial training finished")
    best = finished[0]
    mine = [t for t in trials if t.subject == best.subject]
    tied = [best]
    for other in finished[1:]:
        gap = paired_difference(mine, [t for t in trials if t.subject == other.subject])
        # No seed both finished: nothing says the other is worse, so it stays in the tie.
        if other.subject == best.subject or gap is None or not gap.beyond_noise:
            tied.append(other)
    ranked = ", ".join(f"{c.id} {fitness[c.id]:.3g}" for c in finished)
    return TrialRanking(best, tied, f"mean greedy return over the trial: {ranked}")
