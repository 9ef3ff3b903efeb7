"""Reading a generation run back: the summary, the terminal view, the HTML page (in a browser), the CLI.

One small run is made with fake chat models (2 rounds of 2 candidates, one repair each) and shared by
every test. One coder reply hides ``<script>alert(1)</script>`` in a comment and one critique carries
HTML, to prove that what models write reaches the page as text, never as markup.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from rich.console import Console
from typer.testing import CliRunner

from qllm.agents import GenerationRun, GenerationSettings, Models, RunFolderError
from qllm.agents.trace_html import export_html
from qllm.agents.trace_view import RunSummary, TraceNotFoundError, load_run, print_trace
from qllm.cli.trace import app

CHROMIUM = Path("/usr/bin/chromium")
SCRIPT = "<script>alert(1)</script>"
CRITIQUE = "weights are flat <b>everywhere</b>"

SCRIPTED = f"```python\ndef agent_weight(s, i):\n    # {SCRIPT}\n    return 1.0 + i\n```"
PLAIN = "```python\ndef agent_weight(s, i):\n    return 1.0 + i\n```"
BETTER = "```python\ndef agent_weight(s, i):\n    return 1.0 + i + sum(s['last_joint_action'])\n```"
BROKEN = "```python\ndef agent_weight(s, i):\n    return s['nope'][i]\n```"
# The local provider runs one candidate at a time, so replies are consumed in this order:
# r1-c0-a0, r1-c1-a0, r1-c1-a1 (repair), r2-c0-a0, r2-c1-a0, r2-c1-a1 (repair, fails again).
CODER_REPLIES = [SCRIPTED, BROKEN, PLAIN, BETTER, BROKEN, BROKEN]


def _evaluation(choice: int) -> str:
    critiques = [{"candidate": 1, "critique": CRITIQUE}, {"candidate": 2, "critique": "it crashed once"}]
    return json.dumps(
        {"choice": choice, "critiques": critiques, "tips": "use the last action", "satisfied": False}
    )


# Round 2's first evaluator reply is unusable, so the trace also holds a retried evaluation (r2-eval1).
EVALUATOR_REPLIES = [_evaluation(1), "no JSON here", _evaluation(1)]


def _fake(replies: list[str], first_tokens: int) -> GenericFakeChatModel:
    """A fake model whose replies report token usage, so the totals have something to add up."""
    messages = [
        AIMessage(
            content=text,
            usage_metadata={
                "input_tokens": first_tokens + k,
                "output_tokens": 10 + k,
                "total_tokens": first_tokens + 10 + 2 * k,
            },
        )
        for k, text in enumerate(replies)
    ]
    return GenericFakeChatModel(messages=iter(messages))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = GenerationSettings(
        task="matrix-climbing",
        candidates=2,
        rounds=2,
        repairs=1,
        record_episodes=2,
        mode="code",
        selection="evaluator",
    )
    run = GenerationRun.create(settings, tmp_path_factory.mktemp("runs"))
    outcome = run.execute(Models(_fake(CODER_REPLIES, 100), _fake(EVALUATOR_REPLIES, 500)))
    assert outcome.status == "succeeded", outcome.reason
    return run.run_dir


@pytest.fixture(scope="module")
def summary(run_dir: Path) -> RunSummary:
    return load_run(run_dir)


@pytest.fixture(scope="module")
def page(run_dir: Path) -> Path:
    return export_html(run_dir)


def _events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "trace.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


# --- the summary ------------------------------------------------------------------------------------


def test_summary_regroups_the_trace_by_round(summary: RunSummary) -> None:
    assert [r.number for r in summary.rounds] == [1, 2]
    r1, r2 = summary.rounds
    assert [(c.id, len(c.attempts), c.ok) for c in r1.candidates] == [("r1-c0", 1, True), ("r1-c1", 2, True)]
    assert [(c.id, len(c.attempts), c.ok) for c in r2.candidates] == [("r2-c0", 1, True), ("r2-c1", 2, False)]
    failed = r2.candidates[1].final
    assert failed.verdict == "failed: runtime" and "nope" in failed.result.message and failed.result.traceback
    assert [a.calls[-1].label for a in r1.candidates[1].attempts] == ["r1-c1-a0", "r1-c1-a1"]
    assert [c.label for c in r2.evaluator_calls] == ["r2-eval0", "r2-eval1"]
    assert r1.decision.chosen == "r1-c0" and r1.decision.evaluation.critiques[0].critique == CRITIQUE
    assert r2.decision.contenders == ["r2-c0", "r1-c0"] and r2.decision.chosen == "r2-c0"
    assert summary.status == "succeeded" and summary.final_choice == "r2-c0"
    assert summary.best_before(2).id == "r1-c0" and summary.best_before(1) is None
    assert "def credit_assignment" in summary.final_source


def test_summary_totals_match_the_trace(run_dir: Path, summary: RunSummary) -> None:
    calls = _events(run_dir, "llm_call")
    times = [e["time"] for e in map(json.loads, (run_dir / "trace.jsonl").read_text().splitlines())]
    totals = summary.totals
    assert totals.llm_calls == len(calls) == len(CODER_REPLIES) + len(EVALUATOR_REPLIES)
    assert totals.llm_errors == 0
    assert totals.input_tokens == sum(c["usage"]["input_tokens"] for c in calls) > 0
    assert totals.output_tokens == sum(c["usage"]["output_tokens"] for c in calls) > 0
    assert totals.llm_latency_s == pytest.approx(sum(c["latency_s"] for c in calls), abs=1e-3)
    assert totals.wall_s == pytest.approx(max(times) - min(times), abs=1e-3)


def test_an_interrupted_run_with_a_failed_call_still_reads(run_dir: Path, tmp_path: Path) -> None:
    """A run killed while the evaluator timed out: no decision, no finish, and a torn last line."""
    lines = (run_dir / "trace.jsonl").read_text().splitlines()
    cut = next(i for i, line in enumerate(lines) if '"label": "r1-eval0"' in line)
    error = {
        "event": "llm_error", "time": json.loads(lines[cut - 1])["time"] + 3, "role": "evaluator",
        "model": "local:x", "label": "r1-eval0", "latency_s": 2.5, "error": "TimeoutError: slow",
        "transient": True,
    }  # fmt: skip
    (tmp_path / "trace.jsonl").write_text("\n".join([*lines[:cut], json.dumps(error), lines[cut][:40]]))
    summary = load_run(tmp_path)
    assert summary.status == "unfinished" and [r.number for r in summary.rounds] == [1]
    assert summary.rounds[0].decision is None
    assert [c.error for c in summary.rounds[0].evaluator_calls] == ["TimeoutError: slow"]
    assert (summary.totals.llm_calls, summary.totals.llm_errors) == (3, 1)
    assert summary.totals.wall_s == pytest.approx(error["time"] - json.loads(lines[0])["time"], abs=1e-3)
    console = Console(record=True, width=200)
    print_trace(tmp_path, console)
    assert "decision: none" in console.export_text()
    html = export_html(tmp_path).read_text()
    assert "not evaluated" in html and "TimeoutError: slow" in html and 'id="weights-plot"' not in html


def test_a_folder_without_a_trace_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TraceNotFoundError, match=r"is not a generation run folder \(no trace\.jsonl\)"):
        load_run(tmp_path)
    assert issubclass(TraceNotFoundError, RunFolderError) and issubclass(TraceNotFoundError, ValueError)


# --- terminal ---------------------------------------------------------------------------------------


def test_print_trace_shows_rounds_candidates_and_decisions(run_dir: Path) -> None:
    console = Console(record=True, width=200)
    print_trace(run_dir, console)
    text = console.export_text()
    for expected in ("Round 1", "Round 2", "r1-c0", "r1-c1", "r2-c0", "r2-c1", "failed: runtime", "KeyError"):
        assert expected in text
    assert "decision (evaluator): r2-c0 from r2-c0, r1-c0" in text
    assert CRITIQUE in text and "use the last action" in text
    assert "succeeded" in text and "9 LLM calls" in text
    assert SCRIPT not in text  # prompts and replies only with --verbose


def test_verbose_prints_prompts_and_replies_as_plain_text(run_dir: Path) -> None:
    console = Console(record=True, width=200)
    print_trace(run_dir, console, verbose=True)
    text = console.export_text()
    assert SCRIPT in text  # printed literally: rich did not read the reply as markup
    assert "Answer with one Python code block" in text  # the coder's system prompt
    assert "no JSON here" in text


# --- HTML -------------------------------------------------------------------------------------------


def test_html_has_no_external_urls(page: Path) -> None:
    html = page.read_text()
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", html, flags=re.IGNORECASE)
    assert links, "expected internal links and the plot's data URI"
    assert all(link.startswith(("#", "data:")) for link in links), links


def test_html_escapes_what_models_wrote(page: Path) -> None:
    html = page.read_text()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>everywhere</b>" not in html and "&lt;b&gt;everywhere&lt;/b&gt;" in html


def test_html_diffs_each_candidate_against_the_previous_best(page: Path) -> None:
    html = page.read_text()
    round_1, round_2 = html.split('id="round-2"')
    assert 'class="diff"' not in round_1
    assert "changes against r1-c0" in round_2
    assert '<span class="add">+    return 1.0 + i + sum(s[&#x27;last_joint_action&#x27;])</span>' in round_2
    assert '<span class="del">-    # &lt;script&gt;' in round_2


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not (CHROMIUM.is_file() and shutil.which(str(CHROMIUM))):
        pytest.fail(f"{CHROMIUM} is missing: install Chromium to check that the HTML export renders")
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"chromium exited with {done.returncode}: {done.stderr[-2000:]}"
    return done


def test_html_renders_in_a_browser(page: Path, tmp_path: Path) -> None:
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    for marker in ('id="round-1"', 'id="round-2"', 'class="decision"', 'id="final"', 'id="weights-plot"'):
        assert marker in dom, marker
    assert dom.count('class="candidate') == 4
    assert re.search(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', dom)
    assert "<script" not in dom.lower()


def test_html_screenshot_is_a_picture(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


# --- CLI --------------------------------------------------------------------------------------------

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def test_cli_show(run_dir: Path) -> None:
    result = runner.invoke(app, ["show", str(run_dir)], env=WIDE, catch_exceptions=False)
    assert result.exit_code == 0
    assert "r2-c1" in result.output and "decision (evaluator)" in result.output


def test_cli_export_writes_html_or_json(run_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(run_dir)], env=WIDE, catch_exceptions=False)
    assert result.exit_code == 0 and (run_dir / "trace.html").is_file()
    out = tmp_path / "deep" / "summary.json"
    result = runner.invoke(app, ["export", str(run_dir), "--no-html", "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0
    assert json.loads(out.read_text())["totals"]["llm_calls"] == 9


@pytest.mark.parametrize("command", ["show", "export"])
def test_cli_missing_folder_is_a_one_line_error(command: str, tmp_path: Path) -> None:
    result = runner.invoke(app, [command, str(tmp_path / "nope")], env=WIDE)
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "no trace.jsonl" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_unreadable_trace_is_a_one_line_error(tmp_path: Path) -> None:
    decision = {"event": "decision", "time": 1.0, "round": 1, "chosen": None, "contenders": [], "source": "?"}
    (tmp_path / "trace.jsonl").write_text(json.dumps(decision) + "\n")
    result = runner.invoke(app, ["show", str(tmp_path)], env=WIDE)
    assert result.exit_code == 2
    assert (
        result.output.startswith("error: ")
        and "line 1: not an event this version reads (decision.source: Input should be" in result.output
    )
    assert len(result.output.strip().splitlines()) == 1
