"""The parts of the trainer that can be wrong quietly: targets, masks, action masking, target networks,
the TFCAF slot, and exact resume."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from qllm.envs import make_env
from qllm.envs.episodes import Episodes
from qllm.rl import RunError, preset, train
from qllm.rl.agent import Actor, NumpyActor, RNNAgent, TorchActor, agent_inputs, episode_inputs
from qllm.rl.buffer import ReplayBuffer
from qllm.rl.learner import QLearner, td_lambda_targets
from qllm.rl.mixers import MIXERS, TFCAF, LinearCredit
from qllm.rl.runner import ParallelRunner, StepInputs, select_actions
from qllm.rl.train import CHECKPOINT_DIR, FINAL_MODEL, build_mixer
from qllm.sandbox.client import SandboxWorker

CPU = torch.device("cpu")

# --- TD(lambda) targets, checked against hand computation ------------------------------------------

REWARDS = torch.tensor([[1.0, 2.0, 3.0]])
VALUES = torch.tensor([[10.0, 20.0, 30.0, 40.0]]).unsqueeze(-1)


@pytest.mark.parametrize(
    ("td_lambda", "expected"),
    [
        (0.0, [11.0, 17.0, 3.0]),  # r + gamma V[t+1]; the last step is terminal
        (1.0, [2.75, 3.5, 3.0]),  # Monte Carlo returns
        (0.5, [8.5625, 10.25, 3.0]),  # G1 = 2 + .5(.5*30 + .5*3); G0 = 1 + .5(.5*20 + .5*10.25)
    ],
)
def test_td_lambda_targets_of_a_terminated_episode(td_lambda: float, expected: list[float]) -> None:
    terminated, filled = torch.tensor([[0.0, 0.0, 1.0]]), torch.ones(1, 3)
    targets = td_lambda_targets(REWARDS, terminated, filled, VALUES, gamma=0.5, td_lambda=td_lambda)
    assert targets[0, :, 0].tolist() == pytest.approx(expected)


@pytest.mark.parametrize("td_lambda", [0.0, 0.6, 1.0])
def test_td_lambda_targets_bootstrap_a_truncated_episode(td_lambda: float) -> None:
    # Two real steps, then padding; not terminal: the state after step 1 (V[2] = 30) is bootstrapped.
    terminated, filled = torch.zeros(1, 3), torch.tensor([[1.0, 1.0, 0.0]])
    targets = td_lambda_targets(REWARDS, terminated, filled, VALUES, gamma=0.5, td_lambda=td_lambda)
    g1 = 2.0 + 0.5 * 30.0
    g0 = 1.0 + 0.5 * ((1 - td_lambda) * 20.0 + td_lambda * g1)
    assert targets[0, :2, 0].tolist() == pytest.approx([g0, g1])


def _td_lambda_by_the_formula(rewards, terminated, filled, values, *, gamma, td_lambda):
    """The recursion one step at a time in torch, as the docstring's formula reads."""
    steps = rewards.shape[1]
    r, term = rewards.unsqueeze(-1), terminated.unsqueeze(-1)
    next_filled = torch.cat([filled[:, 1:], torch.zeros_like(filled[:, :1])], dim=1).unsqueeze(-1)
    targets = torch.zeros_like(values[:, :steps])
    following = values[:, steps]
    for t in range(steps - 1, -1, -1):
        continuation = next_filled[:, t] * following + (1 - next_filled[:, t]) * values[:, t + 1]
        blended = (1 - td_lambda) * values[:, t + 1] + td_lambda * continuation
        targets[:, t] = r[:, t] + gamma * (1 - term[:, t]) * blended
        following = targets[:, t]
    return targets


@pytest.mark.parametrize(("td_lambda", "k"), [(0.6, 1), (0.8, 3), (1.0, 1)])
def test_td_lambda_targets_equal_the_formula_bit_for_bit(td_lambda: float, k: int) -> None:
    # Episodes of every length up to T, some terminated, some truncated, with padding after each.
    generator = torch.Generator().manual_seed(7)
    batch, steps = 64, 50
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    filled = (torch.arange(steps) < lengths.unsqueeze(1)).float()
    ends = torch.rand(batch, generator=generator) < 0.5
    terminated = torch.zeros(batch, steps)
    terminated[torch.arange(batch)[ends], lengths[ends] - 1] = 1.0
    rewards = torch.randn(batch, steps, generator=generator) * filled
    values = torch.randn(batch, steps + 1, k, generator=generator) * 10
    got = td_lambda_targets(rewards, terminated, filled, values, gamma=0.99, td_lambda=td_lambda)
    expected = _td_lambda_by_the_formula(rewards, terminated, filled, values, gamma=0.99, td_lambda=td_lambda)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got, expected)


