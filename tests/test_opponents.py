"""MPE opponents: the scripted ones, and EPyMARL's pretrained networks playing on mpe2's scenarios.

A pretrained network fed an observation it was not trained on plays like noise, so these tests check
behaviour, not only shapes: against the same team play and seeds, the pretrained prey is tagged less
than a random prey, and the pretrained adversary stays closer to the goal than a random adversary.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import qllm.envs
from qllm.envs import make_env
from qllm.envs.mpe import MPEEnv
from qllm.envs.opponents import (
    AS_OUTPUT,
    Opponent,
    OpponentView,
    move_towards,
    pretrained_adversary,
    pretrained_prey,
)

EPISODES = 40


def epymarl_mlp(obs_dim: int, hidden: int) -> nn.Sequential:
    """EPyMARL's opponent network from torch layers: BatchNorm1d, Linear, ReLU, Linear, ReLU, Linear."""
    return nn.Sequential(
        nn.BatchNorm1d(obs_dim), nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, 5),
    )  # fmt: skip


@pytest.mark.parametrize(("policy", "hidden"), [(pretrained_adversary, 64), (pretrained_prey, 128)])
def test_the_numpy_forward_pass_is_the_torch_networks(policy: object, hidden: int) -> None:
    network = policy()
    torch_net = epymarl_mlp(network.obs_dim, hidden).eval()
    names = {"in_fn": "0", "fc1": "1", "fc2": "3", "fc3": "5"}
    shipped = Path(qllm.envs.__file__).parent / "pretrained" / f"{network.name}.pt"
    state = torch.load(shipped, weights_only=True, map_location="cpu")
    torch_net.load_state_dict(
        {names[k.split(".")[0]] + "." + k.split(".", 1)[1]: v for k, v in state.items()}
    )
    observations = np.random.default_rng(0).normal(size=(64, network.obs_dim)).astype(np.float32)
    with torch.no_grad():
        expected = torch_net(torch.from_numpy(observations)).numpy()
    ours = np.stack([network.logits(o) for o in observations])
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def _split_keys(state: dict[str, torch.Tensor]) -> dict[tuple[str, str], torch.Tensor]:
    return {tuple(key.split(".", 1)): value for key, value in state.items()}


def random_opponent(seed: int) -> Opponent:
    rng = np.random.default_rng(seed)
    return lambda view: int(rng.integers(5))


def play(task: str, opponent: Opponent | None, seed: int) -> tuple[float, float]:
    """One episode of a team heading for its target (the prey; the goal landmark), against ``opponent``
    (None: the task's own); returns the team's return and the mean distance the metric watches."""
    env = make_env(task)
    assert isinstance(env, MPEEnv)
    if opponent is not None:
        env.scenario = replace(env.scenario, opponent=opponent)
    schema, ts = env.info.schema, env.reset(seed=seed)
    total, distances = 0.0, []
    while not ts.done:
        view = schema.unpack(ts.state)
        if task.startswith("mpe-tag"):
            target = view["prey_position"][0]
        else:
            target = view["landmark_position"][int(view["landmark_is_goal"][:, 0].argmax())]
        ts = env.step(np.array([move_towards(target - p) for p in view["agent_position"]]))
        total += ts.reward
        view = schema.unpack(ts.state)
        if task.startswith("mpe-tag"):
            distances.append(np.linalg.norm(view["agent_position"] - view["prey_position"][0], axis=1).min())
        else:
            distances.append(np.linalg.norm(view["adversary_position"][0] - target))
    env.close()
    return total, float(np.mean(distances))


def test_the_pretrained_prey_escapes_clearly_better_than_a_random_one() -> None:
    pretrained = [play("mpe-tag-pretrained", None, seed) for seed in range(EPISODES)]
    random = [play("mpe-tag", random_opponent(seed), seed) for seed in range(EPISODES)]
    tags = np.array([r for r, _ in pretrained]) / 10, np.array([r for r, _ in random]) / 10
    # 200 episodes (benchmarks/mpe_opponents.py): 0.30 tags per episode against 4.30 for a random prey.
    assert tags[0].mean() < 0.5 * tags[1].mean(), (tags[0].mean(), tags[1].mean())
    assert np.mean([d for _, d in pretrained]) > np.mean([d for _, d in random])


def test_the_pretrained_adversary_heads_for_the_goal_clearly_better_than_a_random_one() -> None:
    pretrained = [play("mpe-adversary-pretrained", None, seed)[1] for seed in range(EPISODES)]
    random = [play("mpe-adversary", random_opponent(seed), seed)[1] for seed in range(EPISODES)]
    assert np.mean(pretrained) < 0.8 * np.mean(random), (np.mean(pretrained), np.mean(random))


def test_unmapped_outputs_play_mirrored_which_is_why_they_are_mapped() -> None:
    # The networks' outputs are OpenAI MPE's moves (1 is +x); as mpe2 actions (1 is move_left) the prey
    # flees towards the predators.
    unmapped = replace(pretrained_prey(), moves=AS_OUTPUT)
    mapped = [play("mpe-tag-pretrained", None, seed)[0] for seed in range(EPISODES)]
    mirrored = [play("mpe-tag", unmapped, seed)[0] for seed in range(EPISODES)]
    assert np.mean(mirrored) > 5 * np.mean(mapped)


def test_an_observation_of_the_wrong_size_is_refused_with_what_the_network_reads() -> None:
    view = OpponentView(world=None, me=None, team=(), observation=np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError, match="reads an observation of 14 numbers"):
        pretrained_prey()(view)
