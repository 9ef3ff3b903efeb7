"""The graph behind the LangGraph API: `langgraph dev` on 127.0.0.1, driven through the SDK's client.

The server is the real one (``langgraph-cli[inmem]``) started from the repository's ``langgraph.json``;
the models are a scripted OpenAI-compatible server on loopback, so nothing leaves the machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from graph_fakes import GOOD, GOOD_OTHER, evaluation
from langgraph_sdk import get_sync_client
from openai_stub import stub_server

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    # Run from a folder of its own: `langgraph dev` keeps its threads and assistants in ./.langgraph_api.
    home = tmp_path_factory.mktemp("langgraph")
    log = home / "server.log"
    env = {**os.environ, "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false"}
    langgraph = Path(sys.executable).parent / "langgraph"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(langgraph), "dev", "--config", str(REPO / "langgraph.json"), "--host", "127.0.0.1",
             "--port", str(port), "--no-browser", "--no-reload"],
            cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process, log)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"langgraph dev exited:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"langgraph dev did not answer within {timeout_s} s:\n{log.read_text()[-3000:]}")


def qllm_config(stub_url: str, runs_dir: Path, **settings: Any) -> dict[str, Any]:
    qllm = {
        "task": "matrix-climbing", "candidates": 2, "rounds": 1, "mode": "code", "selection": "evaluator",
        "record_episodes": 3, "coder": "openai:stub", "evaluator": "openai:stub",
        "coder_base_url": stub_url, "evaluator_base_url": stub_url, "runs_dir": str(runs_dir), **settings,
    }  # fmt: skip
    return {"configurable": {"qllm": qllm}}


def test_a_run_through_the_api_writes_the_same_run_folder_as_qllm_generate(
    server: str, tmp_path: Path
) -> None:
    client = get_sync_client(url=server)
    thread = client.threads.create()
    with stub_server([GOOD, GOOD_OTHER, evaluation(choice=2)]) as stub:
        config = qllm_config(stub.base_url, tmp_path)
        chunks = list(
            client.runs.stream(
                thread["thread_id"], "qllm", input={}, config=config,
                stream_mode=["updates", "custom"], stream_subgraphs=True,
            )
        )  # fmt: skip
    final = client.threads.get_state(thread["thread_id"])["values"]
    assert final["status"] == "succeeded", final
    assert final["best"]["id"] == "r1-c1"  # the evaluator's choice 2
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.endswith(thread["thread_id"])
    made = {p.name for p in run_dir.iterdir()}
    # What `qllm generate` writes, less its own checkpoints (the thread's are the server's).
    assert {
        "settings.json",
        "states.npz",
        "trace.jsonl",
        "tfcaf.py",
        "artifact.json",
        "task_prompt.md",
    } <= made
    assert "checkpoints.sqlite" not in made
    # The API streams the same trace events `qllm generate` prints, from inside the candidates too.
    custom = [c.data for c in chunks if c.event.startswith("custom")]
    assert [e["event"] for e in custom].count("validation") == 2
    assert {"llm_call", "decision", "finished"} <= {e["event"] for e in custom}
    assert any(c.event.startswith("updates") and "evaluate" in c.data for c in chunks)


def test_a_review_through_the_api_waits_and_resumes_with_a_command(server: str, tmp_path: Path) -> None:
    client = get_sync_client(url=server)
    thread = client.threads.create()
    with stub_server([GOOD, GOOD_OTHER, evaluation(choice=2)]) as stub:
        # Settings kept in an assistant, as Studio runs them: the runs name the assistant, not a config.
        assistant = client.assistants.create("qllm", config=qllm_config(stub.base_url, tmp_path, review=True))
        client.runs.wait(thread["thread_id"], assistant["assistant_id"], input={})
        state = client.threads.get_state(thread["thread_id"])
        (waiting,) = [i for task in state["tasks"] for i in task["interrupts"]]
        assert waiting["value"]["chosen"] == "r1-c1" and waiting["value"]["chooser"] == "evaluator"
        answer = {"action": "pick", "candidate": "r1-c0"}
        client.runs.wait(thread["thread_id"], assistant["assistant_id"], command={"resume": answer})
    final = client.threads.get_state(thread["thread_id"])["values"]
    assert final["status"] == "succeeded" and final["best"]["id"] == "r1-c0"
    assert final["decisions"][-1]["source"] == "person"


def test_studio_can_read_and_draw_the_graph(server: str) -> None:
    client = get_sync_client(url=server)
    # The graph's own assistant, which the server makes (other tests add their own).
    (assistant,) = client.assistants.search(graph_id="qllm", metadata={"created_by": "system"})
    schemas = client.assistants.get_schemas(assistant["assistant_id"])
    assert {"candidates", "decisions", "best", "status"} <= set(schemas["state_schema"]["properties"])
    drawn = client.assistants.get_graph(assistant["assistant_id"], xray=True)
    nodes = {node["id"] for node in drawn["nodes"]}
    assert {"trial", "evaluate", "review", "finish", "candidate:write", "candidate:check"} <= nodes


def test_a_thread_keeps_to_its_run_folder_and_a_finished_run_takes_no_new_run(
    server: str, tmp_path: Path
) -> None:
    client = get_sync_client(url=server)
    thread = client.threads.create()["thread_id"]
    with stub_server([GOOD, GOOD_OTHER, evaluation(choice=2)]) as stub:
        config = qllm_config(stub.base_url, tmp_path / "runs", review=True)
        client.runs.wait(thread, "qllm", input={}, config=config)
        elsewhere = qllm_config(stub.base_url, tmp_path / "elsewhere", review=True)
        with pytest.raises(Exception, match=r"ThreadRunError: .* its folder is not under"):
            client.runs.wait(thread, "qllm", command={"resume": {"action": "accept"}}, config=elsewhere)
        assert not (tmp_path / "elsewhere").exists()  # no folder made up for the thread's state
        client.runs.wait(thread, "qllm", command={"resume": {"action": "accept"}}, config=config)
        assert client.threads.get_state(thread)["values"]["status"] == "succeeded"
        with pytest.raises(Exception, match=r"ThreadRunError: the run of thread .* has finished"):
            client.runs.wait(thread, "qllm", input={}, config=config)
    assert len(list((tmp_path / "runs").iterdir())) == 1
