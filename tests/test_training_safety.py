"""Training never fails silently: credit functions that pass validation and misbehave later stop the run
with one clear line, NaN anywhere in an update stops it, and no generated code linear in Q ever runs in
the trainer's process.

The misbehaving functions are test data (``tests/sandbox_corpus/training/``), run only through qllm: the
ones linear in Q through the sandbox's credit jobs, the others in-process under RestrictedPython.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import qllm.sandbox.restricted
from qllm.envs.episodes import Episodes
from qllm.rl import preset, train
from qllm.rl.agent import RNNAgent
from qllm.rl.collector import Ask, AskSchedule, Collected, ProcessCollector
from qllm.rl.credit import SandboxCredit
from qllm.rl.learner import QLearner
from qllm.rl.mixers import MIXERS, QMIX
from qllm.rl.train import CHECKPOINT_DIR, FINAL_MODEL, TrainingError, TrainResult, checkpoints
from qllm.sandbox import load_credit_function

CORPUS = Path(__file__).parent / "sandbox_corpus" / "training"
VDN = "def credit_assignment(agents_q, state):\n    return agents_q.sum(dim=1, keepdim=True)\n"
SHORT = {
    "steps": 600, "checkpoint_interval": 200, "eval_interval": 300, "eval_episodes": 2, "log_interval": 100,
    "batch_size": 4, "buffer_size": 64, "envs": 2, "target_update_interval": 4,
}  # fmt: skip


def train_with_vdn_credit(tmp_path: Path, **overrides: Any) -> TrainResult:
    """A short run of the qllm preset on matrix-climbing, whose credit function is VDN's sum."""
    path = tmp_path / "vdn.py"
    path.write_text(VDN)
    config = preset("qllm", task="matrix-climbing", tfcaf=str(path), **{**SHORT, **overrides})
    return train(config, runs_dir=tmp_path / "runs")


def qllm_train(*args: str) -> subprocess.CompletedProcess[str]:
    """`qllm train ...` as a user runs it; a hang fails the test after a minute."""
    command = [str(Path(sys.executable).parent / "qllm"), "train", *args]
    environment = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment, check=False)


# --- misbehaving credit functions, from the command line -------------------------------------------


