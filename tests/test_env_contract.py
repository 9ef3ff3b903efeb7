"""Every task family honours the one environment contract: the built-in ones, the installed example plugin,
and environments made through the generic adapter (PettingZoo with an opponent, gymnasium tuples)."""

from __future__ import annotations

import numpy as np
import pytest

from qllm.envs import make_env
from qllm.envs.recording import random_policy
from tests.conftest import REPRESENTATIVE_TASKS, rollout

PLUGGED_IN_TASKS = ("coordgrid-5x5-2ag", "plugin_fixtures:solo_with_opponent", "plugin_fixtures:lbf_tuple")


@pytest.fixture(params=REPRESENTATIVE_TASKS + PLUGGED_IN_TASKS)
def task(request: pytest.FixtureRequest) -> str:
    return request.param


def test_info_is_consistent(task: str) -> None:
    env = make_env(task)
    info = env.info
    assert info.task == task
    assert len(info.agent_names) == info.n_agents >= 1
    assert len(info.action_names) == info.n_actions >= 2
    assert info.state_dim == info.schema.size
    assert info.episode_limit >= 1


def test_time_steps_have_the_declared_shapes_and_ranges(task: str) -> None:
    env = make_env(task)
    info = env.info
    steps = list(rollout(env, seed=3))
    for _, ts in steps:
        assert ts.obs.shape == (info.n_agents, info.obs_dim) and ts.obs.dtype == np.float32
        assert ts.state.shape == (info.state_dim,) and ts.state.dtype == np.float32
        assert ts.avail_actions.shape == (info.n_agents, info.n_actions) and ts.avail_actions.dtype == bool
        assert ts.avail_actions.any(axis=1).all(), "every agent must have an action available"
        assert isinstance(ts.reward, float) and np.isfinite(ts.reward)
        for f in info.schema:
            values = info.schema.view(ts.state, f.name)
            assert values.min() >= f.low and values.max() <= f.high, f"{f.name} outside {f.range_text()}"
    assert steps[0][1].reward == 0.0
    assert 1 <= len(steps) - 1 <= info.episode_limit


def test_episode_ends_exactly_once(task: str) -> None:
    env = make_env(task)
    steps = list(rollout(env, seed=0))
    *running, (_, last) = steps
    assert last.done and not any(ts.done for _, ts in running)
    assert last.terminated != last.truncated
    if last.truncated:
        assert len(running) == env.info.episode_limit
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(env.info.n_agents, dtype=np.int64))


def test_same_seed_and_actions_give_the_same_episode(task: str) -> None:
    first = list(rollout(make_env(task), seed=11))
    reused = make_env(task)
    list(rollout(reused, seed=5))  # a previous episode must leave nothing behind
    second = list(rollout(reused, seed=11))
    assert len(first) == len(second)
    for (a1, t1), (a2, t2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(t1.state, t2.state)
        np.testing.assert_array_equal(t1.obs, t2.obs)
        np.testing.assert_array_equal(t1.avail_actions, t2.avail_actions)
        assert t1.reward == t2.reward


@pytest.mark.parametrize("task", ["mpe-spread-3", "mpe-tag", "lbf-8x8-2p-2f", "rware-tiny-2ag"])
def test_different_seeds_give_different_starts(task: str) -> None:
    env = make_env(task)
    assert not np.array_equal(env.reset(seed=1).state, env.reset(seed=2).state)


def test_bad_actions_are_refused(task: str) -> None:
    env = make_env(task)
    ts = env.reset(seed=0)
    n, n_actions = env.info.n_agents, env.info.n_actions
    with pytest.raises(ValueError, match=f"expected {n} integer actions"):
        env.step(np.zeros(n + 1, dtype=np.int64))
    with pytest.raises(ValueError, match="integer"):
        env.step(np.zeros(n, dtype=np.float32))
    with pytest.raises(ValueError, match=r"must be in \[0"):
        env.step(np.full(n, n_actions, dtype=np.int64))
    # The refused calls left the episode untouched.
    assert env.t == 0
    env.step(random_policy(ts.avail_actions, np.random.default_rng(0)))
    assert env.t == 1


def test_unavailable_actions_are_refused() -> None:
    env = make_env("lbf-8x8-2p-2f")
    for seed in range(50):
        ts = env.reset(seed=seed)
        blocked = np.argwhere(~ts.avail_actions)
        if blocked.size:
            agent, action = blocked[0]
            actions = random_policy(ts.avail_actions, np.random.default_rng(0))
            actions[agent] = action
            with pytest.raises(ValueError, match="unavailable"):
                env.step(actions)
            return
    pytest.fail("no state with an unavailable action in 50 resets")


def test_last_action_is_tracked_and_reset() -> None:
    env = make_env("lbf-8x8-2p-2f")
    schema = env.info.schema
    ts = env.reset(seed=0)
    assert not schema.view(ts.state, "last_action").any()
    actions = np.zeros(env.info.n_agents, dtype=np.int64)  # NONE is always available
    ts = env.step(actions)
    np.testing.assert_array_equal(schema.view(ts.state, "last_action").argmax(axis=1), actions)
    assert not schema.view(env.reset(seed=1).state, "last_action").any()