def test_targets_broadcast_over_per_agent_values() -> None:
    values = torch.stack([VALUES[..., 0], VALUES[..., 0] * 2], dim=-1)  # k = 2, as for IQL
    targets = td_lambda_targets(
        REWARDS, torch.zeros(1, 3), torch.ones(1, 3), values, gamma=1.0, td_lambda=0.0
    )
    assert targets[0, 0].tolist() == [21.0, 41.0]


# --- learner ----------------------------------------------------------------------------------------


def _collect(task: str, episodes: int = 4, envs: int = 2) -> tuple[ParallelRunner, Episodes, RNNAgent]:
    runner = ParallelRunner(task, envs)
    info = runner.info
    agent = RNNAgent(info.obs_dim + info.n_actions + info.n_agents, info.n_actions, 16)
    buffer = ReplayBuffer(16, info)
    for start in range(0, episodes, envs):
        batch, _ = runner.run(
            agent, list(range(start, start + envs)), 1.0, torch.Generator().manual_seed(0), CPU
        )
        buffer.insert(batch)
    return runner, buffer.sample(episodes, torch.Generator().manual_seed(0)), agent


def _learner(agent: RNNAgent, runner: ParallelRunner, mixer: str = "qmix", **overrides) -> QLearner:
    info = runner.info
    config = preset(mixer, task=info.task, **overrides)
    return QLearner(agent, MIXERS[config.mixer](info.n_agents, info.state_dim), info.n_actions, config)


ACTORS: dict[str, Callable[[RNNAgent, int], Actor]] = {
    "numpy": NumpyActor,
    "torch": lambda agent, rows: TorchActor(agent, rows, torch.device("cpu")),
}


@pytest.mark.parametrize("actor_name", ACTORS)
def test_acting_sees_the_same_inputs_and_values_as_the_learners_unroll(actor_name: str) -> None:
    # The runner steps an actor on preallocated inputs (numpy on CPU, torch on a GPU); the learner
    # unrolls the GRU over episode inputs. Both must give the same Q-values at every step, or acting and
    # learning disagree.
    runner, batch, agent = _collect("lbf-5x5-2p-1f")
    info = runner.info
    steps = StepInputs(batch.n_episodes, info)
    episode = episode_inputs(batch, info.n_actions)
    unrolled = agent.unroll(episode).detach()
    actor = ACTORS[actor_name](agent, batch.n_episodes * info.n_agents)
    for t in range(batch.actions.shape[1]):  # every step of the episodes (and their padding)
        steps.observe(batch.obs[:, t].numpy())
        assert torch.equal(torch.from_numpy(steps.array), episode[:, t])
        q = actor.step(steps.array)
        torch.testing.assert_close(q, unrolled[:, t], rtol=1e-5, atol=1e-6)
        steps.acted(batch.actions[:, t].numpy())


def test_the_runner_acts_on_cpu_with_the_numpy_actor() -> None:
    agent = RNNAgent(input_dim=9, n_actions=4, hidden_dim=8)
    assert isinstance(agent.actor(2, torch.device("cpu")), NumpyActor)


def test_padded_steps_do_not_change_the_loss() -> None:
    runner, batch, agent = _collect("lbf-5x5-2p-1f")
    assert (batch.filled == 0).any(), "need an episode shorter than the limit"
    learner = _learner(agent, runner, td_lambda=0.6)
    loss, _ = learner.loss(batch)
    pad = batch.filled == 0
    noisy = Episodes(**vars(batch))
    noisy.reward = torch.where(pad, torch.full_like(batch.reward, 1e6), batch.reward)
    noisy.actions = torch.where(pad.unsqueeze(-1), torch.zeros_like(batch.actions), batch.actions)
    state_pad = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)  # states after the end
    noisy.obs = torch.where(state_pad[..., None, None], torch.full_like(batch.obs, 7.0), batch.obs)
    noisy.state = torch.where(state_pad[..., None], torch.full_like(batch.state, -3.0), batch.state)
    assert torch.isclose(learner.loss(noisy)[0], loss)


