"""Collecting ahead in a second process: the same episodes as in line for the same weights, the weights as
they were when the batch was asked for, an environment's error raised as collecting in line raises it, a
collector that dies stopping training with one clear line, and either leaving no process behind and the
checkpoints to resume from; asking for each batch before the update or after its unroll, the same run,
and the faster of the two chosen by timing."""

from __future__ import annotations

import copy
import gc
import itertools
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import qllm.rl.learner
import qllm.rl.runner
from qllm.envs import MultiAgentEnv, TimeStep, task_info
from qllm.rl import preset, train
from qllm.rl.agent import RNNAgent, build_agent
from qllm.rl.collector import (
    Ask,
    AskSchedule,
    Collected,
    InlineCollector,
    ProcessCollector,
    _Evaluate,
    _Evaluated,
    _Failure,
    _Reply,
    _Request,
    _Server,
    _TakeEvaluation,
)
from qllm.rl.config import TrainConfig
from qllm.rl.evaluation import Evaluator
from qllm.rl.learner import QLearner, gradient_step
from qllm.rl.logger import METRICS_FILE, read_metrics, series
from qllm.rl.runner import EpsilonGreedy, ParallelRunner
from qllm.rl.train import FINAL_MODEL, RunError, TrainingError, checkpoints

TASK = "lbf-5x5-2p-1f"
SHORT = {
    "steps": 600, "checkpoint_interval": 200, "eval_interval": 300, "eval_episodes": 2, "log_interval": 100,
    "batch_size": 4, "buffer_size": 64, "envs": 2, "target_update_interval": 4,
}  # fmt: skip
CPU = torch.device("cpu")


def in_line_collector(generator: torch.Generator) -> InlineCollector:
    return InlineCollector(ParallelRunner(TASK, 2), generator, CPU, Evaluator(TASK, 2, CPU))


def assert_same_episodes(a: Collected, b: Collected) -> None:
    assert a.stats == b.stats
    for name in ("obs", "state", "actions", "reward", "terminated", "filled", "avail_actions"):
        assert torch.equal(getattr(a.episodes, name), getattr(b.episodes, name)), name


def test_a_process_collector_collects_what_an_inline_one_does() -> None:
    config = preset("qmix", task=TASK, envs=2)
    torch.manual_seed(0)
    agent = build_agent(config, ParallelRunner(TASK, 1).info)
    in_line_generator, ahead_generator = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    in_line = in_line_collector(in_line_generator)
    ahead = ProcessCollector(config, ahead_generator)
    try:
        for seeds in ([1, 2], [3, 4]):  # twice: the generator's state comes back with each batch
            in_line.submit(agent, seeds, EpsilonGreedy(0.3))
            ahead.submit(agent, seeds, EpsilonGreedy(0.3))
            assert_same_episodes(ahead.result(), in_line.result())
            assert torch.equal(ahead_generator.get_state(), in_line_generator.get_state())
    finally:
        in_line.close()
        ahead.close()


def test_the_process_collector_acts_with_the_weights_as_they_were_when_asked() -> None:
    config = preset("qmix", task=TASK, envs=2)
    agent = build_agent(config, ParallelRunner(TASK, 1).info)
    as_asked = copy.deepcopy(agent)
    ahead = ProcessCollector(config, torch.Generator().manual_seed(5))
    in_line = in_line_collector(torch.Generator().manual_seed(5))
    greedy = EpsilonGreedy(0.0)  # no random draws: the actions are the weights' alone
    try:
        ahead.submit(agent, [1, 2], greedy)
        with torch.no_grad():  # what the update does meanwhile
            for parameter in agent.parameters():
                parameter.copy_(torch.randn_like(parameter))
        in_line.submit(as_asked, [1, 2], greedy)
        assert_same_episodes(ahead.result(), expected := in_line.result())
        in_line.submit(agent, [1, 2], greedy)  # the weights after the change act otherwise
        assert not torch.equal(in_line.result().episodes.actions, expected.episodes.actions)
    finally:
        ahead.close()
        in_line.close()


