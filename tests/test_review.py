"""A person in the loop (`qllm generate --review`): the run pauses after each round, and the answer counts.

The graph tests answer reviews with a function; the CLI tests type the answers into `qllm generate`
against a scripted OpenAI-compatible server, and one kills the command while it waits for an answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from graph_fakes import GOOD, GOOD_OTHER, evaluation, scripted, settings
from openai_stub import Slow, stub_server
from typer.testing import CliRunner

from qllm.agents import GenerationRun, Models, RunStatus
from qllm.agents import run as run_module
from qllm.agents.review import ReviewAction, ReviewAnswer, ReviewRequest, read_answer
from qllm.agents.run import ReviewPending
from qllm.agents.trace import DecisionEvent, read_events
from qllm.cli import app
from qllm.cli.review import parse_decision

runner = CliRunner()


def reviewed_run(tmp_path: Path, rounds: int = 2) -> GenerationRun:
    return GenerationRun.create(settings(review=True, rounds=rounds, early_stop=False), tmp_path)


def decisions(run: GenerationRun) -> list[DecisionEvent]:
    return [e for e in read_events(run.run_dir / "trace.jsonl") if isinstance(e, DecisionEvent)]


def test_a_reviewed_run_waits_after_the_round_and_the_checkpoint_holds_the_review(tmp_path: Path) -> None:
    run = reviewed_run(tmp_path)
    models = Models(scripted([GOOD, GOOD_OTHER]), scripted([evaluation(choice=2, tips="reward the mover")]))
    updates = list(run.stream(models))

    assert isinstance(updates[-1], ReviewPending)
    request = updates[-1].request
    assert (request.round, request.chosen, request.chooser) == (1, "r1-c1", "evaluator")
    assert request.candidate_ids() == ["r1-c0", "r1-c1"] and request.tips == "reward the mover"
    assert len(request.contenders[0].mean_weights) == 2  # measured weights, one per agent
    # A fresh object over the folder (as after a kill) finds the same pending review.
    reopened = GenerationRun.open(run.run_dir).outcome()
    assert reopened.status == RunStatus.RUNNING and reopened.pending == request


def test_a_person_picks_another_candidate_and_edits_the_tips(tmp_path: Path) -> None:
    run = reviewed_run(tmp_path)
    coder = scripted([GOOD, GOOD_OTHER, GOOD, GOOD])
    evaluator = scripted([evaluation(choice=2), evaluation(choice=1)])
    answers = iter(
        [
            ReviewAnswer(action=ReviewAction.PICK, candidate="r1-c0", tips="favour agent 0"),
            ReviewAnswer(action=ReviewAction.ACCEPT),
        ]
    )
    outcome = run.execute(Models(coder, evaluator), reviewer=lambda request: next(answers))

    assert outcome.status == RunStatus.SUCCEEDED
    assert "favour agent 0" in coder.prompts[2]  # the round-2 drafts got the person's tips
    person = [d for d in decisions(run) if d.source == "person"]
    assert [(d.round, d.chosen) for d in person] == [(1, "r1-c0"), (2, outcome.state.best.id)]
    assert "a person picked r1-c0 over the evaluator's r1-c1" in person[0].note
    shown = runner.invoke(app, ["trace", "show", str(run.run_dir)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "decision (evaluator): r1-c1" in shown.output
    assert "review" in shown.output and "r1-c0: a person picked r1-c0" in shown.output


def test_a_person_stops_the_run_with_the_best_so_far(tmp_path: Path) -> None:
    run = reviewed_run(tmp_path, rounds=3)
    models = Models(scripted([GOOD, GOOD_OTHER]), scripted([evaluation(choice=1)]))
    outcome = run.execute(models, reviewer=lambda request: ReviewAnswer(action=ReviewAction.STOP))

    assert outcome.status == RunStatus.SUCCEEDED and outcome.state.best.id == "r1-c0"
    assert {c.round for c in outcome.state.candidates} == {1}  # no second round was drafted
    assert decisions(run)[-1].note == "a person stopped the run with the best so far"


def test_an_answer_the_run_cannot_use_is_asked_for_again_with_the_reason(tmp_path: Path) -> None:
    run = reviewed_run(tmp_path, rounds=1)
    seen: list[ReviewRequest] = []
    answers = iter([ReviewAnswer(action=ReviewAction.PICK, candidate="r9-c9"), ReviewAnswer(action="accept")])

    def reviewer(request: ReviewRequest) -> ReviewAnswer:
        seen.append(request)
        return next(answers)

    outcome = run.execute(Models(scripted([GOOD, GOOD_OTHER]), scripted([evaluation()])), reviewer=reviewer)
    assert outcome.status == RunStatus.SUCCEEDED
    assert [r.problem for r in seen] == ["", "pick needs one of r1-c0, r1-c1, got 'r9-c9'"]


def test_an_api_answer_that_is_not_an_answer_is_refused_with_the_reason(tmp_path: Path) -> None:
    run = reviewed_run(tmp_path, rounds=1)
    models = Models(scripted([GOOD, GOOD_OTHER]), scripted([evaluation()]))
    (request,) = [u.request for u in run.stream(models) if isinstance(u, ReviewPending)]
    assert read_answer({"action": "maybe"}, request)[1].startswith("not an answer (action:")
    assert read_answer({"action": "pick"}, request) == (None, "pick needs one of r1-c0, r1-c1, got None")
    assert read_answer({"action": "stop"}, request)[0] == ReviewAnswer(action=ReviewAction.STOP)


def test_typed_decisions_parse_and_nonsense_is_refused() -> None:
    assert parse_decision("").action == ReviewAction.ACCEPT
    assert parse_decision("p r1-c1") == ReviewAnswer(action=ReviewAction.PICK, candidate="r1-c1")
    assert parse_decision("STOP").action == ReviewAction.STOP
    for text in ("pick", "accept r1-c0", "maybe", "pick a b"):
        try:
            parse_decision(text)
        except ValueError:
            continue
        raise AssertionError(f"{text!r} was accepted")


# --- at the terminal -------------------------------------------------------------------------------


def stub_flags(url: str) -> list[str]:
    return ["--coder", "openai:stub", "--evaluator", "openai:stub", "--coder-base-url", url,
            "--evaluator-base-url", url]  # fmt: skip


def generate_args(url: str, runs: Path) -> list[str]:
    return ["generate", "--task", "matrix-climbing", *stub_flags(url), "-k", "2", "-l", "2",
            "--no-early-stop", "--review", "--runs-dir", str(runs)]  # fmt: skip


def test_generate_review_at_the_terminal_and_again_after_input_ends(tmp_path: Path) -> None:
    script = [GOOD, GOOD_OTHER, evaluation(choice=2), GOOD, GOOD, evaluation(choice=1)]
    with stub_server(script) as server:
        first = runner.invoke(app, generate_args(server.base_url, tmp_path), input="", env={"COLUMNS": "200"})
        assert first.exit_code == 1, first.output
        said = first.output.replace("\n", " ")
        assert "round 1: evaluator picked r1-c1" in said and "waits for its review" in said
        (run_dir,) = tmp_path.iterdir()
        resumed = runner.invoke(
            app, ["generate", "--resume", str(run_dir)], input="pick r1-c0\nuse agent 0\n\n\n",
            env={"COLUMNS": "200"},
        )  # fmt: skip
        requests = server.requests
    assert resumed.exit_code == 0, resumed.output
    assert "round 1: evaluator picked r1-c1" in resumed.output  # asked again
    assert "use agent 0" in requests[3]["messages"][-1]["content"]  # round 2's first draft
    assert (run_dir / "tfcaf.py").is_file()


def test_a_run_killed_while_it_waits_for_a_review_asks_again_on_resume(tmp_path: Path) -> None:
    script = [GOOD, GOOD_OTHER, evaluation(choice=2), GOOD, GOOD, evaluation(choice=1)]
    qllm = Path(sys.executable).parent / "qllm"
    with stub_server(script) as server:
        process = subprocess.Popen(
            [str(qllm), *generate_args(server.base_url, tmp_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        try:
            output = _read_until(process, "Decision", timeout_s=120)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        assert "r1-c1" in output
        (run_dir,) = tmp_path.iterdir()
        assert json.loads((run_dir / "settings.json").read_text())["review"] is True
        resumed = runner.invoke(
            app, ["generate", "--resume", str(run_dir)], input="accept\n\naccept\n\n", env={"COLUMNS": "200"}
        )
    assert resumed.exit_code == 0, resumed.output
    assert "round 1: evaluator picked r1-c1" in resumed.output and "succeeded" in resumed.output


def test_ctrl_c_during_a_call_ends_with_the_resume_command_and_resume_finishes(tmp_path: Path) -> None:
    qllm = Path(sys.executable).parent / "qllm"
    args = ["generate", "--task", "matrix-climbing", "-k", "1", "-l", "1", "--runs-dir", str(tmp_path)]
    with stub_server([Slow(GOOD, 60)]) as server:
        process = subprocess.Popen(
            [str(qllm), *args, *stub_flags(server.base_url)], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        try:
            _read_until(process, "Run folder", timeout_s=120)
            deadline = time.monotonic() + 120
            while not server.requests:  # the coder's call has arrived, and takes a minute to answer
                assert time.monotonic() < deadline, "the coder was never called"
                time.sleep(0.2)
            process.send_signal(signal.SIGINT)
            output, _ = process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == 130, output.decode()[-2000:]
    assert b"interrupted; resume with: qllm generate --resume" in output
    (run_dir,) = tmp_path.iterdir()
    with stub_server([GOOD, evaluation()]) as server:
        settings = json.loads((run_dir / "settings.json").read_text())
        settings["coder_base_url"] = settings["evaluator_base_url"] = server.base_url
        (run_dir / "settings.json").write_text(json.dumps(settings))
        resumed = runner.invoke(app, ["generate", "--resume", str(run_dir)], env={"COLUMNS": "200"})
    assert resumed.exit_code == 0 and (run_dir / "tfcaf.py").is_file(), resumed.output


# The stream Ctrl-C abandons is left to the process's end (the CLI exits at once); in tests, garbage
# collection finds it still open and says so.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_while_the_listener_prints_ends_the_run_without_waiting_for_a_model_call_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The graph streams events while a node's model call runs on a thread. A Ctrl-C that lands while the
    # listener prints one used to close the stream the way an error does, which waits for that call.
    answered = threading.Event()

    async def events_during_a_call() -> AsyncIterator[object]:
        call = asyncio.get_running_loop().run_in_executor(None, answered.wait)  # a model call, unanswered
        try:
            yield "an event"
        finally:
            await call  # as the graph's stream, closed, waits for its nodes in flight

    def streamed(_: GenerationRun, *_args: object) -> Iterator[object]:
        return run_module._driven(events_during_a_call())

    def ctrl_c(_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(GenerationRun, "stream", streamed)
    raised: list[BaseException] = []

    def execute() -> None:
        try:
            GenerationRun(tmp_path, settings()).execute(listener=ctrl_c)
        except KeyboardInterrupt as exc:
            raised.append(exc)

    running = threading.Thread(target=execute, daemon=True)
    running.start()
    try:
        running.join(timeout=30)
        assert not running.is_alive(), "the run waited for the model call after Ctrl-C"
        assert raised, "the Ctrl-C did not reach the caller"
    finally:
        answered.set()
        running.join(timeout=30)


# Run in a child process: the test sends Ctrl-C to the process it runs in.
INSIDE_THE_GRAPHS_CODE = """
import asyncio, os, signal, threading, time
from qllm.agents import run

