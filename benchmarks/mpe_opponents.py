"""Do EPyMARL's pretrained MPE opponents play sensibly on mpe2's scenarios? Each against random and
scripted opponents, in the same episodes (same seeds) and against the same team policies.

Why: the networks were trained by EPyMARL's authors on PettingZoo's MPE, and qllm runs ``mpe2`` (where
PettingZoo's MPE moved). If the observation an opponent gets here were laid out or scaled differently
from what its network learned on, it would play like noise: a pretrained prey would be caught as often
as a random one. So, per task:

- ``mpe-tag``: predators that head straight for the prey (and, for contrast, random predators) against a
  prey that is pretrained, scripted or random. Measured: tags per episode (the team's reward / 10; MPE
  gives the predators +10 for every predator touching the prey at a step) and the prey's mean distance
  to its nearest predator.
- ``mpe-adversary``: good agents that both head for the goal landmark (and random ones) against an
  adversary that is pretrained, scripted or random. Measured: the adversary's mean distance to the goal
  (lower is better for it; the team's reward adds that distance) and the team's return.

Each pretrained network plays twice: with its outputs mapped to mpe2's moves (what qllm ships, see
``qllm/envs/opponents.py``) and with its outputs taken as mpe2 actions unchanged, as EPyMARL's
``PretrainedTag`` and ``PretrainedAdversary`` wrappers pass them to PettingZoo.

Every cell is the mean over ``--episodes`` episodes (seeds 0..N-1, the same for every cell) with its 95%
interval (1.96 standard errors).

Run:  .venv/bin/python benchmarks/mpe_opponents.py [--episodes 200] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from qllm.envs import make_env
from qllm.envs.mpe import MPEEnv
from qllm.envs.opponents import (
    AS_OUTPUT,
    Opponent,
    OpponentView,
    chase_nearest_team_agent,
    flee_nearest_team_agent,
    move_towards,
    pretrained_adversary,
    pretrained_prey,
)

TeamPolicy = Callable[[MPEEnv, np.ndarray, np.random.Generator], np.ndarray]
"""(env, state, rng) -> one action per team agent."""


def random_moves(rng: np.random.Generator) -> Opponent:
    def act(view: OpponentView) -> int:
        return int(rng.integers(5))

    return act


def random_team(env: MPEEnv, state: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(5, size=env.info.n_agents)


def chase_prey(env: MPEEnv, state: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    schema = env.info.schema
    prey = schema.view(state, "prey_position")[0]
    return np.array([move_towards(prey - p) for p in schema.view(state, "agent_position")])


def head_for_goal(env: MPEEnv, state: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    view = env.info.schema.unpack(state)
    goal = view["landmark_position"][int(view["landmark_is_goal"][:, 0].argmax())]
    return np.array([move_towards(goal - p) for p in view["agent_position"]])


def play(
    task: str, team: TeamPolicy, opponent: Callable[[np.random.Generator], Opponent], episodes: int
) -> dict[str, list[float]]:
    """Per-episode measurements of ``team`` against ``opponent`` on ``task``, seeds 0..episodes-1."""
    env = make_env(task)
    assert isinstance(env, MPEEnv)
    measured: dict[str, list[float]] = {"return": [], "tags": [], "prey_distance": [], "goal_distance": []}
    for seed in range(episodes):
        rng = np.random.default_rng(seed)
        env.scenario = replace(env.scenario, opponent=opponent(rng))
        ts = env.reset(seed=seed)
        total, distances = 0.0, []
        while not ts.done:
            ts = env.step(team(env, ts.state, rng))
            total += ts.reward
            view = env.info.schema.unpack(ts.state)
            if task == "mpe-tag":
                gaps = np.linalg.norm(view["agent_position"] - view["prey_position"][0], axis=1)
                distances.append(float(gaps.min()))
            else:
                goal = view["landmark_position"][int(view["landmark_is_goal"][:, 0].argmax())]
                distances.append(float(np.linalg.norm(view["adversary_position"][0] - goal)))
        measured["return"].append(total)
        if task == "mpe-tag":
            measured["tags"].append(total / 10)
            measured["prey_distance"].append(float(np.mean(distances)))
        else:
            measured["goal_distance"].append(float(np.mean(distances)))
    env.close()
    return {key: values for key, values in measured.items() if values}


def interval(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values)
    return float(array.mean()), float(1.96 * array.std(ddof=1) / np.sqrt(len(array)))


SETUPS: dict[str, tuple[dict[str, TeamPolicy], dict[str, Callable[[np.random.Generator], Opponent]]]] = {
    "mpe-tag": (
        {"predators chase the prey": chase_prey, "random predators": random_team},
        {
            "pretrained prey": lambda rng: pretrained_prey(),
            "pretrained prey, outputs unmapped (as EPyMARL)": lambda rng: replace(
                pretrained_prey(), moves=AS_OUTPUT
            ),
            "scripted prey": lambda rng: flee_nearest_team_agent,
            "random prey": random_moves,
        },
    ),
    "mpe-adversary": (
        {"good agents head for the goal": head_for_goal, "random good agents": random_team},
        {
            "pretrained adversary": lambda rng: pretrained_adversary(),
            "pretrained adversary, outputs unmapped (as EPyMARL)": lambda rng: replace(
                pretrained_adversary(), moves=AS_OUTPUT
            ),
            "scripted adversary": lambda rng: chase_nearest_team_agent,
            "random adversary": random_moves,
        },
    ),
}
METRICS = {"mpe-tag": ("tags", "prey_distance"), "mpe-adversary": ("goal_distance", "return")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, dict[str, tuple[float, float]]]]] = {}
    for task, (teams, opponents) in SETUPS.items():
        first, second = METRICS[task]
        print(f"\n{task}, {args.episodes} episodes per cell (mean ± 95% interval)\n")
        print(f"| team | opponent | {first} | {second} |\n|---|---|---|---|")
        for team_name, team in teams.items():
            for opponent_name, opponent in opponents.items():
                measured = play(task, team, opponent, args.episodes)
                cell = {metric: interval(measured[metric]) for metric in (first, second)}
                results.setdefault(task, {}).setdefault(team_name, {})[opponent_name] = cell
                shown = " | ".join(f"{m:.3f} ± {h:.3f}" for m, h in cell.values())
                print(f"| {team_name} | {opponent_name} | {shown} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"episodes": args.episodes, "results": results}, indent=2))
    if args.plot:
        plot(results, args.plot)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, (task, by_team) in zip(axes, results.items(), strict=True):
        metric = METRICS[task][0]
        teams = list(by_team)
        opponents = list(by_team[teams[0]])
        width = 0.8 / len(opponents)
        for k, opponent in enumerate(opponents):
            means = [by_team[t][opponent][metric][0] for t in teams]
            errors = [by_team[t][opponent][metric][1] for t in teams]
            positions = np.arange(len(teams)) + (k - (len(opponents) - 1) / 2) * width
            axis.bar(positions, means, width, yerr=errors, capsize=3, label=opponent)
        axis.set_xticks(np.arange(len(teams)), teams)
        axis.set_title(f"{task}: {metric.replace('_', ' ')} (95% interval)")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