def favouring(agent: RNNAgent, action: int) -> RNNAgent:
    """``agent`` with outputs that make ``action`` every agent's greedy choice, whatever it sees."""
    with torch.no_grad():
        agent.fc2.weight.zero_()
        agent.fc2.bias.copy_(torch.nn.functional.one_hot(torch.tensor(action), agent.fc2.out_features))
    return agent


def test_the_process_collector_evaluates_the_weights_as_begun_while_batches_come_and_go() -> None:
    task = "matrix-climbing"  # one step: the joint action's payoff is the return
    config = preset("qmix", task=task, envs=2, eval_episodes=4)
    evaluator = Evaluator(task, 4, CPU)
    agent = favouring(build_agent(config, task_info(task)), 0)
    expected = evaluator.evaluate(agent)
    ahead = ProcessCollector(config, torch.Generator().manual_seed(5))
    try:
        ahead.start_evaluation(agent)
        favouring(agent, 2)  # the updates that follow change the weights
        assert evaluator.evaluate(agent) != expected  # ... and what they evaluate to
        ahead.submit(agent, [1, 2], EpsilonGreedy(0.0))
        evaluation = ahead.evaluation()  # taken while a batch is still being collected
        batch = ahead.result()
    finally:
        ahead.close()
        evaluator.close()
    assert evaluation == expected
    assert torch.all(batch.episodes.actions[:, 0] == 2)  # acting with the weights it was asked with


def batch_request(agent: RNNAgent, epsilon: float) -> _Request:
    """What the parent sends the child for a batch of two episodes."""
    return _Request(agent.state_dict(), [1, 2], EpsilonGreedy(epsilon), torch.Generator().get_state())


def test_the_childs_evaluation_keeps_its_weights_while_batches_are_collected_between_its_steps() -> None:
    task = "mpe-spread-3"  # 25 steps an episode: the evaluation is played in many slices
    config = preset("qmix", task=task, envs=2, eval_episodes=2)
    evaluator, server = Evaluator(task, 2, CPU), _Server(config)
    agent = favouring(build_agent(config, task_info(task)), 1)
    expected = evaluator.evaluate(agent)
    server.answer(_Evaluate({name: tensor.clone() for name, tensor in agent.state_dict().items()}))
    for _ in range(5):  # part of the way, as between two batches
        server.step_evaluation()
    favouring(agent, 2)
    assert evaluator.evaluate(agent) != expected  # the later weights evaluate otherwise
    batch = server.answer(
        _Request(agent.state_dict(), [1, 2], EpsilonGreedy(0.0), torch.Generator().get_state())
    )
    assert isinstance(batch, _Reply) and bool((batch.collected.episodes.actions == 2).all())
    assert server.answer(_TakeEvaluation()) == _Evaluated(expected)


def test_an_evaluation_that_fails_in_the_child_is_answered_when_taken_and_batches_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = preset("qmix", task=TASK, envs=2, eval_episodes=2)
    server = _Server(config)
    broken = server.evaluator.runner.envs[0]
    monkeypatch.setattr(broken, "step", lambda actions: (_ for _ in ()).throw(RuntimeError("simulator gone")))
    agent = build_agent(config, server.runner.info)
    server.answer(_Evaluate(agent.state_dict()))
    while server.evaluating:
        server.step_evaluation()
    batch = server.answer(
        _Request(agent.state_dict(), [1, 2], EpsilonGreedy(0.5), torch.Generator().get_state())
    )
    assert isinstance(batch, _Reply)
    taken = server.answer(_TakeEvaluation())
    assert isinstance(taken, _Failure) and "simulator gone" in str(taken.error)


@pytest.mark.timeout(60)
def test_beginning_an_evaluation_while_a_large_batch_is_in_flight_does_not_deadlock() -> None:
    # The batch (about 320 KB) and the weights (1.6 MB) are both larger than the pipe holds: sent while
    # the child is still sending the batch, the weights would leave each process waiting on the other.
    config = preset("qmix", task=TASK, envs=32, hidden_dim=256, eval_episodes=2)
    agent = build_agent(config, task_info(TASK))
    ahead = ProcessCollector(config, torch.Generator().manual_seed(5))
    try:
        ahead.submit(agent, list(range(32)), EpsilonGreedy(1.0))
        ahead.start_evaluation(agent)
        batch = ahead.result()
        evaluation = ahead.evaluation()
    finally:
        ahead.close()
    assert len(batch.stats.returns) == 32 and evaluation.episodes == 2


