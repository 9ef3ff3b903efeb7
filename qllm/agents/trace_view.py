"""A generation run read back for people: rounds, candidates, LLM calls and decisions, in a terminal or HTML.

::

    summary = load_run(Path("runs/generate/matrix-climbing__tfcaf__0__20260101-120000"))
    print_trace(summary.run_dir, Console(), verbose=True)   # tables per round; prompts and replies too
    export_json(summary.run_dir)                            # -> <run_dir>/trace_summary.json

The HTML page is :mod:`qllm.agents.trace_html`.

The trace (:mod:`qllm.agents.trace`) is a flat log in the order things happened, with the candidates of a
round interleaved when they run concurrently and retried calls next to the ones that failed.
:func:`load_run` regroups it by round: each candidate with its attempts (the code, the sandbox verdict
and the coder calls behind it) and, when the run trained trials, how it trained against equal weights;
the evaluator's calls and the decision; plus totals for the whole run.

Everything a model wrote is untrusted text. The terminal view passes it to rich as plain
:class:`~rich.text.Text`, never as markup; the HTML page escapes it, carries no script, and declares a
content security policy that blocks scripts and every network request, so a page that somehow let a
tag through still could not run or fetch anything. The page is self-contained (inline CSS, the weights
plot as a PNG data URI) so it can be mailed, attached to a report or opened years later.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from qllm.agents.artifact import ARTIFACT_FILE, METADATA_FILE
from qllm.agents.run import SETTINGS_FILE, RunFolderError
from qllm.agents.state import Decision
from qllm.agents.trace import (
    TRACE_FILE,
    CallPlace,
    DecisionEvent,
    FinishedEvent,
    LLMCallEvent,
    LLMErrorEvent,
    RunStarted,
    TraceEvent,
    TraceFormatError,
    TrialEvent,
    ValidationEvent,
    read_events,
)
from qllm.agents.trial import REFERENCE, Trial, TrialSummary, summarise
from qllm.sandbox.result import ValidationResult, WeightReport

SUMMARY_FILE = "trace_summary.json"


class TraceNotFoundError(RunFolderError):
    """A path with no ``trace.jsonl``: not a generation run folder, or one that never started."""


# --- the structured summary -------------------------------------------------------------------------


class LLMCall(BaseModel):
    """One coder or evaluator call: what was sent, what came back, and what it cost."""

    role: str
    model: str
    label: str
    """The call's name: ``r1-c0-a0`` (round, candidate slot, attempt) or ``r1-eval0``."""
    place: CallPlace | None = None
    messages: list[tuple[str, str]] = Field(default_factory=list)
    response: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    error: str = ""
    """Why the provider call failed (then there is no response); empty for a successful call."""
    transient: bool = False
    """A failure the graph retried (timeout, rate limit, server error)."""


class AttemptView(BaseModel):
    """One draft or repair of a candidate: the coder calls behind it and the sandbox verdict."""

    number: int
    """0 for the first draft, 1.. for repairs."""
    code: str = ""
    """The code extracted from the reply ("" if none could be)."""
    result: ValidationResult | None = None
    """``None`` when the run stopped before this attempt was checked."""
    calls: list[LLMCall] = Field(default_factory=list)
    """Failed tries first (if any), then the call whose reply was checked."""
    subject: str = ""
    """The assembled function's identity (what its trials are recorded under); "" if none was assembled."""

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.ok

    @property
    def verdict(self) -> str:
        if self.result is None:
            return "not checked"
        if self.result.ok:
            return "passed"
        return f"failed: {self.result.error_kind or 'unknown'}"


class CandidateView(BaseModel):
    """One of a round's candidates with every attempt it took."""

    id: str
    round: int
    slot: int
    attempts: list[AttemptView]
    trial: TrialSummary | None = None
    """How the candidate trained on trial against equal weights, when the run trained trials."""

    @property
    def final(self) -> AttemptView:
        return self.attempts[-1]

    @property
    def ok(self) -> bool:
        return self.final.ok

    @property
    def calls(self) -> list[LLMCall]:
        return [call for attempt in self.attempts for call in attempt.calls]


