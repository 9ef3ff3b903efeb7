"""What building LBF's observations costs: lbforaging's own code against the adapter's, per step.

Prints microseconds per call, in one process, over random play on one task: the ``step`` of a
gymnasium-made environment (lbforaging's own, observations included), the adapter's environment's
``step`` (no observations; its own search for valid actions), the same with the adapter's observations,
lbforaging's ``_make_gym_obs`` alone and ``qllm.envs.lbf.agent_observations`` alone.

Run:  .venv/bin/python reports/training-speed/lbf_observations.py --task Foraging-8x8-2p-2f-v3
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
from lbforaging.foraging.environment import ForagingEnv

from qllm.envs.lbf import ForagingWithoutObservations, agent_observations


def per_call_us(function: Callable[[], object], calls: int) -> float:
    began = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - began) / calls * 1e6


def reset(env: ForagingEnv, seed: int) -> None:
    """A seeded reset that gives the same episode every time, as the adapter's (lbforaging places players
    around the previous episode's positions otherwise)."""
    for player in env.players:
        player.position = None
    env.reset(seed=seed)


def stepping_us(env: ForagingEnv, steps: int, observe: Callable[[ForagingEnv], object] | None) -> float:
    """Per step of the same random play each time, resetting (seeded) whenever an episode ends."""
    actions = np.random.default_rng(0).integers(0, 6, size=(steps, len(env.players))).tolist()
    reset(env, seed=0)
    began = time.perf_counter()
    for t in range(steps):
        _, _, done, _, _ = env.step(actions[t])
        if observe is not None:
            observe(env)
        if done:
            reset(env, seed=t)
    return (time.perf_counter() - began) / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="Foraging-8x8-2p-2f-v3", help="an lbforaging id")
    parser.add_argument("--steps", type=int, default=20_000)
    args = parser.parse_args()
    env = ForagingWithoutObservations.made(args.task)
    own = stepping_us(gym.make(args.task, disable_env_checker=True).unwrapped, args.steps, None)
    bare = stepping_us(env, args.steps, None)
    adapter = stepping_us(env, args.steps, agent_observations)
    reset(env, seed=1)
    theirs = per_call_us(lambda: ForagingEnv._make_gym_obs(env), args.steps)
    ours = per_call_us(lambda: agent_observations(env), args.steps)
    print(f"{args.task}, {args.steps} steps of random play, microseconds per call:")
    print(f"  lbforaging's step (gymnasium-made)          {own:7.1f}")
    print(f"  the adapter's step, without observations    {bare:7.1f}")
    print(f"  the adapter's step, with its observations   {adapter:7.1f}")
    print(f"  lbforaging's _make_gym_obs alone            {theirs:7.1f}")
    print(f"  agent_observations alone                    {ours:7.1f}")


if __name__ == "__main__":
    main()
