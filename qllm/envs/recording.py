"""Record episodes of a task to one compressed file, and load them back as tensors.

Recordings are what generated credit functions are validated against: real states a policy visits,
not all-zero tensors. A file holds, for ``E`` episodes padded to the episode limit ``T``:

==================  ======================  =====================================================
array               shape                   meaning
==================  ======================  =====================================================
``states``          ``[E, T+1, S]`` f32     global state before each step, and after the last one
``obs``             ``[E, T+1, n, O]`` f32  per-agent observations, aligned with ``states``
``avail_actions``   ``[E, T+1, n, A]`` bool actions available at each state
``actions``         ``[E, T, n]`` i64       joint action taken at step ``t``
``rewards``         ``[E, T]`` f32          team reward of step ``t``
``terminated``      ``[E, T]`` bool         step ``t`` ended the episode in a terminal state
``filled``          ``[E, T]`` bool         step ``t`` happened (False for padding)
==================  ======================  =====================================================

plus the task's :class:`~qllm.envs.contract.EnvInfo` (state schema included) and how the data was made,
as JSON. Padding is zeros. The format is plain ``numpy.savez_compressed`` with no pickled objects, so
loading a file never executes code from it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qllm import __version__
from qllm.envs.contract import EnvInfo, TimeStep
from qllm.envs.tasks import make_env

FORMAT_VERSION = 1
ARRAYS = ("states", "obs", "avail_actions", "actions", "rewards", "terminated", "filled")

Policy = Callable[[TimeStep, np.random.Generator], np.ndarray]
"""Maps the current time step (and a random generator) to one action per agent."""


def random_policy(timestep: TimeStep, rng: np.random.Generator) -> np.ndarray:
    """Uniform over each agent's available actions."""
    scores = rng.random(timestep.avail_actions.shape)
    return np.where(timestep.avail_actions, scores, -1.0).argmax(axis=1)


POLICIES: dict[str, Policy] = {"random": random_policy}


class RecordingError(ValueError):
    """A file that is missing, unreadable, or not a qllm recording."""


@dataclass(frozen=True)
class Recording:
    """Episodes of one task as tensors (see the module docstring for shapes)."""

    info: EnvInfo
    states: torch.Tensor
    obs: torch.Tensor
    avail_actions: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    filled: torch.Tensor
    metadata: dict[str, Any]
    """How the data was made: policy, seed, qllm version, creation time."""

    @property
    def n_episodes(self) -> int:
        return self.states.shape[0]

    @property
    def episode_lengths(self) -> torch.Tensor:
        return self.filled.sum(dim=1)

    @property
    def returns(self) -> torch.Tensor:
        return (self.rewards * self.filled).sum(dim=1)

    @property
    def state_mask(self) -> torch.Tensor:
        """``[E, T+1]``: which entries of ``states`` are real (the initial state and one per step)."""
        return torch.cat([torch.ones_like(self.filled[:, :1]), self.filled], dim=1)

    def visited_states(self) -> torch.Tensor:
        """Every real state, flattened over episodes and time: ``[N, S]``."""
        return self.states[self.state_mask]


def record(
    task: str,
    episodes: int,
    seed: int = 0,
    policy: str = "random",
    on_episode: Callable[[int, float], None] | None = None,
) -> Recording:
    """Roll out ``episodes`` episodes of ``task``; episode ``e`` is reset with seed ``seed + e``."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from {sorted(POLICIES)}")
    act = POLICIES[policy]
    env = make_env(task)
    info = env.info
    n, limit = info.n_agents, info.episode_limit
    data = {
        "states": np.zeros((episodes, limit + 1, info.state_dim), np.float32),
        "obs": np.zeros((episodes, limit + 1, n, info.obs_dim), np.float32),
        "avail_actions": np.zeros((episodes, limit + 1, n, info.n_actions), bool),
        "actions": np.zeros((episodes, limit, n), np.int64),
        "rewards": np.zeros((episodes, limit), np.float32),
        "terminated": np.zeros((episodes, limit), bool),
        "filled": np.zeros((episodes, limit), bool),
    }
    rng = np.random.default_rng(seed)
    try:
        for e in range(episodes):
            ts = env.reset(seed=seed + e)
            t = 0
            _store_state(data, e, t, ts)
            while not ts.done:
                actions = act(ts, rng)
                ts = env.step(actions)
                data["actions"][e, t] = actions
                data["rewards"][e, t] = ts.reward
                data["terminated"][e, t] = ts.terminated
                data["filled"][e, t] = True
                t += 1
                _store_state(data, e, t, ts)
            if on_episode is not None:
                on_episode(e, float(data["rewards"][e].sum()))
    finally:
        env.close()
    metadata = {
        "policy": policy,
        "seed": seed,
        "episodes": episodes,
        "qllm_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return Recording(info=info, metadata=metadata, **{k: torch.from_numpy(v) for k, v in data.items()})


def _store_state(data: dict[str, np.ndarray], episode: int, t: int, ts: TimeStep) -> None:
    data["states"][episode, t] = ts.state
    data["obs"][episode, t] = ts.obs
    data["avail_actions"][episode, t] = ts.avail_actions


def save_recording(recording: Recording, path: str | Path) -> Path:
    """Write ``recording`` to ``path`` (``.npz``), atomically: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT_VERSION, "info": recording.info.to_dict(), "metadata": recording.metadata}
    arrays = {name: getattr(recording, name).numpy() for name in ARRAYS}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, header=np.array(json.dumps(header)), **arrays)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_recording(path: str | Path) -> Recording:
    """Load a file written by :func:`save_recording`; :class:`RecordingError` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"no recording at {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            contents = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise RecordingError(f"{path} is not a qllm recording (.npz): {exc}") from exc
    missing = {"header", *ARRAYS} - set(contents)
    if missing:
        raise RecordingError(f"{path} is not a qllm recording: missing {sorted(missing)}")
    header = json.loads(str(contents["header"]))
    if header.get("format") != FORMAT_VERSION:
        raise RecordingError(f"{path} has recording format {header.get('format')}, expected {FORMAT_VERSION}")
    return Recording(
        info=EnvInfo.from_dict(header["info"]),
        metadata=header["metadata"],
        **{name: torch.from_numpy(contents[name]) for name in ARRAYS},
    )
