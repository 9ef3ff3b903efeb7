"""A generation run read back for people: rounds, candidates, LLM calls and decisions, in a terminal or HTML.

::

    summary = load_run(Path("runs/generate/matrix-climbing__tfcaf__0__20260101-120000"))
    print_trace(summary.run_dir, Console(), verbose=True)   # tables per round; prompts and replies too
    export_html(summary.run_dir)                            # -> <run_dir>/trace.html, one file

The trace (:mod:`qllm.agents.trace`) is a flat log in the order things happened, with the candidates of a
round interleaved when they run concurrently and retried calls next to the ones that failed.
:func:`load_run` regroups it by round: each candidate with its attempts (the code, the sandbox verdict
and the coder calls behind it), the evaluator's calls and the decision, plus totals for the whole run.

Everything a model wrote is untrusted text. The terminal view passes it to rich as plain
:class:`~rich.text.Text`, never as markup; the HTML page escapes it, carries no script, and declares a
content security policy that blocks scripts and every network request, so a page that somehow let a
tag through still could not run or fetch anything. The page is self-contained (inline CSS, the weights
plot as a PNG data URI) so it can be mailed, attached to a report or opened years later.
"""

from __future__ import annotations

import base64
import difflib
import html
import io
import json
import re
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
from qllm.agents.trace import TRACE_FILE, Event, read_events
from qllm.sandbox.result import ValidationResult, WeightReport

HTML_FILE = "trace.html"
SUMMARY_FILE = "trace_summary.json"

_CODER_LABEL = re.compile(r"r(?P<round>\d+)-c(?P<slot>\d+)-a(?P<attempt>\d+)")
_EVALUATOR_LABEL = re.compile(r"r(?P<round>\d+)-eval\d+")
_CANDIDATE_ID = re.compile(r"r(?P<round>\d+)-c(?P<slot>\d+)")
_CALL_EVENTS = ("llm_call", "llm_error")


class TraceNotFoundError(RunFolderError):
    """A path with no ``trace.jsonl``: not a generation run folder, or one that never started."""


# --- the structured summary -------------------------------------------------------------------------


class LLMCall(BaseModel):
    """One coder or evaluator call: what was sent, what came back, and what it cost."""

    role: str
    model: str
    label: str
    """The call's place in the run: ``r1-c0-a0`` (round, candidate slot, attempt) or ``r1-eval0``."""
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
    """``None`` when the run stopped before the round was evaluated."""


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
        decided = [r.decision.chosen for r in self.rounds if r.decision is not None]
        return decided[-1] if decided else None

    def best_before(self, round_number: int) -> CandidateView | None:
        """The best function going into a round: what its candidates were asked to improve."""
        earlier = [r.decision for r in self.rounds if r.number < round_number and r.decision is not None]
        return self.candidate(earlier[-1].chosen) if earlier else None


# --- loading ----------------------------------------------------------------------------------------


def load_run(run_dir: Path) -> RunSummary:
    """Read a run folder's trace (and artifact, if any) into a :class:`RunSummary`."""
    trace = run_dir / TRACE_FILE
    if not trace.is_file():
        raise TraceNotFoundError(f"{run_dir} is not a generation run folder (no {TRACE_FILE})")
    events = list(read_events(trace))
    try:
        return _summary(run_dir, events)
    except RunFolderError:
        raise
    except (KeyError, TypeError, ValueError) as exc:  # ValueError includes pydantic's ValidationError
        # A trace from another version of the graph, or edited by hand: say so in one line.
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise RunFolderError(f"{trace} has an event this version cannot read ({detail})") from None


def _summary(run_dir: Path, events: list[Event]) -> RunSummary:
    calls = [_call(e) for e in events if e.get("event") in _CALL_EVENTS]
    settings = _settings(run_dir, events)
    artifact = _read_json(run_dir / METADATA_FILE)
    final = run_dir / ARTIFACT_FILE
    status, reason = _status(events)
    times = [float(e["time"]) for e in events if "time" in e]
    return RunSummary(
        run_dir=run_dir,
        task=str(settings.get("task") or (artifact or {}).get("task", "?")),
        coder=_model(calls, "coder", artifact, settings),
        evaluator=_model(calls, "evaluator", artifact, settings),
        prompt_version=next((e["prompt_version"] for e in events if "prompt_version" in e), "?"),
        settings=settings,
        started=min(times) if times else None,
        resumes=sum(e.get("event") == "resumed" for e in events),
        status=status,
        reason=reason,
        rounds=_rounds(events, calls),
        other_calls=[c for c in calls if _place(c.label) is None],
        totals=_totals(calls, times),
        artifact=artifact,
        final_source=final.read_text() if final.is_file() else "",
    )