answered = threading.Event()
threading.Timer(20.0, answered.set).start()  # without the fix, the stream ends when the call answers

async def graph_code():
    call = asyncio.get_running_loop().run_in_executor(None, answered.wait)  # a model call in flight
    try:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, while the main thread runs the graph's code
        for _ in range(10):
            await asyncio.sleep(0)
        yield "an event"
    except BaseException:
        await call  # as LangGraph's task executor waits for its tasks in flight
        raise

began = time.monotonic()
try:
    list(run._driven(graph_code()))
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - began:.1f} s", flush=True)
os._exit(0)
"""


def test_ctrl_c_inside_the_graphs_code_ends_the_stream_without_waiting_for_its_tasks() -> None:
    # Ctrl-C used to raise wherever the main thread was. Inside the graph's coroutines, LangGraph's task
    # executor catches it on the way out and waits for its tasks in flight (a model call) before it
    # lets it through: the CLI sat there for the length of the call.
    child = subprocess.run(
        [sys.executable, "-c", INSIDE_THE_GRAPHS_CODE],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    interrupted = re.search(r"interrupted after ([\d.]+) s", child.stdout)
    assert interrupted, child.stdout + child.stderr
    seconds = float(interrupted.group(1))
    assert seconds < 5, f"the stream waited {seconds} s for the call in flight after Ctrl-C"


def _read_until(process: subprocess.Popen[bytes], marker: str, timeout_s: float) -> str:
    """What ``process`` printed up to ``marker`` (a prompt has no newline: read what is there)."""
    assert process.stdout is not None
    seen, deadline = b"", time.monotonic() + timeout_s
    while marker.encode() not in seen:
        assert time.monotonic() < deadline and process.poll() is None, f"no {marker!r} in: {seen[-2000:]}"
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            seen += os.read(process.stdout.fileno(), 65536)
    return seen.decode()
