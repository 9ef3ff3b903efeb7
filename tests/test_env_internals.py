"""Each task's state schema says exactly what the simulator holds, checked over real random steps.

The expected values are read straight from the simulators' own objects (players, field, world, agents,
request queue), and where possible re-derived from an independent source: the simulator's reward
formula or its rendered global image. A wrong slice, a swapped x/y or a stale value fails here.
"""

from __future__ import annotations

from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
from lbforaging.foraging.environment import Action, ForagingEnv
from rware.warehouse import ImageLayer

from qllm.envs import TimeStep, make_env
from qllm.envs.lbf import ForagingWithoutObservations, agent_observations
from qllm.envs.matrix import CLIMBING
from qllm.envs.mpe import MPEEnv
from qllm.envs.opponents import move_towards
from tests.conftest import rollout

# --- matrix games ----------------------------------------------------------------------------------


def test_matrix_state_is_the_previous_joint_action_and_reward_the_payoff() -> None:
    env = make_env("matrix-climbing")
    for actions, ts in rollout(env, seed=0):
        joint = env.info.schema.view(ts.state, "last_joint_action")[0]
        if actions is None:
            assert not joint.any()
        else:
            assert joint.sum() == 1 and joint.argmax() == 3 * actions[0] + actions[1]
            assert ts.reward == CLIMBING[actions[0]][actions[1]]
        np.testing.assert_array_equal(ts.obs, np.stack([ts.state, ts.state]))


# --- level-based foraging --------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["lbf-8x8-2p-2f", "lbf-2s-10x10-3p-3f", "lbf-5x5-2p-1f"])
def test_lbf_state_matches_players_and_field(task: str) -> None:
    env = make_env(task)
    sim, schema = env.env, env.info.schema
    for seed in range(3):
        for actions, ts in rollout(env, seed=seed):
            view = schema.unpack(ts.state)
            np.testing.assert_array_equal(view["agent_position"], [p.position for p in sim.players])
            np.testing.assert_array_equal(view["agent_level"][:, 0], [p.level for p in sim.players])
            live = view["food_level"][:, 0] > 0
            cells = {tuple(c) for c in np.argwhere(sim.field > 0)}
            assert {tuple(int(v) for v in c) for c in view["food_position"][live]} == cells
            for (row, col), level in zip(
                view["food_position"][live], view["food_level"][live, 0], strict=True
            ):
                assert sim.field[int(row), int(col)] == level
            assert (view["food_position"][~live] == -1).all()
            for i, player in enumerate(sim.players):
                assert set(np.flatnonzero(ts.avail_actions[i])) == {
                    a.value for a in sim._valid_actions[player]
                }
            if actions is not None:
                assert ts.reward == pytest.approx(sum(ts.info["agent_rewards"]))
                assert ts.reward == pytest.approx(sum(p.reward for p in sim.players))
                np.testing.assert_array_equal(view["last_action"].argmax(axis=1), actions)


def test_lbf_eaten_food_keeps_its_slot_and_reads_minus_one() -> None:
    env = make_env("lbf-5x5-2p-1f")
    schema = env.info.schema
    for seed in range(200):
        states = [ts.state for _, ts in rollout(env, seed=seed)]
        levels = np.stack([schema.view(s, "food_level")[0, 0] for s in states])
        if levels[0] > 0 and levels[-1] == 0:
            eaten_at = int(np.argmax(levels == 0))
            before, after = states[eaten_at - 1], states[eaten_at]
            assert (schema.view(before, "food_position") >= 0).all()
            assert (schema.view(after, "food_position") == -1).all()
            return
    pytest.fail("no food was eaten by random play in 200 episodes of lbf-5x5-2p-1f")


def test_lbf_coop_foods_need_every_agent() -> None:
    env = make_env("lbf-8x8-2p-2f-coop")
    schema = env.info.schema
    for seed in range(5):
        state = env.reset(seed=seed).state
        total = schema.view(state, "agent_level").sum()
        levels = schema.view(state, "food_level")[:, 0]
        assert (levels[levels > 0] == total).all()


LBF_OBSERVATION_TASKS = (
    "lbf-8x8-2p-2f", "lbf-2s-8x8-2p-2f-coop", "lbf-2s-10x10-4p-3f", "lbf-2s-12x12-5p-4f", "lbf-5x5-3p-1f",
)  # fmt: skip