def _call(event: Event) -> LLMCall:
    usage = event.get("usage") or {}
    return LLMCall(
        role=event.get("role", "?"),
        model=event.get("model", "?"),
        label=event.get("label", ""),
        messages=[(str(role), str(content)) for role, content in event.get("messages", [])],
        response=event.get("response") or "",
        input_tokens=int(usage.get("input_tokens", 0)),
        output_tokens=int(usage.get("output_tokens", 0)),
        latency_s=float(event.get("latency_s", 0.0)),
        error=event.get("error", "") if event["event"] == "llm_error" else "",
        transient=bool(event.get("transient", False)),
    )


def _place(label: str) -> tuple[str, int, int] | None:
    """Where a call belongs, from its label: ``("coder", round, attempt)``, ``("evaluator", round, 0)``."""
    if match := _CODER_LABEL.fullmatch(label):
        return "coder", int(match["round"]), int(match["attempt"])
    if match := _EVALUATOR_LABEL.fullmatch(label):
        return "evaluator", int(match["round"]), 0
    return None


def _attempts(events: Iterable[Event], calls: Sequence[LLMCall]) -> dict[str, list[AttemptView]]:
    """Coder calls and sandbox verdicts, joined by candidate id and attempt number."""
    table: dict[str, dict[int, AttemptView]] = defaultdict(dict)
    for call in calls:
        place = _place(call.label)
        if place is not None and place[0] == "coder":
            candidate_id = call.label.rsplit("-a", 1)[0]
            table[candidate_id].setdefault(place[2], AttemptView(number=place[2])).calls.append(call)
    for event in events:
        if event.get("event") != "validation":
            continue
        attempt = table[event["candidate"]].setdefault(event["attempt"], AttemptView(number=event["attempt"]))
        # A run resumed mid-candidate may check an attempt again; the run went on with the later verdict.
        attempt.code = event.get("code", "")
        attempt.result = ValidationResult.model_validate(event["result"])
    return {cid: [by_number[n] for n in sorted(by_number)] for cid, by_number in table.items()}


def _rounds(events: list[Event], calls: Sequence[LLMCall]) -> list[RoundView]:
    rounds: dict[int, RoundView] = {}

    def round_(number: int) -> RoundView:
        return rounds.setdefault(number, RoundView(number=number))

    for candidate_id, attempts in _attempts(events, calls).items():
        # Ids come from the graph (``r{round}-c{slot}``); anything else is still shown, under round 0.
        match = _CANDIDATE_ID.fullmatch(candidate_id)
        number, slot = (int(match["round"]), int(match["slot"])) if match else (0, 0)
        round_(number).candidates.append(
            CandidateView(id=candidate_id, round=number, slot=slot, attempts=attempts)
        )
    for call in calls:
        place = _place(call.label)
        if place is not None and place[0] == "evaluator":
            round_(place[1]).evaluator_calls.append(call)
    for event in events:
        if event.get("event") == "decision":
            round_(int(event["round"])).decision = Decision.model_validate(event)
    for view in rounds.values():
        view.candidates.sort(key=lambda c: c.slot)
    return [rounds[n] for n in sorted(rounds)]


def _settings(run_dir: Path, events: list[Event]) -> dict[str, Any]:
    recorded = next((e["settings"] for e in events if e.get("event") in ("started", "resumed")), None)
    return recorded if isinstance(recorded, dict) else _read_json(run_dir / SETTINGS_FILE) or {}


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


def _status(events: list[Event]) -> tuple[str, str]:
    finished = [e for e in events if e.get("event") == "finished"]
    if not finished:
        return "unfinished", "the trace has no 'finished' event: the run is still going, or was interrupted"
    return str(finished[-1].get("status", "?")), str(finished[-1].get("reason", ""))


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


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _tokens(calls: Sequence[LLMCall]) -> str:
    return f"{sum(c.input_tokens for c in calls):,} / {sum(c.output_tokens for c in calls):,}"


def _latency(calls: Sequence[LLMCall]) -> str:
    return f"{sum(c.latency_s for c in calls):.1f} s"


def _weights_brief(report: WeightReport | None) -> str:
    if report is None:
        return ""
    means = ", ".join(f"{a.mean:.2f}" for a in report.agents)
    return f"mean w per agent: {means}; variation with state {report.weight_state_variation:.3f}"