def test_exploration_and_targets_respect_available_actions() -> None:
    q = torch.tensor([[[5.0, 1.0, 0.0]]]).expand(200, 1, 3)
    avail = torch.tensor([[[False, True, True]]]).expand(200, 1, 3)
    generator = torch.Generator().manual_seed(0)
    assert (select_actions(q, avail, 0.0, generator) == 1).all()  # greedy: best available
    random = select_actions(q, avail, 1.0, generator)
    assert set(random.flatten().tolist()) == {1, 2}  # uniform over available only

    runner, batch, agent = _collect("lbf-8x8-2p-2f")
    learner = _learner(agent, runner)
    inputs = agent_inputs(
        batch.obs, torch.cat([torch.full_like(batch.actions[:, :1], -1), batch.actions], 1), 6
    )
    q_all = agent.unroll(inputs).detach()
    target_q = learner._target_unroll(inputs)
    assert (~batch.avail_actions[batch.avail_actions.any(-1)]).any(), "need states with unavailable actions"
    # Make every unavailable action look best to the online net; targets must not change.
    with torch.no_grad():
        values = learner._state_values(q_all, target_q, batch, batch.state)
        boosted = learner._state_values(q_all + (~batch.avail_actions) * 1e3, target_q, batch, batch.state)
    assert torch.equal(values, boosted)


def test_hard_target_update_waits_for_the_interval() -> None:
    runner, batch, agent = _collect("matrix-climbing")
    learner = _learner(agent, runner, target_update_interval=4)
    learner.update(batch, new_episodes=2)
    fc = "fc1.weight"
    assert not torch.equal(learner.target_agent.state_dict()[fc], agent.state_dict()[fc])
    learner.update(batch, new_episodes=2)
    assert torch.equal(learner.target_agent.state_dict()[fc], agent.state_dict()[fc])
    assert all(not p.requires_grad for p in learner.target_agent.parameters())