@pytest.mark.parametrize("task", LBF_OBSERVATION_TASKS)
def test_lbf_observations_are_lbforagings_on_the_same_play(task: str) -> None:
    """The adapter builds the agents' observations itself; lbforaging's own environment, made by gymnasium
    and played with the same seeds and actions, gives the same observations, rewards and ends, and so does
    lbforaging's observation code run on the adapter's environment at every step."""
    env = make_env(task)
    reference = gym.make(f"Foraging-{task.removeprefix('lbf-')}-v3", disable_env_checker=True).unwrapped
    for seed in range(8):
        for player in reference.players:  # as the adapter does: lbforaging keeps the last episode's
            player.position = None
        for actions, ts in rollout(env, seed=seed):
            if actions is None:
                expected, _ = reference.reset(seed=seed)
            else:
                expected, rewards, done, _, _ = reference.step([int(a) for a in actions])
                assert ts.info["agent_rewards"] == rewards
                assert ts.done == done
            np.testing.assert_array_equal(ts.obs, np.array(expected, dtype=np.float32))
            np.testing.assert_array_equal(ts.obs, np.array(ForagingEnv._make_gym_obs(env.env)))


def test_lbf_an_agent_below_the_window_but_within_twice_the_sight_is_seen() -> None:
    """lbforaging's quirk at a border: agent 0 on row 0 with sight 2 sees rows 0-2 of the field, yet sees
    agent 1 on row 4, whose position relative to the window's corner (4) is within 2 * sight."""
    sim = ForagingWithoutObservations(**gym.spec("Foraging-2s-8x8-2p-2f-v3").kwargs)
    sim.reset(seed=0)
    sim.players[0].position, sim.players[1].position = (0, 3), (4, 3)
    sim._gen_valid_moves()
    expected = np.array(ForagingEnv._make_gym_obs(sim), dtype=np.float32)
    np.testing.assert_array_equal(agent_observations(sim), expected)
    seen_by_agent_0 = expected[0, 3 * sim.max_num_food :].reshape(2, 3)
    assert seen_by_agent_0[1].tolist() == [4, 2, sim.players[1].level]  # row 4 - 0, col 3 - 1


def test_lbf_observations_without_agent_levels_are_lbforagings() -> None:
    kwargs = {**gym.spec("Foraging-2s-10x10-3p-3f-v3").kwargs, "observe_agent_levels": False}
    sim = ForagingWithoutObservations(**kwargs)
    rng = np.random.default_rng(0)
    for seed in range(5):
        sim.reset(seed=seed)
        for _ in range(30):
            expected = np.array(ForagingEnv._make_gym_obs(sim), dtype=np.float32)
            assert expected.shape == (3, 3 * 3 + 2 * 3)
            np.testing.assert_array_equal(agent_observations(sim), expected)
            sim.step(list(rng.integers(0, 6, size=3)))


@pytest.mark.parametrize(
    "env_id", ["Foraging-8x8-2p-2f-v3", "Foraging-2s-10x10-3p-3f-v3", "Foraging-5x5-4p-1f-v3"]
)
def test_lbf_valid_actions_are_lbforagings(env_id: str) -> None:
    """The subclass finds each player's valid actions itself; lbforaging's own method, run on the same
    field and players at every step of random play (invalid actions, borders and foods included), gives
    the same lists, and the adapter's masks say the same."""
    sim = ForagingWithoutObservations.made(env_id)
    rng = np.random.default_rng(0)
    loads = 0
    for seed in range(6):
        sim.reset(seed=seed)
        for _ in range(60):
            ours, masks = sim._valid_actions, sim.valid_masks
            ForagingEnv._gen_valid_moves(sim)
            assert ours == sim._valid_actions
            assert masks == [sum(1 << a.value for a in ours[p]) for p in sim.players]
            loads += sum(Action.LOAD in actions for actions in ours.values())
            sim.step(list(rng.integers(0, 6, size=len(sim.players))))
            if sim.game_over:
                break
    assert loads > 0  # foods were next to players: LOAD was checked where it is valid