def _totals_line(totals: Totals) -> str:
    return (
        f"{totals.llm_calls} LLM calls ({totals.llm_errors} failed), {totals.input_tokens:,} tokens in / "
        f"{totals.output_tokens:,} out, {totals.llm_latency_s:.1f} s waiting on models, "
        f"{totals.wall_s:.1f} s wall"
    )


def _critic_target(decision: Decision, number: int) -> str:
    """The candidate id a critique's number refers to (numbers are 1-based positions in the prompt)."""
    if 1 <= number <= len(decision.contenders):
        return decision.contenders[number - 1]
    return f"#{number}"


def _when(started: float | None) -> str:
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
        ("started", f"{_when(summary.started)} ({_count(summary.resumes, 'resume')})", ""),
        ("status", summary.status, _STATUS_STYLE.get(summary.status, "bold yellow")),
        ("reason", summary.reason, ""),
        ("totals", _totals_line(summary.totals), ""),
    ):
        rows.add_row(Text(name, style="dim"), Text(value, style=style))
    return Panel(rows, title=Text(summary.run_id), title_align="left")


def _round_table(round_: RoundView) -> Table:
    table = Table(title=f"Round {round_.number}", title_justify="left", expand=True)
    table.add_column("candidate", no_wrap=True)
    table.add_column("attempts", justify="right")
    table.add_column("verdict", no_wrap=True)
    table.add_column("error / weights", ratio=1, overflow="fold")
    table.add_column("tokens in / out", justify="right", no_wrap=True)
    table.add_column("latency", justify="right", no_wrap=True)
    for cand in round_.candidates:
        result = cand.final.result
        detail = _weights_brief(result.weights) if result is not None and result.ok else ""
        if result is not None and not result.ok:
            detail = result.message
        table.add_row(
            Text(cand.id),
            str(len(cand.attempts)),
            Text(cand.final.verdict, style="green" if cand.ok else "red"),
            Text(detail),
            _tokens(cand.calls),
            _latency(cand.calls),
        )
    return table


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
            f"  evaluator: {_count(len(calls), 'call')}, {_tokens(calls)} tokens, {_latency(calls)}", "dim"
        )
    details = Table.grid(padding=(0, 1))
    details.add_column(style="cyan", no_wrap=True)
    details.add_column(ratio=1)
    evaluation = decision.evaluation
    for critique in evaluation.critiques if evaluation else ():
        details.add_row(Text(_critic_target(decision, critique.candidate)), Text(critique.critique))
    if evaluation and evaluation.tips:
        details.add_row(Text("tips"), Text(evaluation.tips))
    if decision.note:
        details.add_row(Text("note"), Text(decision.note))
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


# --- HTML -------------------------------------------------------------------------------------------

_CSS = """
:root { --ok: #1a7f37; --bad: #cf222e; --muted: #57606a; --line: #d0d7de; --code: #f6f8fa; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       max-width: 1150px; margin: 0 auto; padding: 16px 24px 64px; }
h1 { font-size: 20px; margin: 8px 0; word-break: break-all; }
h2 { font-size: 18px; border-bottom: 2px solid var(--line); padding-bottom: 4px; margin-top: 32px; }
h3 { font-size: 15px; margin: 0 0 6px; }
h4 { font-size: 13px; margin: 10px 0 4px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: var(--code); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0; }
dl.meta dt { color: var(--muted); } dl.meta dd { margin: 0; }
nav { margin: 8px 0 0; } nav a { margin-right: 12px; }
pre { background: var(--code); border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px;
      overflow-x: auto; font: 12px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
      white-space: pre-wrap; word-break: break-word; margin: 4px 0; }
.candidate { border: 1px solid var(--line); border-left: 5px solid var(--bad); border-radius: 6px;
             padding: 10px 14px; margin: 12px 0; }
.candidate.ok { border-left-color: var(--ok); }
.attempt { border-top: 1px dashed var(--line); margin-top: 8px; }
.verdict { font-weight: 600; padding: 1px 7px; border-radius: 10px; font-size: 12px; color: #fff;
           background: var(--bad); }
.verdict.ok { background: var(--ok); }
.verdict.unchecked { background: var(--muted); }
.chosen-badge { font-size: 12px; color: #0969da; font-weight: 600; margin-left: 6px; }
.error { color: var(--bad); font-weight: 600; }
details { margin: 4px 0; } summary { cursor: pointer; color: #0969da; }
details.llm-call > summary { color: var(--muted); font-size: 13px; }
details.llm-call[open] { border-left: 3px solid #d8b9ff; padding-left: 10px; }
.message-role { font-size: 12px; font-weight: 600; color: #8250df; margin-top: 6px; }
pre.diff { padding: 0; } pre.diff span { display: block; padding: 0 10px; }
pre.diff .add { background: #dafbe1; color: #116329; } pre.diff .del { background: #ffebe9; color: #82071e; }
pre.diff .hunk { color: #0550ae; background: #ddf4ff; } pre.diff .meta { color: var(--muted); }
.decision { background: #f0f6ff; border: 1px solid #b6d3ff; border-radius: 6px; padding: 10px 14px; }
.decision ul { margin: 4px 0; }
.muted { color: var(--muted); }
#final { border: 2px solid var(--line); border-radius: 8px; padding: 4px 16px 12px; margin-top: 32px; }
#final h2 { margin-top: 12px; }
#weights-plot img { max-width: 100%; border: 1px solid var(--line); border-radius: 6px; }
"""

