"""Scorers: small named functions that turn one generation run into one number each.

A scorer reads a :class:`RunRecord` (the run folder's trace, read back) and, for the semantic ones, the
weights candidate functions assign on the task's :mod:`semantic probes <qllm.envs.probes>`, which
:class:`ProbeJudge` measures through the sandbox. ``None`` means "not applicable to this run" (e.g. no
semantic score without an artifact) and is left out of averages rather than counted as zero.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from qllm.agents.artifact import ARTIFACT_FILE, CANDIDATES_DIR
from qllm.agents.trace import (
    TRACE_FILE,
    DecisionEvent,
    FinishedEvent,
    LLMCallEvent,
    TrialEvent,
    ValidationEvent,
    read_events,
)
from qllm.agents.trial import REFERENCE, function_identity, paired_difference
from qllm.envs.probes import Probe
from qllm.sandbox import CheckOptions, Sandbox, ValidationInputs

PRICES_PER_MILLION: dict[str, tuple[float, float]] = {
    # (input, output) USD per million tokens, for the cost scorer; providers not listed cost 0.
    "openai:gpt-4o-mini": (0.15, 0.60),
    "openai:gpt-4o": (2.50, 10.00),
    "deepseek:deepseek-chat": (0.27, 1.10),
    "deepseek:deepseek-reasoner": (0.55, 2.19),
}


@dataclass(frozen=True)
class CandidateRecord:
    id: str
    attempts_ok: list[bool]
    error_kinds: list[str]

    @property
    def ok(self) -> bool:
        return bool(self.attempts_ok) and self.attempts_ok[-1]

    def source_path(self, run_dir: Path) -> Path:
        return run_dir / CANDIDATES_DIR / f"{self.id}-a{len(self.attempts_ok) - 1}.py"


@dataclass(frozen=True)
class RunRecord:
    """A generation run folder, read back for scoring."""

    run_dir: Path
    status: str
    candidates: list[CandidateRecord]
    decisions: list[DecisionEvent]
    calls: list[LLMCallEvent]
    trials: list[TrialEvent]
    seconds: float
    """From the run's first trace event to its last (a resumed run counts its pause too)."""

    @classmethod
    def load(cls, run_dir: Path) -> RunRecord:
        events = list(read_events(run_dir / TRACE_FILE))
        attempts: dict[str, list[ValidationEvent]] = {}
        for e in events:
            if isinstance(e, ValidationEvent):
                attempts.setdefault(e.candidate, []).append(e)
        candidates = [
            CandidateRecord(
                cid, [a.ok for a in tries], [str(a.result.error_kind or "unknown") for a in tries if not a.ok]
            )
            for cid, tries in attempts.items()
        ]
        finished = [e for e in events if isinstance(e, FinishedEvent)]
        return cls(
            run_dir=run_dir,
            status=finished[-1].status if finished else "unfinished",
            candidates=candidates,
            decisions=[e for e in events if isinstance(e, DecisionEvent)],
            calls=[e for e in events if isinstance(e, LLMCallEvent)],
            trials=[e for e in events if isinstance(e, TrialEvent)],
            seconds=events[-1].time - events[0].time if events else 0.0,
        )

    @property
    def artifact(self) -> Path | None:
        path = self.run_dir / ARTIFACT_FILE
        return path if self.status == "succeeded" and path.is_file() else None

    def candidate(self, candidate_id: str) -> CandidateRecord:
        return next(c for c in self.candidates if c.id == candidate_id)


class ProbeJudge:
    """Measures the weights a function file assigns on the task's probe states, through the sandbox.

    The probes go first in the validation batch, followed by real recorded states, so the function is
    checked as usual and the weights of the probe rows come back one by one.
    """

    def __init__(self, sandbox: Sandbox, probes: Sequence[Probe], recorded: ValidationInputs) -> None:
        self.sandbox, self.probes = sandbox, list(probes)
        crafted = [torch.from_numpy(np.stack([p.state for p in self.probes]))] if self.probes else []
        states = torch.cat([*crafted, recorded.states]).float()
        generator = torch.Generator().manual_seed(0)
        agents_q = torch.rand(states.shape[0], recorded.agents_q.shape[1], generator=generator) * 2 - 1
        self.inputs = ValidationInputs(agents_q=agents_q, states=states)
        self._cache: dict[Path, float | None] = {}

    def score(self, path: Path) -> float | None:
        """Share of probes where the favoured agent gets strictly more weight; None without probes or
        when the file does not validate."""
        if not self.probes:
            return None
        if path not in self._cache:
            result = self.sandbox.validate(
                path.read_text(), self.inputs, CheckOptions(example_states=len(self.probes))
            )
            if not result.ok or result.weights is None:
                self._cache[path] = None
            else:
                w = result.weights.example_weights
                passed = sum(w[k][p.favoured] > w[k][p.other] + 1e-6 for k, p in enumerate(self.probes))
                self._cache[path] = passed / len(self.probes)
        return self._cache[path]


Direction = Literal["higher", "lower", "neutral"]
ScoreFn = Callable[[RunRecord, ProbeJudge], float | None]


@dataclass(frozen=True)
class Scorer:
    name: str
    direction: Direction
    """Which way is better (for regression checks); ``neutral`` is reported, never gated."""
    description: str
    fn: ScoreFn = field(repr=False)
    share: bool = False
    """A share in [0, 1] (compared in absolute terms); otherwise compared relative to the baseline."""