@pytest.mark.parametrize("collect_ahead", [True, False])
def test_each_evaluation_is_logged_once_at_the_step_it_was_begun(collect_ahead: bool, tmp_path: Path) -> None:
    result = train(preset("qmix", task=TASK, **SHORT, collect_ahead=collect_ahead), runs_dir=tmp_path)
    steps, _ = series(read_metrics(result.run_dir / METRICS_FILE), "eval/return_mean")
    # The first batch, the first past 300 steps, the run's end (600 is due in the loop too: once).
    assert len(steps) == 3 and steps == sorted(steps)
    assert steps[0] <= 100 and 300 <= steps[1] <= 400 and steps[2] == result.t_env  # batches: 2 x 50 steps


# --- when to ask: before the update or after its unroll -------------------------------------------------


def recorded(events: list[str], name: str, function: Any) -> Any:
    """``function``, appending ``name`` to ``events`` at each call."""

    def call(*args: Any, **kwargs: Any) -> Any:
        events.append(name)
        return function(*args, **kwargs)

    return call


def test_asking_before_the_update_or_after_its_unroll_gives_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    requests: list[tuple[dict[str, torch.Tensor], list[int], float, torch.Tensor]] = []
    submit, update, unroll, step = ProcessCollector.submit, QLearner.update, RNNAgent.unroll, gradient_step

    def recorded_submit(
        collector: ProcessCollector, agent: RNNAgent, seeds: list[int], behaviour: Any
    ) -> None:
        weights = {name: tensor.clone() for name, tensor in agent.state_dict().items()}
        requests.append((weights, seeds, behaviour.epsilon, collector.generator.get_state()))
        events.append("ask")
        submit(collector, agent, seeds, behaviour)

    monkeypatch.setattr(ProcessCollector, "submit", recorded_submit)
    monkeypatch.setattr(QLearner, "update", recorded(events, "update", update))
    monkeypatch.setattr(RNNAgent, "unroll", recorded(events, "unroll", unroll))
    monkeypatch.setattr(qllm.rl.learner, "gradient_step", recorded(events, "step", step))
    # Mostly greedy: the batches then depend on the weights the collector was given.
    config = preset("qmix", task=TASK, **SHORT, epsilon_start=0.1, epsilon_finish=0.1)
    runs, asked = {}, {}
    for ask in Ask:
        monkeypatch.setattr(AskSchedule, "ask", lambda schedule, ask=ask: ask)
        events.clear()
        runs[ask] = train(config, runs_dir=tmp_path / ask.name)
        asked[ask], requests[:] = list(requests), []
        updates = [i for i, event in enumerate(events) if event == "update"]
        if ask is Ask.BEFORE_UPDATE:
            expected, first = ["ask", "update", "unroll", "unroll", "step"], 1
        else:
            expected, first = ["update", "unroll", "unroll", "ask", "step"], 0
        # Every update but the run's last, which has no batch after it to ask for.
        assert len(updates) >= 5
        assert all(events[i - first : i - first + 5] == expected for i in updates[:-1]), events
    # The collector was asked with the same weights, seeds, exploration and generator state either way.
    assert len(asked[Ask.BEFORE_UPDATE]) == len(asked[Ask.AFTER_UNROLL]) > 5
    for (weights_b, *request_b), (weights_a, *request_a) in zip(*asked.values(), strict=True):
        assert all(torch.equal(weights_b[name], weights_a[name]) for name in weights_b)
        assert request_b[:2] == request_a[:2] and torch.equal(request_b[2], request_a[2])
    before, after = (runs[ask].run_dir for ask in (Ask.BEFORE_UPDATE, Ask.AFTER_UNROLL))
    assert (before / METRICS_FILE).read_text() == (after / METRICS_FILE).read_text()
    model_before, model_after = torch.load(before / FINAL_MODEL), torch.load(after / FINAL_MODEL)
    for network in ("agent", "mixer"):
        for name, tensor in model_before[network].items():
            assert torch.equal(tensor, model_after[network][name]), (network, name)