# Defence in depth: even if a model's text slipped past escaping, no script may run and nothing may be
# fetched. Only inline styles and data: images (the plot) are allowed.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _badge(text: str, ok: bool | None) -> str:
    """A coloured pill: green for passed/succeeded, red for failed, grey when there is no verdict yet."""
    state = "unchecked" if ok is None else ("ok" if ok else "bad")
    return f'<span class="verdict {state}">{_e(text)}</span>'


def _passed(result: ValidationResult | None) -> bool | None:
    return None if result is None else result.ok


def export_html(run_dir: Path, out: Path | None = None) -> Path:
    """Write the run as one self-contained HTML page (default ``<run_dir>/trace.html``); returns its path."""
    page = render_html(load_run(run_dir))
    path = out if out is not None else run_dir / HTML_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def export_json(run_dir: Path, out: Path | None = None) -> Path:
    """Write the structured summary as JSON (default ``<run_dir>/trace_summary.json``), for scripts."""
    summary = load_run(run_dir)
    path = out if out is not None else run_dir / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(summary.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def render_html(summary: RunSummary) -> str:
    """The page :func:`export_html` writes: header and totals, a section per round, the final choice."""
    body = [_html_header(summary), *(_html_round(summary, r) for r in summary.rounds)]
    if summary.other_calls:
        body.append(_html_section("other-calls", "Other LLM calls", _html_calls(summary.other_calls)))
    body.append(_html_final(summary))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(summary.run_id)}: generation trace</title>\n<style>{_CSS}</style></head>\n"
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _html_section(section_id: str, title: str, inner: str, css_class: str = "") -> str:
    return f'<section id="{_e(section_id)}" class="{css_class}"><h2>{_e(title)}</h2>\n{inner}\n</section>'


def _html_details(summary: str, inner: str, css_class: str = "", *, opened: bool = False) -> str:
    """A collapsible block; ``summary`` and ``inner`` are HTML already."""
    attributes = f'class="{css_class}"' + (" open" if opened else "")
    return f"<details {attributes}><summary>{summary}</summary>{inner}</details>"


def _html_meta(rows: Iterable[tuple[str, str]]) -> str:
    """A definition list; values are HTML already (callers escape what they put in)."""
    return '<dl class="meta">' + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _html_header(summary: RunSummary) -> str:
    status = _badge(summary.status, _succeeded(summary))
    links = [f'<a href="#round-{r.number}">Round {r.number}</a>' for r in summary.rounds]
    meta = _html_meta(
        [
            ("task", _e(summary.task)),
            ("coder", _e(summary.coder)),
            ("evaluator", _e(summary.evaluator)),
            ("prompt version", _e(summary.prompt_version)),
            ("started", _e(f"{_when(summary.started)} ({_count(summary.resumes, 'resume')})")),
            ("status", f"{status} {_e(summary.reason)}"),
            ("totals", _e(_totals_line(summary.totals))),
        ]
    )
    settings = _html_details("settings", f"<pre>{_e(json.dumps(summary.settings, indent=2))}</pre>")
    nav = "<nav>" + "".join([*links, '<a href="#final">Final</a>']) + "</nav>"
    return f'<header id="summary"><h1>{_e(summary.run_id)}</h1>\n{meta}\n{settings}\n{nav}</header>'


def _succeeded(summary: RunSummary) -> bool | None:
    return {"succeeded": True, "failed": False}.get(summary.status)