@pytest.mark.parametrize("collect_ahead", [True, False])
def test_after_unroll_comes_once_both_networks_are_unrolled_and_before_the_weights_change(
    collect_ahead: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, batch, agent = _collect("lbf-5x5-2p-1f")
    learner = _learner(agent, runner, collect_ahead=collect_ahead)
    unrolled_on: list[str] = []  # the thread each network was unrolled on
    unroll = RNNAgent.unroll

    def recorded_unroll(network: RNNAgent, inputs: torch.Tensor) -> torch.Tensor:
        unrolled_on.append(threading.current_thread().name)
        return unroll(network, inputs)

    monkeypatch.setattr(RNNAgent, "unroll", recorded_unroll)
    weights = {name: p.clone() for name, p in agent.state_dict().items()}
    seen: list[tuple[int, bool]] = []  # at each call: networks unrolled, weights unchanged

    def after_unroll() -> None:
        unchanged = all(torch.equal(p, weights[name]) for name, p in agent.state_dict().items())
        seen.append((len(unrolled_on), unchanged))

    try:
        learner.update(batch, new_episodes=2, after_unroll=after_unroll)
        assert seen == [(2, True)]
        assert not all(torch.equal(p, weights[name]) for name, p in agent.state_dict().items())
        # Given after_unroll, the second core is the learner's until it is called: the target network
        # unrolls on a thread of its own, collecting ahead or not.
        main = threading.current_thread().name
        assert sorted(name != main for name in unrolled_on) == [False, True]
        # Without it, collecting ahead, the collection has that core: both unroll in line.
        unrolled_on.clear()
        learner.update(batch, new_episodes=2)
        assert sorted(name != main for name in unrolled_on) == [False, not collect_ahead]
    finally:
        learner.close()  # later tests fork collectors: no thread of this learner left beside them


def test_soft_target_update_moves_by_tau() -> None:
    runner, batch, agent = _collect("matrix-climbing")
    learner = _learner(agent, runner, target_update="soft", tau=0.25)
    before = learner.target_agent.fc1.weight.clone()
    learner.update(batch, new_episodes=2)
    expected = 0.75 * before + 0.25 * agent.fc1.weight.detach()
    assert torch.allclose(learner.target_agent.fc1.weight, expected)


def test_a_credit_function_not_linear_in_q_mixes_in_process_with_gradients(tmp_path: Path) -> None:
    path = tmp_path / "softmax.py"
    path.write_text(
        "import torch\n\n\ndef credit_assignment(agents_q, state):\n"
        "    w = torch.softmax(agents_q, dim=1) * agents_q.shape[1]\n"
        "    return (w * agents_q).sum(dim=1, keepdim=True)\n"
    )
    config = preset("qllm", task="lbf-8x8-2p-2f", tfcaf=str(path), tfcaf_monotonic=False)
    info = make_env(config.task).info
    mixer, credit = build_mixer(config, info)
    assert isinstance(mixer, TFCAF) and credit is None and len(list(mixer.parameters())) == 0
    q = torch.randn(3, 5, 2, requires_grad=True)
    mixer(q, torch.rand(3, 5, info.state_dim)).sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_a_credit_function_linear_in_q_trains_on_credit_from_the_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[SandboxWorker] = []
    start = SandboxWorker.start

    def counted_start(worker: SandboxWorker) -> None:
        starts.append(worker)
        start(worker)

    monkeypatch.setattr(SandboxWorker, "start", counted_start)
    path = tmp_path / "softmax.py"
    path.write_text(
        "import torch\n\n\ndef credit_assignment(agents_q, state):\n"
        "    w = torch.softmax(state[:, :agents_q.shape[1]], dim=1) * agents_q.shape[1]\n"
        "    return (w * agents_q).sum(dim=1, keepdim=True)\n"
    )
    config = preset("qllm", task="lbf-8x8-2p-2f", tfcaf=str(path))
    info = make_env(config.task).info
    mixer, credit = build_mixer(config, info)
    assert isinstance(mixer, LinearCredit) and credit is not None
    try:
        states = torch.rand(3, 5, info.state_dim)
        stored = credit(states)
    finally:
        credit.close()
    assert len(starts) == 1  # the worker that validated the function computed its credit: one ~10 s start
    assert stored.shape == (3, 5, info.n_agents + 1)
    expected = torch.softmax(states[..., : info.n_agents], dim=-1) * info.n_agents
    assert torch.allclose(stored[..., :-1], expected, atol=1e-6)
    assert torch.allclose(stored[..., -1], torch.zeros(3, 5))
    q = torch.randn(3, 5, 2, requires_grad=True)
    mixer(q, stored).sum().backward()
    assert torch.allclose(q.grad, expected, atol=1e-6)


# --- exact resume -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "collect_ahead"), [("qmix", True), ("qmix", False), ("qllm", True)])
def test_resume_reproduces_an_uninterrupted_run(name: str, collect_ahead: bool, tmp_path: Path) -> None:
    check_resume(name, tmp_path, collect_ahead=collect_ahead)


def check_resume(name: str, tmp_path: Path, *, collect_ahead: bool = True) -> None:
    """A run resumed after a crash ends as the uninterrupted run does: the same weights, test returns and
    metrics (collecting ahead, also across the batch in hand, saved with the checkpoint)."""
    overrides = {
        "steps": 600, "checkpoint_interval": 300, "eval_interval": 200, "eval_episodes": 2,
        "log_interval": 100, "batch_size": 4, "buffer_size": 64, "envs": 2, "target_update_interval": 4,
        "collect_ahead": collect_ahead,
    }  # fmt: skip
    if name == "qllm":
        path = tmp_path / "vdn.py"
        path.write_text(
            "def credit_assignment(agents_q, state):\n    return agents_q.sum(dim=1, keepdim=True)\n"
        )
        overrides["tfcaf"] = str(path)
    config = preset(name, task="lbf-5x5-2p-1f", **overrides)
    full = train(config, runs_dir=tmp_path / "a")
    checkpoints = sorted((full.run_dir / CHECKPOINT_DIR).glob("*.pt"))
    assert len(checkpoints) >= 2
    # Simulate a crash right after the first checkpoint: keep only what existed then.
    crashed = tmp_path / "crashed"
    shutil.copytree(full.run_dir, crashed)
    for later in sorted((crashed / CHECKPOINT_DIR).glob("*.pt"))[1:]:
        later.unlink()
    (crashed / FINAL_MODEL).unlink()
    resumed = train(config, resume=crashed)
    assert resumed.t_env == full.t_env
    final_a = torch.load(full.run_dir / FINAL_MODEL)["agent"]
    final_b = torch.load(crashed / FINAL_MODEL)["agent"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert resumed.final_test_return == full.final_test_return
    metrics_a = (full.run_dir / "metrics.csv").read_text()
    assert (crashed / "metrics.csv").read_text() == metrics_a


def test_resuming_with_other_settings_or_a_foreign_config_is_refused(tmp_path: Path) -> None:
    config = preset("vdn", task="matrix-climbing", steps=100, eval_interval=50, eval_episodes=1,
                    checkpoint_interval=50)  # fmt: skip
    run = train(config, runs_dir=tmp_path).run_dir
    with pytest.raises(RunError, match="different settings"):
        train(config.replace(lr=0.1), resume=run)
    train(config.replace(steps=150), resume=run)  # a longer budget is the one allowed change
    (run / "config.json").write_text('{"mixer": "vdn", "learning_rate_typo": 1}')
    with pytest.raises(RunError, match="not a config this version of qllm can read"):
        train(config, resume=run)