def test_lbf_valid_actions_at_the_borders_are_lbforagings() -> None:
    """Random play never puts food on the border (lbforaging spawns it inside): hand-built fields do, with
    a player on every cell around it, where lbforaging's adjacency clamps to the field."""
    sim = ForagingWithoutObservations.made("Foraging-8x8-2p-2f-v3")
    sim.reset(seed=0)
    foods = [(0, 0), (0, 4), (7, 7), (3, 0), (7, 2)]
    for food in foods:
        sim.field[:] = 0
        sim.field[food] = 2
        for row in range(8):
            for col in range(8):
                if (row, col) == food:
                    continue
                sim.players[0].position, sim.players[1].position = (row, col), (7 - row, 7 - col)
                sim._gen_valid_moves()
                ours, masks = sim._valid_actions, sim.valid_masks
                ForagingEnv._gen_valid_moves(sim)
                assert ours == sim._valid_actions, (food, row, col)
                assert masks == [sum(1 << a.value for a in ours[p]) for p in sim.players]


# --- multi-agent particle environments -----------------------------------------------------------


def _world_positions(entities) -> np.ndarray:
    return np.stack([e.state.p_pos for e in entities])


@pytest.mark.parametrize("n", [3, 6])
def test_mpe_spread_state_matches_world_and_reward(n: int) -> None:
    env = make_env(f"mpe-spread-{n}")
    world, schema = env.world, env.info.schema
    for actions, ts in rollout(env, seed=1):
        view = schema.unpack(ts.state)
        np.testing.assert_allclose(
            view["agent_position"], _world_positions(world.agents), rtol=1e-6, atol=1e-6
        )
        np.testing.assert_allclose(
            view["agent_velocity"], np.stack([a.state.p_vel for a in world.agents]), rtol=1e-6, atol=1e-6
        )
        np.testing.assert_allclose(
            view["landmark_position"], _world_positions(world.landmarks), rtol=1e-6, atol=1e-6
        )
        if actions is None:
            continue
        # Independent check through the reward: from the state alone, recompute mpe2's formula.
        agents, landmarks = view["agent_position"], view["landmark_position"]
        coverage = -sum(np.linalg.norm(agents - lm, axis=1).min() for lm in landmarks)
        gaps = np.linalg.norm(agents[:, None] - agents[None], axis=2)
        collisions = ((gaps < 2 * 0.15) & ~np.eye(n, dtype=bool)).sum()
        expected = n * 0.5 * coverage + 0.5 * -collisions
        assert ts.reward == pytest.approx(expected, abs=1e-4)