def _html_round(summary: RunSummary, round_: RoundView) -> str:
    baseline = summary.best_before(round_.number)
    chosen = round_.decision.chosen if round_.decision else None
    parts = [_html_candidate(c, baseline, chosen) for c in round_.candidates]
    if round_.evaluator_calls:
        parts.append("<h3>Evaluator calls</h3>" + _html_calls(round_.evaluator_calls))
    parts.append(_html_decision(round_))
    return _html_section(f"round-{round_.number}", f"Round {round_.number}", "\n".join(parts), "round")


def _html_candidate(cand: CandidateView, baseline: CandidateView | None, chosen: str | None) -> str:
    badge = '<span class="chosen-badge">★ chosen</span>' if cand.id == chosen else ""
    head = (
        f"<h3>{_e(cand.id)} {_badge(cand.final.verdict, _passed(cand.final.result))}{badge} "
        f'<span class="muted">{_count(len(cand.attempts), "attempt")}, '
        f"tokens in/out {_e(_tokens(cand.calls))}, {_e(_latency(cand.calls))}</span></h3>"
    )
    attempts = (_html_attempt(a, f"{cand.id}-a{a.number}") for a in cand.attempts)
    parts = [head, _html_diff_block(cand, baseline), *attempts]
    css = "candidate ok" if cand.ok else "candidate"
    return f'<div class="{css}" id="cand-{_e(cand.id)}">\n' + "\n".join(p for p in parts if p) + "\n</div>"


def _html_attempt(attempt: AttemptView, anchor: str) -> str:
    result = attempt.result
    parts = [
        f"<h4>attempt {attempt.number} {_badge(attempt.verdict, _passed(result))}</h4>",
        f'<pre class="code">{_e(attempt.code)}</pre>' if attempt.code else '<p class="muted">no code</p>',
    ]
    if result is not None and not result.ok:
        parts.append(f'<p class="error">{_e(result.error_kind or "error")}: {_e(result.message)}</p>')
        if result.traceback:
            parts.append(f'<pre class="traceback">{_e(result.traceback)}</pre>')
    if result is not None and result.weights is not None:
        parts.append(_html_weights_table(result.weights))
    parts.append(_html_calls(attempt.calls))
    return f'<div class="attempt" id="{_e(anchor)}">' + "\n".join(parts) + "</div>"


def _html_weights_table(report: WeightReport) -> str:
    rows = "".join(
        f"<tr><td>{a.agent}</td>"
        + "".join(f'<td class="num">{v:.3f}</td>' for v in (a.mean, a.std, a.min, a.max))
        + f'<td class="num">{a.share_zero:.0%}</td></tr>'
        for a in report.agents
    )
    return (
        '<table class="weights"><tr><th>agent</th><th>mean w</th><th>std</th><th>min</th><th>max</th>'
        f"<th>zero</th></tr>{rows}</table>"
        f'<p class="muted">{report.n_states} states; variation with state '
        f"{report.weight_state_variation:.3f}; sum of weights {report.weight_sum_mean:.3f}; "
        f"bias mean {report.bias_mean:.3f}</p>"
    )


def _html_calls(calls: Sequence[LLMCall]) -> str:
    return "\n".join(_html_call(c) for c in calls)


def _html_call(call: LLMCall) -> str:
    outcome = f'<span class="error">error: {_e(call.error)}</span>' if call.error else ""
    summary = (
        f"{_e(call.role)} call <b>{_e(call.label)}</b> · {_e(call.model)} · "
        f"{call.input_tokens:,} → {call.output_tokens:,} tokens · {call.latency_s:.1f} s {outcome}"
    )
    messages = "".join(
        f'<div class="message-role">{_e(role)}</div><pre class="message">{_e(content)}</pre>'
        for role, content in call.messages
    )
    reply = (
        ""
        if call.error
        else f'<div class="message-role">reply</div><pre class="response">{_e(call.response)}</pre>'
    )
    return _html_details(summary, messages + reply, "llm-call")


def _html_diff_block(cand: CandidateView, baseline: CandidateView | None) -> str:
    if baseline is None or not baseline.final.code:
        return ""
    title = f"changes against {baseline.id}, the best function before round {cand.round}"
    if not cand.final.code:
        return f'<p class="muted">no code to compare with {_e(baseline.id)}</p>'
    if cand.final.code == baseline.final.code:
        return f'<p class="muted">code identical to {_e(baseline.id)}</p>'
    diff = _html_diff(baseline.final.code, cand.final.code, baseline.id, cand.id)
    return _html_details(_e(title), diff, "diff", opened=True)