class RoundView(BaseModel):
    number: int
    candidates: list[CandidateView] = Field(default_factory=list)
    evaluator_calls: list[LLMCall] = Field(default_factory=list)
    decision: Decision | None = None
    """The chooser's; ``None`` when the run stopped before the round was evaluated."""
    review: Decision | None = None
    """A person's answer to the round's review (``qllm generate --review``), when there was one."""

    @property
    def final(self) -> Decision | None:
        """What the round settled on: the person's answer if they reviewed it, else the chooser's."""
        return self.review or self.decision


class Totals(BaseModel):
    llm_calls: int
    """Successful calls (``llm_call`` events); calls answered from the trace on resume are not repeated."""
    llm_errors: int
    """Failed calls (``llm_error`` events)."""
    input_tokens: int
    output_tokens: int
    llm_latency_s: float
    """Time spent waiting on models, failed calls included."""
    wall_s: float
    """From the first event of the trace to the last (pauses between a stop and a resume included)."""


class RunSummary(BaseModel):
    """A run folder regrouped for reading; :func:`load_run` builds it."""

    run_dir: Path
    task: str
    coder: str
    evaluator: str
    prompt_version: str
    settings: dict[str, Any]
    started: float | None
    """Unix time of the first event."""
    resumes: int
    status: str
    """``succeeded``, ``failed``, or ``unfinished`` (running, or interrupted and never resumed)."""
    reason: str
    rounds: list[RoundView]
    other_calls: list[LLMCall] = Field(default_factory=list)
    """Calls whose label names no candidate or evaluation (kept so nothing in the trace is hidden)."""
    totals: Totals
    trials: list[Trial] = Field(default_factory=list)
    """Every finished trial training, in the order they ended."""
    reference: TrialSummary | None = None
    """How equal weights (VDN) trained on trial; ``None`` for a run without trials."""
    artifact: dict[str, Any] | None = None
    """``artifact.json`` of a succeeded run."""
    final_source: str = ""
    """``tfcaf.py`` of a succeeded run."""

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    def candidate(self, candidate_id: str | None) -> CandidateView | None:
        return next((c for r in self.rounds for c in r.candidates if c.id == candidate_id), None)

    @property
    def final_choice(self) -> str | None:
        """The candidate the run ended with: the artifact's, else the last decision's."""
        if self.artifact is not None:
            return self.artifact.get("candidate")
        decided = [r.final.chosen for r in self.rounds if r.final is not None]
        return decided[-1] if decided else None

    def best_before(self, round_number: int) -> CandidateView | None:
        """The best function going into a round: what its candidates were asked to improve."""
        earlier = [r.final for r in self.rounds if r.number < round_number and r.final is not None]
        return self.candidate(earlier[-1].chosen) if earlier else None


# --- loading ----------------------------------------------------------------------------------------


def load_run(run_dir: Path) -> RunSummary:
    """Read a run folder's trace (and artifact, if any) into a :class:`RunSummary`."""
    trace = run_dir / TRACE_FILE
    if not trace.is_file():
        raise TraceNotFoundError(f"{run_dir} is not a generation run folder (no {TRACE_FILE})")
    try:
        return _summary(run_dir, list(read_events(trace)))
    except RunFolderError:
        raise
    except TraceFormatError as exc:
        raise RunFolderError(str(exc)) from None
    except (KeyError, TypeError, ValueError) as exc:  # ValueError includes pydantic's ValidationError
        # A trace from another version of the graph, or edited by hand: say so in one line.
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise RunFolderError(f"{trace} has an event this version cannot read ({detail})") from None


def _summary(run_dir: Path, events: list[TraceEvent]) -> RunSummary:
    calls = [_call(e) for e in events if isinstance(e, LLMCallEvent | LLMErrorEvent)]
    settings = _settings(run_dir, events)
    artifact = _read_json(run_dir / METADATA_FILE)
    final = run_dir / ARTIFACT_FILE
    status, reason = _status(events)
    times = [e.time for e in events]
    trials = [e.trial() for e in events if isinstance(e, TrialEvent)]
    return RunSummary(
        run_dir=run_dir,
        task=str(settings.get("task") or (artifact or {}).get("task", "?")),
        coder=_model(calls, "coder", artifact, settings),
        evaluator=_model(calls, "evaluator", artifact, settings),
        prompt_version=next((e.prompt_version for e in events if isinstance(e, RunStarted)), "?"),
        settings=settings,
        started=min(times) if times else None,
        resumes=sum(isinstance(e, RunStarted) and e.event == "resumed" for e in events),
        status=status,
        reason=reason,
        rounds=_rounds(events, calls, trials),
        other_calls=[c for c in calls if c.place is None],
        totals=_totals(calls, times),
        trials=trials,
        reference=summarise(trials, REFERENCE) if trials else None,
        artifact=artifact,
        final_source=final.read_text() if final.is_file() else "",
    )