def test_mpe_adversary_state_matches_world_and_reward() -> None:
    env = make_env("mpe-adversary")
    world, schema = env.world, env.info.schema
    goal_seen = set()
    for seed in range(6):
        for actions, ts in rollout(env, seed=seed):
            view = schema.unpack(ts.state)
            good = [a for a in world.agents if not a.adversary]
            adversary = [a for a in world.agents if a.adversary]
            np.testing.assert_allclose(view["agent_position"], _world_positions(good), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(
                view["adversary_position"], _world_positions(adversary), rtol=1e-6, atol=1e-6
            )
            np.testing.assert_allclose(
                view["landmark_position"], _world_positions(world.landmarks), rtol=1e-6, atol=1e-6
            )
            goal_index = int(view["landmark_is_goal"][:, 0].argmax())
            assert view["landmark_is_goal"].sum() == 1
            assert world.landmarks[goal_index] is good[0].goal_a
            goal_seen.add(goal_index)
            if actions is not None:
                goal = view["landmark_position"][goal_index]
                expected = -np.linalg.norm(view["agent_position"] - goal, axis=1).min() + np.linalg.norm(
                    view["adversary_position"][0] - goal
                )
                assert ts.reward == pytest.approx(expected, abs=1e-4)
                assert len(set(ts.info["agent_rewards"])) == 1  # the good agents' reward is shared
    assert goal_seen == {0, 1}


def _chase_prey(env: MPEEnv, seed: int) -> Iterator[tuple[np.ndarray | None, TimeStep]]:
    """Predators head straight for the prey (random predators almost never catch the scripted prey)."""
    ts = env.reset(seed=seed)
    yield None, ts
    while not ts.done:
        prey = env.info.schema.view(ts.state, "prey_position")[0]
        actions = np.array([move_towards(prey - p) for p in env.info.schema.view(ts.state, "agent_position")])
        ts = env.step(actions)
        yield actions, ts


def test_mpe_tag_state_matches_world_and_reward() -> None:
    env = make_env("mpe-tag")
    world, schema = env.world, env.info.schema
    rewarded = 0
    for seed in range(10):
        for actions, ts in _chase_prey(env, seed):
            view = schema.unpack(ts.state)
            predators = [a for a in world.agents if a.adversary]
            prey = [a for a in world.agents if not a.adversary]
            np.testing.assert_allclose(
                view["agent_position"], _world_positions(predators), rtol=1e-6, atol=1e-6
            )
            np.testing.assert_allclose(view["prey_position"], _world_positions(prey), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(
                view["prey_velocity"], np.stack([a.state.p_vel for a in prey]), rtol=1e-6, atol=1e-6
            )
            np.testing.assert_allclose(
                view["obstacle_position"], _world_positions(world.landmarks), rtol=1e-6, atol=1e-6
            )
            if actions is not None:
                touching = (
                    np.linalg.norm(view["agent_position"] - view["prey_position"], axis=1) < 0.125
                ).sum()
                assert ts.reward == pytest.approx(10.0 * touching)
                rewarded += touching > 0
    assert rewarded > 0, "the predators never touched the prey: the reward check was never exercised"


def test_scripted_prey_flees_the_nearest_predator() -> None:
    env = make_env("mpe-tag")
    schema = env.info.schema
    ts = env.reset(seed=0)
    start = schema.view(ts.state, "prey_position")[0].copy()
    nearest = min(schema.view(ts.state, "agent_position"), key=lambda p: np.linalg.norm(p - start))
    for _ in range(3):
        ts = env.step(np.zeros(3, dtype=np.int64))  # predators stand still
    end = schema.view(ts.state, "prey_position")[0]
    assert np.linalg.norm(end - nearest) > np.linalg.norm(start - nearest)


# --- robotic warehouse -----------------------------------------------------------------------------


def _cells(layer: np.ndarray) -> set[tuple[int, int]]:
    """(x, y) of the non-zero cells of an rware image layer indexed [y, x]."""
    return {(int(x), int(y)) for y, x in np.argwhere(layer > 0)}


@pytest.mark.parametrize("task", ["rware-tiny-2ag", "rware-small-4ag-hard"])
def test_rware_state_matches_agents_queue_and_global_image(task: str) -> None:
    env = make_env(task)
    sim, schema = env.env, env.info.schema
    layers = [ImageLayer.AGENTS, ImageLayer.REQUESTS, ImageLayer.GOALS]
    carried_seen = False
    for actions, ts in rollout(env, seed=2):
        view = schema.unpack(ts.state)
        image = sim.get_global_image(image_layers=layers, recompute=True)
        positions = {tuple(int(v) for v in p) for p in view["agent_position"]}
        assert positions == _cells(image[0])
        assert {tuple(int(v) for v in p) for p in view["requested_shelf_position"]} == _cells(image[1])
        assert {tuple(int(v) for v in p) for p in view["goal_position"]} == _cells(image[2])
        np.testing.assert_array_equal(view["agent_position"], [(a.x, a.y) for a in sim.agents])
        np.testing.assert_array_equal(
            view["agent_direction"].argmax(axis=1), [a.dir.value for a in sim.agents]
        )
        carrying = view["agent_carrying"]
        np.testing.assert_array_equal(carrying[:, 0], [a.carrying_shelf is not None for a in sim.agents])
        for i, agent in enumerate(sim.agents):
            assert carrying[i, 1] == (
                agent.carrying_shelf is not None and agent.carrying_shelf in sim.request_queue
            )
        carried = {id(a.carrying_shelf) for a in sim.agents if a.carrying_shelf is not None}
        np.testing.assert_array_equal(
            view["requested_shelf_carried"][:, 0], [id(s) in carried for s in sim.request_queue]
        )
        carried_seen |= bool(carrying[:, 0].any())
        if actions is not None:
            np.testing.assert_array_equal(view["last_action"].argmax(axis=1), actions)
    assert carried_seen, "no robot ever picked up a shelf: the carrying fields were never exercised"