def test_the_loop_consults_the_ask_schedule_at_each_update_with_a_batch_to_follow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    ask, batch_taken, update = AskSchedule.ask, AskSchedule.batch_taken, QLearner.update

    monkeypatch.setattr(AskSchedule, "ask", recorded(calls, "ask", ask))
    monkeypatch.setattr(AskSchedule, "batch_taken", recorded(calls, "take", batch_taken))
    monkeypatch.setattr(QLearner, "update", recorded(calls, "update", update))
    train(preset("qmix", task=TASK, **SHORT), runs_dir=tmp_path)
    updates = calls.count("update")
    assert updates >= 5
    # Asked once per update but the last (no batch after it), each ask's batch taken before the next ask.
    assert calls.count("ask") == updates - 1
    asks = [i for i, call in enumerate(calls) if call == "ask"]
    assert all("take" in calls[i:j] for i, j in itertools.pairwise(asks))


class TickingClock:
    """A clock that the test moves on by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def periods(schedule: AskSchedule, clock: TickingClock, seconds: dict[Ask, float], count: int) -> str:
    """Run ``count`` periods, each asked as the schedule says and taking ``seconds[ask]``; the asks made,
    as letters (B: before the update, A: after its unroll)."""
    made = ""
    for _ in range(count):
        ask = schedule.ask()
        clock.now += seconds[ask]
        schedule.batch_taken()
        made += ask.name[0]
    return made


def test_the_ask_schedule_tries_both_in_turn_then_keeps_the_faster_and_tries_the_other_again() -> None:
    clock = TickingClock()
    schedule = AskSchedule(clock)
    schedule.batch_taken()  # the run's first batch: no period before it
    trial, keep = AskSchedule.TRIAL, AskSchedule.EXPLOIT
    qllm_preset = {Ask.BEFORE_UPDATE: 0.097, Ask.AFTER_UNROLL: 0.070}
    assert periods(schedule, clock, qllm_preset, 2 * trial + keep) == "BA" * trial + "A" * keep
    # Each trial the way in use wins doubles how long it is kept (the other way goes first in a trial).
    assert periods(schedule, clock, qllm_preset, 2 * trial + 2 * keep) == "BA" * trial + "A" * 2 * keep
    # The collection grows longer beside the update: asking before it becomes the faster, and takes over.
    later = {Ask.BEFORE_UPDATE: 0.040, Ask.AFTER_UNROLL: 0.050}
    made = periods(schedule, clock, later, 2 * trial + keep + 2 * trial)
    assert made == "BA" * trial + "B" * keep + "AB" * trial


def test_the_ask_schedule_does_not_switch_on_a_difference_within_the_margin() -> None:
    clock = TickingClock()
    schedule = AskSchedule(clock)
    schedule.batch_taken()
    trial, keep = AskSchedule.TRIAL, AskSchedule.EXPLOIT
    periods(schedule, clock, {Ask.BEFORE_UPDATE: 0.090, Ask.AFTER_UNROLL: 0.080}, 2 * trial + keep)
    almost = {Ask.BEFORE_UPDATE: 0.080 * (1 - AskSchedule.MARGIN / 2), Ask.AFTER_UNROLL: 0.080}
    made = periods(schedule, clock, almost, 2 * trial + 2 * keep)
    assert made == "BA" * trial + "A" * 2 * keep


def test_the_ask_schedule_judges_a_trial_by_its_medians_not_by_one_slow_period() -> None:
    clock = TickingClock()
    schedule = AskSchedule(clock)
    schedule.batch_taken()
    made = ""
    for index in range(2 * AskSchedule.TRIAL + 1):
        ask = schedule.ask()
        # An evaluation the collector plays in its idle time slows one period of the faster way.
        clock.now += (0.5 if index == 1 else 0.070) if ask is Ask.AFTER_UNROLL else 0.097
        schedule.batch_taken()
        made += ask.name[0]
    assert made == "BA" * AskSchedule.TRIAL + "A"


def test_a_period_counts_only_when_its_batch_was_asked_for_by_the_schedule_and_not_the_first() -> None:
    clock = TickingClock()
    schedule = AskSchedule(clock)
    for _ in range(5):  # batches with no update (the replay buffer filling): asked before, not timed
        clock.now += 10.0
        schedule.batch_taken()
    assert all(len(seconds) == 0 for seconds in schedule.trial.values())
    periods(schedule, clock, {Ask.BEFORE_UPDATE: 0.5, Ask.AFTER_UNROLL: 0.25}, 4)
    # The first update's period is left out: it allocates what the later ones reuse.
    assert schedule.trial == {Ask.BEFORE_UPDATE: [0.5], Ask.AFTER_UNROLL: [0.25, 0.25]}


class FailingEnv:
    """Wraps an environment; in a process other than the test's it fails at its ``after``-th step."""

    def __init__(self, env: MultiAgentEnv, after: int, failure: str, test_pid: int) -> None:
        self.env, self.after, self.failure, self.test_pid, self.steps = env, after, failure, test_pid, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def step(self, actions: Any) -> TimeStep:
        self.steps += 1
        if os.getpid() != self.test_pid and self.steps >= self.after:
            if self.failure == "raise":
                raise RuntimeError("the simulator lost its connection")
            os._exit(3)
        return self.env.step(actions)