def test_a_function_that_hangs_on_large_batches_stops_training_in_the_sandbox(tmp_path: Path) -> None:
    # 8 environments: the first rollout brings ~400 new states, more than validation ever sent.
    start = time.monotonic()
    result = qllm_train(
        "--task", "lbf-8x8-2p-2f", "--mixer", "qllm", "--tfcaf", str(CORPUS / "loops_on_large_batches.py"),
        "--steps", "3000", "--credit-call-budget", "2", "--runs-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert time.monotonic() - start < 60
    error = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert "training stopped at step 0 (episodes 0-7, mixer tfcaf)" in error[0]
    assert "in the sandbox" in error[0] and "timeout" in error[0]
    (run,) = tmp_path.iterdir()
    assert not (run / FINAL_MODEL).exists()


def test_a_function_that_turns_nan_mid_run_stops_training_with_exit_1(tmp_path: Path) -> None:
    result = qllm_train(
        "--task", "matrix-climbing", "--mixer", "qllm", "--tfcaf", str(CORPUS / "nan_from_40th_call.py"),
        "--steps", "20000", "--checkpoint-interval", "1000", "--runs-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    (error,) = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert "returned NaN or infinite values" in error and "the last good checkpoint is step_" in error
    (run,) = tmp_path.iterdir()
    assert not (run / FINAL_MODEL).exists() and checkpoints(run)
    assert "nan" not in (run / "metrics.csv").read_text().lower()


def test_an_in_process_function_over_its_time_budget_stops_training(tmp_path: Path) -> None:
    config = preset(
        "qllm", task="matrix-climbing", tfcaf=str(CORPUS / "loops_on_large_batches_not_linear.py"),
        credit_call_budget_s=1.0, **{**SHORT, "batch_size": 16},  # 16 x 26 states: more than validation's
    )  # fmt: skip
    with pytest.raises(TrainingError, match="per-call budget"):
        train(config, runs_dir=tmp_path)


def test_nan_weights_from_the_sandbox_stop_training(tmp_path: Path) -> None:
    config = preset(
        "qllm", task="lbf-8x8-2p-2f", tfcaf=str(CORPUS / "nan_on_large_batches.py"), **{**SHORT, "envs": 8}
    )
    with pytest.raises(
        TrainingError, match=r"step 0 .*in the sandbox .*non_finite: 404 of 404 outputs are NaN"
    ):
        train(config, runs_dir=tmp_path)


def test_a_linear_function_that_turns_nan_on_a_later_call_stops_training(tmp_path: Path) -> None:
    # One session answers every batch (one episode in each of 2 environments, each bringing new states),
    # so a function that changes as it is called is caught when it does: at its 12th batch.
    config = preset(
        "qllm",
        task="lbf-8x8-2p-2f",
        tfcaf=str(CORPUS / "nan_on_a_later_call_linear.py"),
        **{**SHORT, "steps": 2000},
    )
    stopped = r"\(episodes 22-23, mixer tfcaf\): .*in the sandbox .*non_finite"
    with pytest.raises(TrainingError, match=stopped):
        train(config, runs_dir=tmp_path)


# --- the linear path runs no generated code in this process ----------------------------------------


def test_a_function_linear_in_q_never_runs_in_the_trainers_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(source: str) -> None:
        raise AssertionError("generated code was compiled in the trainer's process")

    # Every in-process load of a candidate compiles it here first; the sandbox worker is another process.
    monkeypatch.setattr(qllm.sandbox.restricted, "compile_candidate", refuse)
    result = train_with_vdn_credit(tmp_path)
    assert result.t_env >= 600 and (result.run_dir / FINAL_MODEL).exists()


def test_a_batchs_credit_is_computed_while_the_next_batch_is_collected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    submit, result, credit = ProcessCollector.submit, ProcessCollector.result, SandboxCredit.__call__

    def recorded_submit(collector: ProcessCollector, *request: Any) -> None:
        events.append("ask for the next batch")
        submit(collector, *request)

    def recorded_result(collector: ProcessCollector) -> Collected:
        events.append("take a batch")
        return result(collector)

    def recorded_credit(credit_function: SandboxCredit, states: torch.Tensor) -> torch.Tensor:
        events.append("credit")
        return credit(credit_function, states)

    monkeypatch.setattr(ProcessCollector, "submit", recorded_submit)
    monkeypatch.setattr(ProcessCollector, "result", recorded_result)
    monkeypatch.setattr(SandboxCredit, "__call__", recorded_credit)
    # Asked for after the update's unroll instead, the next batch is collected beside the backward pass,
    # and the credit beside the unroll (the test below).
    monkeypatch.setattr(AskSchedule, "ask", lambda schedule: Ask.BEFORE_UPDATE)
    train_with_vdn_credit(tmp_path)
    # Each batch is taken, the next one asked for, and only then its credit computed (a sandbox call), so
    # the collector collects meanwhile; the last batch has none after it.
    credit_calls = [i for i, event in enumerate(events) if event == "credit"]
    assert len(credit_calls) == events.count("take a batch") > 10
    assert all(events[i - 2 : i] == ["take a batch", "ask for the next batch"] for i in credit_calls[:-1])


def test_the_sandbox_computes_the_new_states_credit_while_the_learner_unrolls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unrolled = threading.Event()
    saw_the_unroll: list[bool] = []
    credit, unroll, update = SandboxCredit.__call__, RNNAgent.unroll, QLearner.update

    def waiting_credit(credit_function: SandboxCredit, states: torch.Tensor) -> torch.Tensor:
        # The first batch is too few episodes to learn from: no update follows it. Every later call waits
        # for the update's unroll, which comes after it only when the credit is computed in line (then
        # the test fails at its first wait, without waiting again).
        if saw_the_unroll or credit_function.calls:
            saw_the_unroll.append(all(saw_the_unroll) and unrolled.wait(timeout=10.0))
        return credit(credit_function, states)

    def signalling_unroll(agent: RNNAgent, inputs: torch.Tensor) -> torch.Tensor:
        unrolled.set()
        return unroll(agent, inputs)

    def one_update(learner: QLearner, *args: Any) -> Any:
        try:
            return update(learner, *args)
        finally:
            unrolled.clear()  # the next batch's credit waits for the next update's unroll

    monkeypatch.setattr(SandboxCredit, "__call__", waiting_credit)
    monkeypatch.setattr(RNNAgent, "unroll", signalling_unroll)
    monkeypatch.setattr(QLearner, "update", one_update)
    train_with_vdn_credit(tmp_path)
    assert len(saw_the_unroll) > 10 and all(saw_the_unroll)


def test_each_update_mixes_with_the_credit_of_the_states_it_learns_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = (
        "import torch\n\n\ndef credit_assignment(agents_q, state):\n"
        "    w = torch.softmax(state[:, :2], dim=1) * 2\n"
        "    return (w * agents_q).sum(dim=1, keepdim=True) + state[:, 2:3]\n"
    )
    mixed: list[tuple[torch.Tensor, torch.Tensor]] = []
    mixing = QLearner._mixing

    def recorded_mixing(learner: QLearner, batch: Episodes, credit: Any) -> torch.Tensor:
        mixed.append((batch.state, mixing(learner, batch, credit)))
        return mixed[-1][1]

    monkeypatch.setattr(QLearner, "_mixing", recorded_mixing)
    path = tmp_path / "credit.py"
    path.write_text(source)
    config = preset("qllm", task="lbf-5x5-2p-1f", tfcaf=str(path), **{**SHORT, "buffer_size": 6})
    train(config, runs_dir=tmp_path)
    # Each update draws 4 of at most 6 episodes, 2 of them new, in slots that held others before (the
    # ring wraps from the fourth batch on): each state's credit must be its own, not a slot's earlier value.
    function = load_credit_function(source).function  # the test's own check, in the test's process
    assert len(mixed) >= 6
    for states, credit in mixed:
        rows, q = states.reshape(-1, states.shape[-1]), torch.randn(states.shape[0] * states.shape[1], 2)
        expected = function(q, rows)
        assert credit.shape == (*states.shape[:2], 3)
        got = (credit.reshape(-1, 3)[:, :2] * q).sum(1, keepdim=True) + credit.reshape(-1, 3)[:, 2:]
        assert torch.allclose(got, expected, atol=1e-5)


def test_the_sandbox_is_closed_on_a_thread_of_its_own_before_training_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[tuple[str, SandboxCredit]] = []
    close = SandboxCredit.close

    def recorded_close(credit: SandboxCredit) -> None:
        close(credit)
        closed.append((threading.current_thread().name, credit))

    monkeypatch.setattr(SandboxCredit, "close", recorded_close)
    train_with_vdn_credit(tmp_path, steps=100)
    ((thread_name, credit),) = closed  # closed, and by the time train() returned
    assert thread_name == "qllm-close-meanwhile" and not credit.sandbox._worker.alive


def test_a_sandbox_that_fails_to_close_fails_the_run_after_its_wrap_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    close = SandboxCredit.close

    def failing_close(credit: SandboxCredit) -> None:
        close(credit)
        raise OSError("the sandbox's folder could not be removed")

    monkeypatch.setattr(SandboxCredit, "close", failing_close)
    with pytest.raises(OSError, match="could not be removed"):
        train_with_vdn_credit(tmp_path, steps=100)
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / FINAL_MODEL).exists()  # the run itself was saved meanwhile


def test_credit_is_the_functions_own_and_each_state_goes_to_the_sandbox_once() -> None:
    source = (
        "import torch\n\n\ndef credit_assignment(agents_q, state):\n"
        "    w = torch.softmax(state[:, :2], dim=1) * 2\n"
        "    return (w * agents_q).sum(dim=1, keepdim=True) + state[:, 2:3]\n"
    )
    credit = SandboxCredit(source, n_agents=2, monotonic=True)
    try:
        states = torch.rand(10, 4)
        values = credit(states)
        again = credit(torch.cat([states, states]).reshape(2, 10, 4))
        assert credit.calls == 1  # the same states again: nothing sent to the sandbox
    finally:
        credit.close()
    q = torch.randn(10, 2)
    function = load_credit_function(source).function  # the test's own check, in the test's process
    expected = function(q, states)
    assert torch.allclose((values[:, :2] * q).sum(1, keepdim=True) + values[:, 2:], expected, atol=1e-6)
    assert torch.equal(again[1], values)


# --- non-finite updates, and resuming --------------------------------------------------------------


class TurnsNaN(QMIX):
    """QMIX until its 15th forward call (the 8th update), NaN from then on."""

    calls = 0

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        TurnsNaN.calls += 1
        q_tot = super().forward(agent_qs, states)
        return q_tot * float("nan") if TurnsNaN.calls >= 15 else q_tot


def test_a_mixer_that_turns_nan_stops_at_that_update_and_the_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(MIXERS, "qmix", TurnsNaN)
    TurnsNaN.calls = 0
    config = preset("qmix", task="matrix-climbing", **SHORT)
    with pytest.raises(TrainingError, match=r"stopped at step \d+ .*mixer qmix\): Q_tot is NaN") as failure:
        train(config, runs_dir=tmp_path)
    (run,) = tmp_path.iterdir()
    assert not (run / FINAL_MODEL).exists()
    saved = checkpoints(run)
    assert saved and saved[-1].name in str(failure.value)
    assert "nan" not in (run / "metrics.csv").read_text().lower()
    monkeypatch.setitem(MIXERS, "qmix", QMIX)  # the cause fixed
    resumed = train(config, resume=run)
    assert resumed.t_env >= 600 and (run / FINAL_MODEL).exists()


def test_resuming_with_a_replaced_function_relabels_the_stored_credit(tmp_path: Path) -> None:
    path = tmp_path / "credit.py"
    path.write_text(VDN)
    config = preset("qllm", task="matrix-climbing", tfcaf=str(path), **SHORT)
    run = train(config.replace(steps=300), runs_dir=tmp_path / "runs").run_dir
    path.write_text(VDN.replace("agents_q.sum", "(2 * agents_q).sum"))  # the file replaced
    train(config, resume=run)
    latest = torch.load(checkpoints(run)[-1], weights_only=False)
    stored = latest["buffer"]["credit"]
    filled_states = torch.cat([torch.ones(stored.shape[0], 1), latest["buffer"]["filled"]], dim=1).bool()
    assert torch.equal(stored[filled_states][:, :2], torch.full_like(stored[filled_states][:, :2], 2.0))
    assert (run / CHECKPOINT_DIR).is_dir()