def _html_diff(old: str, new: str, old_name: str, new_name: str) -> str:
    """A unified diff with added and removed lines coloured."""
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(), fromfile=old_name, tofile=new_name, lineterm=""
    )
    spans = []
    for line in lines:
        if line.startswith(("+++", "---")):
            kind = "meta"
        elif line.startswith("@@"):
            kind = "hunk"
        else:
            kind = {"+": "add", "-": "del"}.get(line[:1], "ctx")
        # A zero-width space keeps empty context lines from collapsing; escaping comes first.
        spans.append(f'<span class="{kind}">{_e(line) or "&#8203;"}</span>')
    return '<pre class="diff">' + "".join(spans) + "</pre>"


def _html_decision(round_: RoundView) -> str:
    decision = round_.decision
    if decision is None:
        return '<div class="decision"><p class="muted">not evaluated (the run stopped first)</p></div>'
    chosen = f'<a href="#cand-{_e(decision.chosen)}">{_e(decision.chosen)}</a>' if decision.chosen else "none"
    rows = [
        ("chosen", f"<b>{chosen}</b>"),
        ("source", _e(decision.source)),
        ("contenders", _e(", ".join(decision.contenders) or "none")),
    ]
    evaluation = decision.evaluation
    if evaluation is not None:
        items = "".join(
            f"<li><b>{_e(_critic_target(decision, c.candidate))}</b>: {_e(c.critique)}</li>"
            for c in evaluation.critiques
        )
        rows += [
            ("critiques", f"<ul>{items}</ul>" if items else '<span class="muted">none</span>'),
            ("tips", _e(evaluation.tips) or '<span class="muted">none</span>'),
            ("satisfied", "yes" if evaluation.satisfied else "no"),
        ]
    if decision.note:
        rows.append(("note", _e(decision.note)))
    return (
        f'<div class="decision" id="decision-{round_.number}"><h3>Decision after round {round_.number}</h3>'
        f"{_html_meta(rows)}</div>"
    )


def _html_final(summary: RunSummary) -> str:
    choice = summary.final_choice
    rows = [
        ("status", _badge(summary.status, _succeeded(summary))),
        ("reason", _e(summary.reason)),
        ("function", f'<a href="#cand-{_e(choice)}">{_e(choice)}</a>' if choice else "none"),
    ]
    parts = [_html_meta(rows)]
    episode = (summary.artifact or {}).get("episode_weights")
    if episode and episode.get("weights"):
        png = base64.b64encode(weights_plot_png(episode)).decode("ascii")
        number = _e(episode.get("episode", 0))
        parts.append(
            f'<figure id="weights-plot"><img alt="weights per agent over episode {number}" '
            f'src="data:image/png;base64,{png}"><figcaption class="muted">w_i(s) = dQ_tot/dQ_i of the final '
            f"function at every state of recorded episode {number}, and the team reward per step"
            "</figcaption></figure>"
        )
    elif summary.artifact is not None:
        parts.append('<p class="muted">artifact.json has no recorded episode weights to plot</p>')
    if summary.final_source:
        parts.append(f'<h3>{_e(ARTIFACT_FILE)}</h3><pre id="final-source">{_e(summary.final_source)}</pre>')
    return _html_section("final", "Final", "\n".join(parts))


def weights_plot_png(episode: dict[str, Any]) -> bytes:
    """Per-agent weights over one recorded episode, with the team reward per step below, as a PNG."""
    # Imported here: matplotlib is slow to import and only the HTML export needs it. The Agg canvas is
    # used directly (not pyplot) so that no global backend is switched and no figure is left registered.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    weights: list[list[float]] = episode["weights"]
    rewards: list[float] = episode.get("rewards", [])
    fig = Figure(figsize=(9, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_w, ax_r = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    for agent in range(len(weights[0])):
        ax_w.plot([row[agent] for row in weights], marker=".", label=f"agent {agent}")
    ax_w.set_ylabel("weight w_i(s)")
    ax_w.set_title(f"Final function's weights over recorded episode {episode.get('episode', 0)}")
    ax_w.grid(alpha=0.3)
    ax_w.legend(loc="best", fontsize="small")
    ax_r.bar(range(len(rewards)), rewards, color="0.55")
    ax_r.set_ylabel("reward")
    ax_r.set_xlabel("time step")
    ax_r.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