def _call(event: LLMCallEvent | LLMErrorEvent) -> LLMCall:
    answered = isinstance(event, LLMCallEvent)
    return LLMCall(
        role=event.role,
        model=event.model,
        label=event.label,
        place=event.place,
        messages=event.messages if answered else [],
        response=event.response if answered else "",
        input_tokens=event.usage.input_tokens if answered else 0,
        output_tokens=event.usage.output_tokens if answered else 0,
        latency_s=event.latency_s,
        error="" if answered else event.error,
        transient=False if answered else event.transient,
    )


def _attempts(events: Iterable[TraceEvent], calls: Sequence[LLMCall]) -> dict[str, list[AttemptView]]:
    """Coder calls and sandbox verdicts, joined by candidate and attempt number."""
    table: dict[str, dict[int, AttemptView]] = defaultdict(dict)
    for call in calls:
        if call.place is not None and call.place.candidate_id is not None:
            attempts = table[call.place.candidate_id]
            attempts.setdefault(call.place.attempt, AttemptView(number=call.place.attempt)).calls.append(call)
    for event in events:
        if not isinstance(event, ValidationEvent):
            continue
        attempt = table[event.candidate].setdefault(event.attempt, AttemptView(number=event.attempt))
        # A run resumed mid-candidate may check an attempt again; the run went on with the later verdict.
        attempt.code, attempt.result, attempt.subject = event.code, event.result, event.subject
    return {cid: [by_number[n] for n in sorted(by_number)] for cid, by_number in table.items()}


def _rounds(events: list[TraceEvent], calls: Sequence[LLMCall], trials: Sequence[Trial]) -> list[RoundView]:
    rounds: dict[int, RoundView] = {}

    def round_(number: int) -> RoundView:
        return rounds.setdefault(number, RoundView(number=number))

    places = {e.candidate: (e.round, e.slot) for e in events if isinstance(e, ValidationEvent)}
    places |= {
        c.place.candidate_id: (c.place.round, c.place.slot)
        for c in calls
        if c.place is not None and c.place.candidate_id is not None and c.place.slot is not None
    }
    for candidate_id, attempts in _attempts(events, calls).items():
        number, slot = places[candidate_id]
        subject = attempts[-1].subject
        trial = summarise(trials, subject) if subject and any(t.subject == subject for t in trials) else None
        round_(number).candidates.append(
            CandidateView(id=candidate_id, round=number, slot=slot, attempts=attempts, trial=trial)
        )
    for call in calls:
        if call.place is not None and call.place.slot is None:
            round_(call.place.round).evaluator_calls.append(call)
    for event in events:
        if isinstance(event, DecisionEvent) and event.source == "person":
            round_(event.round).review = event.decision()
        elif isinstance(event, DecisionEvent):
            round_(event.round).decision = event.decision()
    for view in rounds.values():
        view.candidates.sort(key=lambda c: c.slot)
    return [rounds[n] for n in sorted(rounds)]


def _settings(run_dir: Path, events: list[TraceEvent]) -> dict[str, Any]:
    recorded = next((e.settings for e in events if isinstance(e, RunStarted)), None)
    return recorded if recorded is not None else _read_json(run_dir / SETTINGS_FILE) or {}


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path} is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else None


def _model(
    calls: Sequence[LLMCall], role: str, artifact: dict[str, Any] | None, settings: dict[str, Any]
) -> str:
    """The model as the calls resolved it (``local:qwen...``), else as the artifact or settings name it."""
    used = next((c.model for c in calls if c.role == role), None)
    return str(used or (artifact or {}).get(role) or settings.get(role, "?"))


def _status(events: list[TraceEvent]) -> tuple[str, str]:
    finished = [e for e in events if isinstance(e, FinishedEvent)]
    if not finished:
        return "unfinished", "the trace has no 'finished' event: the run is still going, or was interrupted"
    return finished[-1].status, finished[-1].reason


