"""Record episodes of a task to one compressed file, and load them back.

Recordings are what generated credit functions are validated against: real states a policy visits,
not all-zero tensors. A recording is :class:`~qllm.envs.episodes.Episodes` (the one episode type, filled
by :func:`~qllm.envs.episodes.rollout` driven by a random policy), the task's
:class:`~qllm.envs.contract.EnvInfo` (state schema included) and how the data was made. The file holds
the episodes' arrays (by the names of :data:`FILE_ARRAYS`; bool masks), plus the info and metadata as
JSON. The format is plain ``numpy.savez_compressed`` with no pickled objects, so loading a file never
executes code from it.
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
from qllm.envs.contract import EnvInfo
from qllm.envs.episodes import Episodes, rollout
from qllm.envs.tasks import make_env

FORMAT_VERSION = 1
FILE_ARRAYS = {
    "states": "state",
    "obs": "obs",
    "avail_actions": "avail_actions",
    "actions": "actions",
    "rewards": "reward",
    "terminated": "terminated",
    "filled": "filled",
}
"""Array name in the file -> field of :class:`Episodes`."""
BOOL_ARRAYS = frozenset({"terminated", "filled"})
"""Masks are float in :class:`Episodes` (the trainer multiplies by them) and bool in the file."""

Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]
"""Maps available actions ``[n, A]`` (and a random generator) to one action per agent."""


def random_policy(avail_actions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform over each agent's available actions."""
    scores = rng.random(avail_actions.shape)
    return np.where(avail_actions, scores, -1.0).argmax(axis=-1)


POLICIES: dict[str, Policy] = {"random": random_policy}


class RecordingError(ValueError):
    """A file that is missing, unreadable, or not a qllm recording."""


@dataclass(frozen=True)
class Recording:
    """Episodes of one task, with the task's info and how they were made."""

    info: EnvInfo
    episodes: Episodes
    metadata: dict[str, Any]
    """How the data was made: policy, seed, qllm version, creation time."""


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
    choose = POLICIES[policy]
    rng = np.random.default_rng(seed)

    def act(t: int, obs: np.ndarray, avail_actions: np.ndarray) -> np.ndarray:
        return choose(avail_actions, rng)

    env = make_env(task)
    parts = []
    try:
        for e in range(episodes):  # one at a time: the generator's draws follow the episodes in order
            parts.append(rollout([env], [seed + e], act))
            if on_episode is not None:
                on_episode(e, float(parts[-1].returns[0]))
    finally:
        env.close()
    metadata = {
        "policy": policy,
        "seed": seed,
        "episodes": episodes,
        "qllm_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return Recording(info=env.info, episodes=Episodes.concat(parts), metadata=metadata)


def save_recording(recording: Recording, path: str | Path) -> Path:
    """Write ``recording`` to ``path`` (``.npz``), atomically: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT_VERSION, "info": recording.info.to_dict(), "metadata": recording.metadata}
    arrays = {}
    for name, field_name in FILE_ARRAYS.items():
        values = getattr(recording.episodes, field_name)
        arrays[name] = (values.bool() if name in BOOL_ARRAYS else values).numpy()
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
    missing = {"header", *FILE_ARRAYS} - set(contents)
    if missing:
        raise RecordingError(f"{path} is not a qllm recording: missing {sorted(missing)}")
    header = json.loads(str(contents["header"]))
    if header.get("format") != FORMAT_VERSION:
        raise RecordingError(f"{path} has recording format {header.get('format')}, expected {FORMAT_VERSION}")
    info = EnvInfo.from_dict(header["info"])
    arrays = {
        FILE_ARRAYS[name]: torch.from_numpy(contents[name]).float()
        if name in BOOL_ARRAYS
        else torch.from_numpy(contents[name])
        for name in FILE_ARRAYS
    }
    episodes = Episodes(**arrays, credit=torch.zeros(*arrays["state"].shape[:2], 0))
    return Recording(info=info, episodes=episodes, metadata=header["metadata"])
