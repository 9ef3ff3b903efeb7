"""A generation run as one self-contained HTML page: rounds, candidates with diffs, calls, decisions.

Everything a model wrote is untrusted text: it is escaped, the page carries no script, and it declares a
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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from qllm.agents.artifact import ARTIFACT_FILE
from qllm.agents.trace_view import (
    AttemptView,
    CandidateView,
    LLMCall,
    RoundView,
    RunSummary,
    count_text,
    critic_target,
    latency_text,
    load_run,
    tokens_text,
    totals_line,
    trial_brief,
    when_text,
)
from qllm.sandbox.result import ValidationResult, WeightReport

HTML_FILE = "trace.html"

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
            ("started", _e(f"{when_text(summary.started)} ({count_text(summary.resumes, 'resume')})")),
            ("status", f"{status} {_e(summary.reason)}"),
            ("totals", _e(totals_line(summary.totals))),
            *(
                [("equal weights on trial", _e(trial_brief(summary.reference)))]
                if summary.reference is not None
                else []
            ),
        ]
    )
    settings = _html_details("settings", f"<pre>{_e(json.dumps(summary.settings, indent=2))}</pre>")
    nav = "<nav>" + "".join([*links, '<a href="#final">Final</a>']) + "</nav>"
    return f'<header id="summary"><h1>{_e(summary.run_id)}</h1>\n{meta}\n{settings}\n{nav}</header>'


def _succeeded(summary: RunSummary) -> bool | None:
    return {"succeeded": True, "failed": False}.get(summary.status)


def _html_round(summary: RunSummary, round_: RoundView) -> str:
    baseline = summary.best_before(round_.number)
    chosen = round_.final.chosen if round_.final else None
    parts = [_html_candidate(c, baseline, chosen) for c in round_.candidates]
    trials = _html_trials(summary, round_)
    if trials:
        parts.append(trials)
    if round_.evaluator_calls:
        parts.append("<h3>Evaluator calls</h3>" + _html_calls(round_.evaluator_calls))
    parts.append(_html_decision(round_))
    return _html_section(f"round-{round_.number}", f"Round {round_.number}", "\n".join(parts), "round")


def _html_candidate(cand: CandidateView, baseline: CandidateView | None, chosen: str | None) -> str:
    badge = '<span class="chosen-badge">★ chosen</span>' if cand.id == chosen else ""
    head = (
        f"<h3>{_e(cand.id)} {_badge(cand.final.verdict, _passed(cand.final.result))}{badge} "
        f'<span class="muted">{count_text(len(cand.attempts), "attempt")}, '
        f"tokens in/out {_e(tokens_text(cand.calls))}, {_e(latency_text(cand.calls))}</span></h3>"
    )
    attempts = (_html_attempt(a, f"{cand.id}-a{a.number}") for a in cand.attempts)
    trial = (
        f'<p class="trial">trial: greedy return at 25/50/75/100% {_e(trial_brief(cand.trial))}</p>'
        if cand.trial is not None
        else ""
    )
    parts = [head, trial, _html_diff_block(cand, baseline), *attempts]
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
            f"<li><b>{_e(critic_target(decision, c.candidate))}</b>: {_e(c.critique)}</li>"
            for c in evaluation.critiques
        )
        rows += [
            ("critiques", f"<ul>{items}</ul>" if items else '<span class="muted">none</span>'),
            ("tips", _e(evaluation.tips) or '<span class="muted">none</span>'),
            ("satisfied", "yes" if evaluation.satisfied else "no"),
        ]
    if decision.note:
        rows.append(("note", _e(decision.note)))
    if decision.beats_reference is not None:
        verdict = "beats" if decision.beats_reference else "does not beat"
        rows.append(("on trial", f"{verdict} equal weights (VDN) beyond the noise"))
    if round_.review is not None:
        rows.append(("review", f"<b>{_e(round_.review.chosen)}</b>: {_e(round_.review.note)}"))
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


def _html_trials(summary: RunSummary, round_: RoundView) -> str:
    """The round's trial curves (each candidate's mean over seeds, and equal weights') as a figure."""
    curves = {c.id: c.trial.returns for c in round_.candidates if c.trial is not None and c.trial.returns}
    if not curves or summary.reference is None or not summary.reference.returns:
        return ""
    curves["equal weights (VDN)"] = summary.reference.returns
    png = base64.b64encode(trial_plot_png(curves, f"Round {round_.number}: trial training")).decode("ascii")
    return (
        f'<figure class="trial-curves"><img alt="trial curves of round {round_.number}" '
        f'src="data:image/png;base64,{png}"><figcaption class="muted">greedy return at 25, 50, 75 and 100% '
        "of each trial (mean over its seeds); every candidate and equal weights trained with the same seeds "
        "and initial networks</figcaption></figure>"
    )


def trial_plot_png(curves: dict[str, list[float]], title: str) -> bytes:
    """Trial learning curves (greedy return at each quarter of the trial) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - see weights_plot_png
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(7, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, returns in curves.items():
        fractions = [25 * (k + 1) for k in range(len(returns))]
        style = {"color": "0.3", "linestyle": "--"} if name.startswith("equal") else {}
        ax.plot(fractions, returns, marker="o", label=name, **style)
    ax.set_xlabel("% of the trial")
    ax.set_ylabel("greedy return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


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
