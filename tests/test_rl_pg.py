"""The actor-critic baselines (COMA, MADDPG): they train on every family, resume exactly, compute the
counterfactual advantage as the paper defines it, and never give probability to unavailable actions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_rl_learning import check_resume
from typer.testing import CliRunner

from qllm.cli import app
from qllm.rl import preset, train
from qllm.rl.actor_critic import per_agent_actions, policy_log_probs
from qllm.rl.agent import build_agent, episode_inputs
from qllm.rl.coma import COMALearner, counterfactual_advantage, joint_actions_at_states
from qllm.rl.policy import gumbel_noise, gumbel_softmax_hard, sample_actions
from qllm.rl.runner import ParallelRunner, SamplePolicy
from qllm.rl.train import FINAL_MODEL, evaluate_run

CPU = torch.device("cpu")

ALGOS = ("coma", "maddpg")
TASKS = ("matrix-climbing", "mpe-spread-3", "lbf-8x8-2p-2f", "rware-tiny-2ag")

# --- every family, end to end ----------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", ALGOS)
def test_trains_on_family(name: str, task: str, tmp_path: Path) -> None:
    limit = 500 if task.startswith("rware") else 50
    overrides = {
        "steps": 2 * limit, "envs": 2, "batch_size": 2, "buffer_size": 8, "eval_interval": 10**9,
        "eval_episodes": 1, "checkpoint_interval": 10**9, "log_interval": 1, "hidden_dim": 16,
    }  # fmt: skip
    result = train(preset(name, task=task, **overrides), runs_dir=tmp_path)
    assert result.run_dir.name.startswith(f"{task}__{name}__0__")
    metrics = (result.run_dir / "metrics.csv").read_text()
    assert "losses/policy_loss" in metrics and "charts/epsilon" not in metrics
    model = torch.load(result.run_dir / FINAL_MODEL)
    assert {"agent", "critic"} <= set(model)
    assert all(torch.isfinite(v).all() for part in ("agent", "critic") for v in model[part].values())
    mean, _ = evaluate_run(result.run_dir, episodes=1)  # the actor alone, greedy, as for the Q-learners
    assert mean == result.final_test_return


def test_the_cli_trains_coma_and_evaluates_it(tmp_path: Path) -> None:
    cli = CliRunner()
    args = ["train", "-t", "matrix-climbing", "--mixer", "coma", "--steps", "300", "--eval-interval", "150",
            "--eval-episodes", "2", "--runs-dir", str(tmp_path)]  # fmt: skip
    result = cli.invoke(app, args, catch_exceptions=False, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["algo"], config["mixer"], config["envs"]) == ("coma", "none", 10)
    evaluated = cli.invoke(app, ["evaluate", str(run_dir), "--episodes", "2"], catch_exceptions=False)
    assert evaluated.exit_code == 0 and "greedy test return" in evaluated.output


@pytest.mark.parametrize("name", ALGOS)
def test_resume_reproduces_an_uninterrupted_run(name: str, tmp_path: Path) -> None:
    check_resume(name, tmp_path)  # the value-based learners' check: same weights, returns and metrics


# --- COMA's counterfactual advantage, against hand computation ---------------------------------------


def test_counterfactual_advantage_of_a_hand_computed_case() -> None:
    # Agent 0: Q(s, u^-0, .) = [1, 2, 4], pi = [.5, .25, .25] -> baseline .5 + .5 + 1 = 2.
    # Agent 1: Q = [0, 6, -3], pi = [0, 1/3, 2/3] (action 0 unavailable) -> baseline 2 - 2 = 0.
    q = torch.tensor([[1.0, 2.0, 4.0], [0.0, 6.0, -3.0]])
    pi = torch.tensor([[0.5, 0.25, 0.25], [0.0, 1 / 3, 2 / 3]])
    assert counterfactual_advantage(q, pi, torch.tensor([2, 1])).tolist() == pytest.approx([2.0, 6.0])
    assert counterfactual_advantage(q, pi, torch.tensor([0, 2])).tolist() == pytest.approx([-1.0, -3.0])
    # The baseline is the policy's average: advantages average to zero under the policy.
    every = torch.stack([counterfactual_advantage(q, pi, torch.tensor([u, u])) for u in range(3)], dim=-1)
    assert (pi * every).sum(-1).tolist() == pytest.approx([0.0, 0.0])


def test_the_critic_sees_the_other_agents_actions_and_not_its_own() -> None:
    onehot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # agent 0 took action 0, agent 1 action 2
    coma = per_agent_actions(onehot, hide_own=True)
    assert coma.tolist() == [[0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0]]
    maddpg = per_agent_actions(onehot.requires_grad_(), hide_own=False)
    assert maddpg.tolist() == [[1, 0, 0, 0, 0, 1]] * 2
    maddpg[0].sum().backward()  # agent 0's value may only move agent 0's action
    assert onehot.grad.tolist() == [[1, 1, 1], [0, 0, 0]]


def test_the_state_after_the_last_step_uses_the_policys_most_likely_actions() -> None:
    runner = ParallelRunner("matrix-climbing", 1)
    agent = build_agent(preset("coma"), runner.info)
    batch, _ = runner.run(agent, [0], SamplePolicy(), torch.Generator().manual_seed(0), CPU)
    batch = batch.trimmed()
    steps = int(batch.filled.sum())
    pi = torch.softmax(torch.randn(*batch.avail_actions.shape), dim=-1)
    joint = joint_actions_at_states(batch, pi)
    assert torch.equal(joint[0, :steps], batch.actions[0, :steps])
    assert torch.equal(joint[0, steps], pi[0, steps].argmax(-1))


def test_an_actor_step_moves_probability_towards_actions_above_the_baseline() -> None:
    config = preset("coma", task="matrix-penalty-0", hidden_dim=16, lr=0.03, entropy_coef=0.0)
    runner = ParallelRunner(config.task, 4)
    torch.manual_seed(0)  # network initialisation: independent of the tests that ran before
    learner = COMALearner(config, runner.info, torch.device("cpu"))
    with torch.no_grad():  # a critic that values action 2 at 10 and the others at 0, whatever the state
        learner.critic.net[-1].weight.zero_()
        learner.critic.net[-1].bias.copy_(torch.tensor([0.0, 0.0, 10.0]))
    batch, _ = runner.run(learner.agent, [0, 1, 2, 3], SamplePolicy(), torch.Generator().manual_seed(0), CPU)

    def mean_probability_of_action_2() -> float:
        with torch.no_grad():
            logits = learner.agent.unroll(episode_inputs(batch, runner.info.n_actions))
            return float(policy_log_probs(logits, batch.avail_actions)[:, :-1, :, 2].exp().mean())

    before = mean_probability_of_action_2()
    learner.update(batch, new_episodes=4)
    assert mean_probability_of_action_2() > before + 0.1


# --- available actions ---------------------------------------------------------------------------------


def test_unavailable_actions_get_zero_probability_and_no_gradient() -> None:
    logits = torch.tensor([[9.0, 0.0, 1.0, -1.0]], requires_grad=True)
    avail = torch.tensor([[False, True, True, False]])
    log_pi = policy_log_probs(logits, avail)
    pi = log_pi.exp()
    assert pi[0].tolist() == pytest.approx([0.0, 1 / (1 + torch.e), torch.e / (1 + torch.e), 0.0])
    assert pi[0, 0] == 0.0 and pi[0, 3] == 0.0  # exactly, not just small
    (log_pi[0, 1] + (pi * log_pi).sum()).backward()
    assert logits.grad[0, 0] == 0.0 and logits.grad[0, 3] == 0.0


def test_sampling_never_picks_an_unavailable_action_and_follows_the_policy() -> None:
    logits = torch.tensor([5.0, 0.0, 1.0, 3.0]).expand(20_000, 4)
    avail = torch.tensor([False, True, True, False]).expand(20_000, 4)
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_actions(logits, avail, generator), minlength=4)
    assert counts[0] == 0 and counts[3] == 0
    assert counts[2] / counts.sum() == pytest.approx(torch.e / (1 + torch.e), abs=0.01)
    hard = gumbel_softmax_hard(logits[:1000], avail[:1000], generator)
    assert (hard.sum(-1) == 1).all() and (hard[:, [0, 3]] == 0).all()


def test_straight_through_sample_is_one_hot_with_the_soft_gradient() -> None:
    logits = torch.tensor([[0.5, -1.0, 2.0]], requires_grad=True)
    weights = torch.tensor([1.0, 2.0, 3.0])
    hard = gumbel_softmax_hard(logits, torch.ones(1, 3, dtype=torch.bool), torch.Generator().manual_seed(1))
    (hard * weights).sum().backward()
    same_noise = gumbel_noise(torch.Size([1, 3]), torch.Generator().manual_seed(1))
    relaxed = logits.detach().requires_grad_()
    (torch.softmax(relaxed + same_noise, dim=-1) * weights).sum().backward()
    assert sorted(hard[0].tolist()) == [0.0, 0.0, 1.0]
    assert torch.allclose(logits.grad, relaxed.grad)


def test_rollouts_sampling_from_a_policy_take_only_available_actions() -> None:
    runner = ParallelRunner("lbf-8x8-2p-2f", 2)
    agent = build_agent(preset("coma"), runner.info)
    with torch.no_grad():  # LOAD (last), mostly unavailable, becomes the favourite: masking must still win
        agent.fc2.bias.copy_(torch.arange(runner.info.n_actions, dtype=torch.float) * 10)
    batch, _ = runner.run(agent, [0, 1], SamplePolicy(), torch.Generator().manual_seed(0), CPU)
    real = batch.filled.bool()
    taken = batch.avail_actions[:, :-1].gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
    assert taken[real].all()
    assert (~batch.avail_actions[:, :-1][real]).any(), "need states with unavailable actions"