def _totals(calls: Sequence[LLMCall], times: Sequence[float]) -> Totals:
    return Totals(
        llm_calls=sum(not c.error for c in calls),
        llm_errors=sum(bool(c.error) for c in calls),
        input_tokens=sum(c.input_tokens for c in calls),
        output_tokens=sum(c.output_tokens for c in calls),
        llm_latency_s=round(sum(c.latency_s for c in calls), 3),
        wall_s=round(max(times) - min(times), 3) if times else 0.0,
    )


# --- shared wording ---------------------------------------------------------------------------------


def count_text(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def tokens_text(calls: Sequence[LLMCall]) -> str:
    return f"{sum(c.input_tokens for c in calls):,} / {sum(c.output_tokens for c in calls):,}"


def latency_text(calls: Sequence[LLMCall]) -> str:
    return f"{sum(c.latency_s for c in calls):.1f} s"


def _weights_brief(report: WeightReport | None) -> str:
    if report is None:
        return ""
    means = ", ".join(f"{a.mean:.2f}" for a in report.agents)
    return f"mean w per agent: {means}; variation with state {report.weight_state_variation:.3f}"


def totals_line(totals: Totals) -> str:
    return (
        f"{totals.llm_calls} LLM calls ({totals.llm_errors} failed), {totals.input_tokens:,} tokens in / "
        f"{totals.output_tokens:,} out, {totals.llm_latency_s:.1f} s waiting on models, "
        f"{totals.wall_s:.1f} s wall"
    )


def critic_target(decision: Decision, number: int) -> str:
    """The candidate id a critique's number refers to (numbers are 1-based positions in the prompt)."""
    if 1 <= number <= len(decision.contenders):
        return decision.contenders[number - 1]
    return f"#{number}"


def when_text(started: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started is not None else "?"


# --- terminal ---------------------------------------------------------------------------------------

_STATUS_STYLE = {"succeeded": "bold green", "failed": "bold red"}


def print_trace(run_dir: Path, console: Console, *, verbose: bool = False) -> None:
    """Print a run: a header, a table and a decision per round; ``verbose`` adds every prompt and reply."""
    summary = load_run(run_dir)
    console.print(_header_panel(summary))
    for round_ in summary.rounds:
        console.print(_round_table(round_))
        if verbose:
            for call in [*(c for cand in round_.candidates for c in cand.calls), *round_.evaluator_calls]:
                _print_call(console, call)
        console.print(_decision(round_))
    for call in summary.other_calls if verbose else ():
        _print_call(console, call)
    final = Text.assemble(("final: ", "bold"), (summary.status, _STATUS_STYLE.get(summary.status, "yellow")))
    final.append(f" ({summary.final_choice or 'no function'}) {summary.reason}")
    console.print(final)


def _header_panel(summary: RunSummary) -> Panel:
    rows = Table.grid(padding=(0, 2))
    for name, value, style in (
        ("task", summary.task, ""),
        ("coder", summary.coder, ""),
        ("evaluator", summary.evaluator, ""),
        ("prompts", summary.prompt_version, ""),
        ("started", f"{when_text(summary.started)} ({count_text(summary.resumes, 'resume')})", ""),
        ("status", summary.status, _STATUS_STYLE.get(summary.status, "bold yellow")),
        ("reason", summary.reason, ""),
        ("totals", totals_line(summary.totals), ""),
        *(
            [
                (
                    "trials",
                    f"{count_text(len(summary.trials), 'training')}; equal weights (VDN): "
                    f"{trial_brief(summary.reference)}",
                    "",
                )
            ]
            if summary.reference is not None
            else []
        ),
    ):
        rows.add_row(Text(name, style="dim"), Text(value, style=style))
    return Panel(rows, title=Text(summary.run_id), title_align="left")


def _round_table(round_: RoundView) -> Table:
    table = Table(title=f"Round {round_.number}", title_justify="left", expand=True)
    table.add_column("candidate", no_wrap=True)
    table.add_column("attempts", justify="right")
    table.add_column("verdict", no_wrap=True)
    table.add_column("error / weights", ratio=1, overflow="fold")
    trained = any(c.trial is not None for c in round_.candidates)
    if trained:
        table.add_column("trial: return at 25/50/75/100%; vs equal weights", ratio=1, overflow="fold")
    table.add_column("tokens in / out", justify="right", no_wrap=True)
    table.add_column("latency", justify="right", no_wrap=True)
    for cand in round_.candidates:
        result = cand.final.result
        detail = _weights_brief(result.weights) if result is not None and result.ok else ""
        if result is not None and not result.ok:
            detail = result.message
        trial = [Text(trial_brief(cand.trial), style=_trial_style(cand.trial))] if trained else []
        table.add_row(
            Text(cand.id),
            str(len(cand.attempts)),
            Text(cand.final.verdict, style="green" if cand.ok else "red"),
            Text(detail),
            *trial,
            tokens_text(cand.calls),
            latency_text(cand.calls),
        )
    return table


def trial_brief(summary: TrialSummary | None) -> str:
    """A candidate's trial in one cell: its curve and its verdict against equal weights."""
    if summary is None:
        return ""
    if summary.fitness is None:
        return f"did not finish: {summary.problem[:120]}"
    curve = ", ".join(f"{r:.3g}" for r in summary.returns)
    d = summary.vs_reference
    against = "" if d is None else f"; {d.mean:+.3g} ± {d.noise:.2g} ({d.verdict()})"
    return f"{curve}{against}"


def _trial_style(summary: TrialSummary | None) -> str:
    if summary is None or summary.fitness is None:
        return "yellow"
    if summary.beats_reference:
        return "green"
    d = summary.vs_reference
    return "red" if d is not None and d.beyond_noise else ""


def _decision(round_: RoundView) -> Group:
    """The decision's headline, then critiques, tips and note as an indented two-column grid."""
    decision, calls = round_.decision, round_.evaluator_calls
    if decision is None:
        return Group(Text("decision: none (the round was not evaluated)", style="yellow"))
    head = Text.assemble(
        (f"decision ({decision.source}): ", "bold"), (decision.chosen or "nothing chosen", "bold cyan")
    )
    if decision.contenders:
        head.append(f" from {', '.join(decision.contenders)}")
    if calls:
        head.append(
            f"  evaluator: {count_text(len(calls), 'call')}, {tokens_text(calls)} tokens, "
            f"{latency_text(calls)}",
            "dim",
        )
    details = Table.grid(padding=(0, 1))
    details.add_column(style="cyan", no_wrap=True)
    details.add_column(ratio=1)
    evaluation = decision.evaluation
    for critique in evaluation.critiques if evaluation else ():
        details.add_row(Text(critic_target(decision, critique.candidate)), Text(critique.critique))
    if evaluation and evaluation.tips:
        details.add_row(Text("tips"), Text(evaluation.tips))
    if decision.note:
        details.add_row(Text("note"), Text(decision.note))
    if decision.beats_reference is not None:
        verdict = (
            "beats equal weights (VDN) beyond the noise"
            if decision.beats_reference
            else ("does not beat equal weights (VDN) beyond the noise")
        )
        details.add_row(
            Text("on trial"), Text(verdict, style="green" if decision.beats_reference else "yellow")
        )
    if round_.review is not None:
        details.add_row(
            Text("review"), Text(f"{round_.review.chosen}: {round_.review.note}", style="magenta")
        )
    return Group(head, Padding(details, (0, 0, 0, 2)))


def _print_call(console: Console, call: LLMCall) -> None:
    title = f"{call.label} · {call.role} · {call.model} · {call.input_tokens}/{call.output_tokens} tokens"
    console.print(Rule(Text(f"{title} · {call.latency_s:.1f} s"), align="left"))
    parts: list[Text] = []
    for role, content in call.messages:
        parts += [Text(f"[{role}]", style="bold magenta"), Text(content)]
    if call.error:
        parts += [Text("[error]", style="bold red"), Text(call.error)]
    else:
        parts += [Text("[reply]", style="bold green"), Text(call.response)]
    console.print(Group(*parts))


def export_json(run_dir: Path, out: Path | None = None) -> Path:
    """Write the structured summary as JSON (default ``<run_dir>/trace_summary.json``), for scripts."""
    summary = load_run(run_dir)
    path = out if out is not None else run_dir / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(summary.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path
