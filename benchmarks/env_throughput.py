"""Random-policy environment throughput: our adapters against the raw simulators they wrap.

For each task and each N, builds N environments in ONE process and steps them the way a trainer
does: a Python list, every env stepped once per tick with a uniformly random *available* action per
agent (drawn for all N envs at once with numpy), and any env whose episode ends is reset. One tick of
N envs counts as N env steps (joint steps of one env). Resets are part of the timed loop.

The same loop also drives the raw simulator directly, as the reference measured in the same run:
the gymnasium env for LBF and RWARE (LBF availability from ``env._valid_actions``), the PettingZoo
parallel env for MPE (every agent random; spread has no opponents). Matrix games have no simulator.
``adapter/raw`` is then the throughput we keep after building observations, the described state and
availability on top of the simulator (1.0 = no overhead). Peak RSS of the process is printed last.

Run:  .venv/bin/python benchmarks/env_throughput.py [--envs 1,8] [--seconds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from qllm.envs import MultiAgentEnv, make_env

DEFAULT_TASKS = "matrix-climbing,mpe-spread-3,mpe-spread-10,lbf-2s-10x10-3p-3f,rware-tiny-2ag"
WARMUP_TICKS = 5


def random_actions(avail: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform over available actions for every agent of every env: ``avail [N, n, A]`` -> ``[N, n]``."""
    return np.argmax(np.where(avail, rng.random(avail.shape), -1.0), axis=-1)


class RawSim:
    """A raw simulator behind the three calls the benchmark loop needs."""

    def __init__(self, adapter: MultiAgentEnv) -> None:
        self.env: Any = adapter.env  # type: ignore[attr-defined]
        self.family = type(adapter).__name__
        self.shape = (adapter.info.n_agents, adapter.info.n_actions)
        if self.family == "MPEEnv":
            self.agents = list(self.env.possible_agents)
            self.shape = (len(self.agents), adapter.info.n_actions)
        self.ones = np.ones(self.shape, dtype=bool)

    def reset(self, seed: int) -> None:
        self.env.reset(seed=seed)

    def step(self, actions: np.ndarray) -> bool:
        if self.family == "MPEEnv":
            _, _, term, trunc, _ = self.env.step(dict(zip(self.agents, actions.tolist(), strict=True)))
            return any(term.values()) or any(trunc.values()) or not self.env.agents
        _, _, term, trunc, _ = self.env.step(actions.tolist())
        return bool(np.any(term) or np.any(trunc))

    def avail(self) -> np.ndarray:
        if self.family != "LBFEnv":
            return self.ones
        avail = np.zeros(self.shape, dtype=bool)
        for i, player in enumerate(self.env.players):
            avail[i, [a.value for a in self.env._valid_actions[player]]] = True
        return avail


def timed_loop(n: int, tick: Callable[[], None], seconds: float) -> tuple[int, float]:
    """Run ``tick`` (which steps ``n`` envs) for about ``seconds``; return (env steps, elapsed)."""
    for _ in range(WARMUP_TICKS):
        tick()
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        tick()
        steps += n
    return steps, elapsed


def bench_adapter(task: str, n: int, seconds: float, seed: int) -> float:
    """Env steps per second through the :class:`MultiAgentEnv` contract."""
    envs = [make_env(task) for _ in range(n)]
    rng = np.random.default_rng(seed)
    episodes = iter(range(seed, sys.maxsize))
    steps = [env.reset(seed=next(episodes)) for env in envs]

    def tick() -> None:
        actions = random_actions(np.stack([ts.avail_actions for ts in steps]), rng)
        for i, env in enumerate(envs):
            ts = env.step(actions[i])
            steps[i] = env.reset(seed=next(episodes)) if ts.done else ts

    count, elapsed = timed_loop(n, tick, seconds)
    for env in envs:
        env.close()
    return count / elapsed


def bench_raw(task: str, n: int, seconds: float, seed: int) -> float | None:
    """Env steps per second stepping the wrapped simulator directly; None for matrix games."""
    adapters = [make_env(task) for _ in range(n)]
    if not hasattr(adapters[0], "env"):
        return None
    sims = [RawSim(adapter) for adapter in adapters]
    rng = np.random.default_rng(seed)
    episodes = iter(range(seed, sys.maxsize))
    for sim in sims:
        sim.reset(next(episodes))

    def tick() -> None:
        actions = random_actions(np.stack([sim.avail() for sim in sims]), rng)
        for i, sim in enumerate(sims):
            if sim.step(actions[i]):
                sim.reset(next(episodes))

    count, elapsed = timed_loop(n, tick, seconds)
    for adapter in adapters:
        adapter.close()
    return count / elapsed


def peak_rss_mib() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("task", "N", "adapter steps/s", "raw steps/s", "adapter/raw", "adapter µs/step", "raw µs/step")
    lines = [
        (
            r["task"],
            str(r["n_envs"]),
            fmt(r["adapter_steps_per_s"], ",.0f"),
            fmt(r["raw_steps_per_s"], ",.0f"),
            fmt(r["ratio_adapter_over_raw"], ".2f"),
            fmt(r["adapter_us_per_step"], ".1f"),
            fmt(r["raw_us_per_step"], ".1f"),
        )
        for r in rows
    ]
    widths = [max(len(row[c]) for row in [header, *lines]) for c in range(len(header))]
    for k, row in enumerate([header, *lines]):
        cells = [cell.rjust(w) for cell, w in zip(row, widths, strict=True)]
        print("  ".join([row[0].ljust(widths[0]), *cells[1:]]))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--tasks", default=DEFAULT_TASKS, help="comma-separated tasks (default: one per family)")
    add("--envs", default="1,8", help="comma-separated env counts N (default: %(default)s)")
    add("--seconds", type=float, default=3.0, help="time budget per measurement (default: 3)")
    add("--seed", type=int, default=0, help="seed for actions and episode resets")
    add("--json", type=Path, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    counts = [int(n) for n in args.envs.split(",")]
    rows: list[dict[str, Any]] = []
    for task in tasks:
        for n in counts:
            adapter = bench_adapter(task, n, args.seconds, args.seed)
            raw = bench_raw(task, n, args.seconds, args.seed)
            rows.append(
                {
                    "task": task,
                    "n_envs": n,
                    "adapter_steps_per_s": adapter,
                    "raw_steps_per_s": raw,
                    "ratio_adapter_over_raw": None if raw is None else adapter / raw,
                    "adapter_us_per_step": 1e6 / adapter,
                    "raw_us_per_step": None if raw is None else 1e6 / raw,
                }
            )
            print(f"{task} N={n}: adapter {adapter:,.0f} steps/s, raw {fmt(raw, ',.0f')} steps/s", flush=True)
    print()
    print_table(rows)
    rss = peak_rss_mib()
    print(f"\npeak RSS: {rss:.1f} MiB")
    if args.json is not None:
        meta = {"seconds": args.seconds, "seed": args.seed, "python": sys.version.split()[0]}
        args.json.write_text(json.dumps({**meta, "peak_rss_mib": rss, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