@dataclass
class FailingEnvs:
    """Makes the environments that the collector forks with fail (the fork inherits the patch)."""

    monkeypatch: pytest.MonkeyPatch

    def arm(self, failure: str, after: int) -> None:
        real_make_env, test_pid = qllm.rl.runner.make_env, os.getpid()
        self.monkeypatch.setattr(
            qllm.rl.runner, "make_env", lambda task: FailingEnv(real_make_env(task), after, failure, test_pid)
        )

    def disarm(self) -> None:
        self.monkeypatch.undo()


@pytest.fixture
def failing_envs(monkeypatch: pytest.MonkeyPatch) -> FailingEnvs:
    return FailingEnvs(monkeypatch)


@pytest.mark.parametrize(
    ("failure", "error", "message"),
    [
        # An environment's own error comes back as itself, as collecting in line raises it.
        ("raise", RuntimeError, "the simulator lost its connection"),
        ("exit", TrainingError, r"the process collecting episodes ended unexpectedly \(exit code 3\)"),
    ],
)
def test_a_collector_that_fails_stops_training_and_the_run_resumes(
    failure: str, error: type[Exception], message: str, failing_envs: FailingEnvs, tmp_path: Path
) -> None:
    config = preset("qmix", task=TASK, **{**SHORT, "checkpoint_interval": 50})
    failing_envs.arm(failure, after=150)  # each environment's 150th step: a checkpoint or two before it
    with pytest.raises(error, match=message) as stopped:
        train(config, runs_dir=tmp_path)
    if error is TrainingError:
        assert "training stopped at step" in str(stopped.value) and "--resume" in str(stopped.value)
    assert multiprocessing.active_children() == [] and gc.get_freeze_count() == 0
    (run,) = tmp_path.iterdir()
    assert checkpoints(run)
    failing_envs.disarm()
    resumed = train(config, resume=run)
    assert resumed.t_env >= config.steps and (run / FINAL_MODEL).exists()
    assert multiprocessing.active_children() == [] and gc.get_freeze_count() == 0


def test_a_run_that_cannot_resume_leaves_no_collector_behind(tmp_path: Path) -> None:
    config = preset("qmix", task=TASK, **SHORT)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    with pytest.raises(RunError, match="no checkpoint to resume from"):  # found after the fork
        train(config, resume=run)
    assert multiprocessing.active_children() == [] and gc.get_freeze_count() == 0


def test_runs_saved_before_collecting_ahead_existed_continue_in_line() -> None:
    saved = TrainConfig().replace(collect_ahead=True).to_dict()
    del saved["collect_ahead"]
    assert TrainConfig.from_dict(saved).collect_ahead is False
    assert TrainConfig.from_dict(TrainConfig().to_dict()).collect_ahead is True
