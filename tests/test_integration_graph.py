"""The real local model through the real graph, on a small task and a tiny budget (runs in CI)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from qllm.agents import GenerationRun, GenerationSettings, RunStatus
from qllm.agents.trace import read_events
from qllm.envs.tasks import make_env
from qllm.llm import local
from qllm.rl.tfcaf import load_tfcaf


@pytest.fixture
def local_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[local.ServerState]:
    """The installed model on a spare port, with a private state file (a user's server is untouched)."""
    model = local.model_path()
    assert model.is_file(), "scripts/setup.sh installs the model; run it first"
    monkeypatch.setenv("QLLM_CACHE", str(tmp_path / "cache"))
    with socket.socket() as s:
        s.bind((local.HOST, 0))
        port = s.getsockname()[1]
    state = local.serve(port=port, model=model)
    try:
        yield state
    finally:
        local.stop()


@pytest.mark.real_model
@pytest.mark.integration
def test_the_local_model_writes_a_validated_function_for_the_climbing_game(
    tmp_path: Path, local_server: local.ServerState
) -> None:
    settings = GenerationSettings(
        task="matrix-climbing", candidates=2, rounds=1, repairs=2, record_episodes=5
    )
    outcome = GenerationRun.create(settings, tmp_path / "runs").execute()

    calls = [e for e in read_events(outcome.run_dir / "trace.jsonl") if e.event == "llm_call"]
    assert calls and all(c.model.startswith("local:") and c.usage.output_tokens > 0 for c in calls)
    # Sampling is seeded per call, so this run is reproducible on a given build of the model server.
    assert outcome.status == RunStatus.SUCCEEDED, outcome.reason
    assert outcome.artifact is not None
    assert load_tfcaf(outcome.artifact, make_env("matrix-climbing").info).linear_in_q


@pytest.mark.real_model
@pytest.mark.integration
def test_the_local_model_writes_a_validated_function_for_a_plugged_in_task(
    tmp_path: Path, local_server: local.ServerState
) -> None:
    """The installed example plugin's task, from its declared schema alone: prompts, spec quantities and
    validation all come from the plugin's declaration."""
    settings = GenerationSettings(
        task="coordgrid-5x5-2ag", candidates=2, rounds=1, repairs=2, record_episodes=5
    )
    outcome = GenerationRun.create(settings, tmp_path / "runs").execute()

    assert outcome.status == RunStatus.SUCCEEDED, outcome.reason
    assert outcome.artifact is not None
    assert "goal_position" in outcome.artifact.read_text()  # its named state is the declared schema's
    assert load_tfcaf(outcome.artifact, make_env("coordgrid-5x5-2ag").info).linear_in_q