SCORERS: dict[str, Scorer] = {}


def scorer(
    name: str, direction: Direction, description: str, share: bool = False
) -> Callable[[ScoreFn], ScoreFn]:
    def register(fn: ScoreFn) -> ScoreFn:
        SCORERS[name] = Scorer(name, direction, description, fn, share)
        return fn

    return register


@scorer("final_validity", "higher", "1 if the run ended with a validated artifact, else 0", share=True)
def final_validity(run: RunRecord, judge: ProbeJudge) -> float:
    return 1.0 if run.artifact is not None else 0.0


@scorer(
    "first_try_validity", "higher", "share of candidates whose first draft passed the sandbox", share=True
)
def first_try_validity(run: RunRecord, judge: ProbeJudge) -> float | None:
    if not run.candidates:
        return None
    return sum(c.attempts_ok[0] for c in run.candidates) / len(run.candidates)


@scorer("candidate_validity", "higher", "share of candidates valid after repairs", share=True)
def candidate_validity(run: RunRecord, judge: ProbeJudge) -> float | None:
    return sum(c.ok for c in run.candidates) / len(run.candidates) if run.candidates else None


@scorer("repairs_per_valid", "lower", "repair attempts spent per candidate that ended valid")
def repairs_per_valid(run: RunRecord, judge: ProbeJudge) -> float | None:
    valid = [c for c in run.candidates if c.ok]
    return sum(len(c.attempts_ok) - 1 for c in valid) / len(valid) if valid else None


@scorer("rounds_used", "neutral", "rounds run before finishing (early stop or L)")
def rounds_used(run: RunRecord, judge: ProbeJudge) -> float:
    # A reviewed round has two decisions, the chooser's and the person's: count rounds, not decisions.
    return float(len({d.round for d in run.decisions}))


@scorer(
    "semantic_score",
    "higher",
    "share of the task's semantic probes the final function gets right",
    share=True,
)
def semantic_score(run: RunRecord, judge: ProbeJudge) -> float | None:
    return judge.score(run.artifact) if run.artifact is not None else None


SEMANTIC_PASS = 0.5
"""A function passes the semantic checks when it is right on more than this share of the probes: a fixed
preference for one agent is right on about half of them, whatever the state."""


@scorer(
    "semantic_pass",
    "higher",
    "1 if the final function is right on more than half of the semantic probes, else 0",
    share=True,
)
def semantic_pass(run: RunRecord, judge: ProbeJudge) -> float | None:
    score = semantic_score(run, judge)
    return None if score is None else float(score > SEMANTIC_PASS)


@scorer(
    "evaluator_consistency",
    "higher",
    "share of choices (evaluator or consensus) that have the best semantic score among the contenders",
    share=True,
)
def evaluator_consistency(run: RunRecord, judge: ProbeJudge) -> float | None:
    verdicts = []
    for decision in run.decisions:
        if decision.source not in ("evaluator", "consensus") or len(decision.contenders) < 2:
            continue
        scores = {
            cid: judge.score(run.candidate(cid).source_path(run.run_dir)) for cid in decision.contenders
        }
        known = {cid: s for cid, s in scores.items() if s is not None}
        if len(known) >= 2 and decision.chosen in known:
            verdicts.append(known[decision.chosen] >= max(known.values()))
    return sum(verdicts) / len(verdicts) if verdicts else None


@scorer("tokens", "lower", "LLM tokens read and written in the run")
def tokens(run: RunRecord, judge: ProbeJudge) -> float:
    return float(sum(c.usage.input_tokens + c.usage.output_tokens for c in run.calls))


@scorer("run_minutes", "lower", "minutes from the run's start to its end")
def run_minutes(run: RunRecord, judge: ProbeJudge) -> float:
    return run.seconds / 60


@scorer("llm_seconds", "lower", "seconds spent waiting for LLM replies")
def llm_seconds(run: RunRecord, judge: ProbeJudge) -> float:
    return float(sum(c.latency_s for c in run.calls))


@scorer(
    "downstream_return",
    "higher",
    "the chosen function's mean greedy return over its trial trainings minus equal weights' (VDN), paired "
    "by seed (none for a run that trained no trials)",
)
def downstream_return(run: RunRecord, judge: ProbeJudge) -> float | None:
    artifact = run.artifact
    if artifact is None or not run.trials:
        return None
    subject = function_identity(artifact.read_text())
    trials = [t.trial() for t in run.trials]
    difference = paired_difference(
        [t for t in trials if t.subject == subject], [t for t in trials if t.subject == REFERENCE]
    )
    return None if difference is None else difference.mean


@scorer("cost_usd", "lower", "provider cost of the run's LLM calls at list prices (local: 0)")
def cost_usd(run: RunRecord, judge: ProbeJudge) -> float:
    total = 0.0
    for call in run.calls:
        price_in, price_out = PRICES_PER_MILLION.get(call.model.split("@")[0], (0.0, 0.0))
        total += (call.usage.input_tokens * price_in + call.usage.output_tokens * price_out) / 1e6
    return total


def error_kinds(run: RunRecord) -> dict[str, int]:
    """How often each sandbox error kind was hit, over every failed attempt of the run."""
    return dict(Counter(kind for c in run.candidates for kind in c.error_kinds))


def score_run(run: RunRecord, judge: ProbeJudge) -> dict[str, float | None]:
    return {name: s.fn(run, judge) for name, s in SCORERS.items()}
