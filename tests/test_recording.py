"""Recording episodes to one file and loading them back as tensors."""

from __future__ import annotations

import json
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from qllm.envs import make_env
from qllm.envs.episodes import Episodes
from qllm.envs.recording import RecordingError, load_recording, record, save_recording
from tests.conftest import rollout


@pytest.mark.parametrize("task", ["matrix-penalty-25", "mpe-adversary", "lbf-5x5-2p-1f", "rware-tiny-2ag"])
def test_round_trip_keeps_every_array_and_the_schema(task: str, tmp_path: Path) -> None:
    rec = record(task, episodes=3, seed=4)
    loaded = load_recording(save_recording(rec, tmp_path / "sub" / "states.npz"))
    assert loaded.info == rec.info
    assert loaded.metadata == rec.metadata
    for f in fields(Episodes):
        assert torch.equal(getattr(loaded.episodes, f.name), getattr(rec.episodes, f.name)), f.name
    info, got = loaded.info, loaded.episodes
    e, t = 3, info.episode_limit
    assert got.state.shape == (e, t + 1, info.state_dim) and got.state.dtype == torch.float32
    assert got.obs.shape == (e, t + 1, info.n_agents, info.obs_dim)
    assert got.avail_actions.shape == (e, t + 1, info.n_agents, info.n_actions)
    assert got.avail_actions.dtype == torch.bool
    assert got.actions.shape == (e, t, info.n_agents) and got.actions.dtype == torch.int64
    assert got.reward.shape == got.filled.shape == got.terminated.shape == (e, t)
    assert got.filled.dtype == got.terminated.dtype == torch.float32


def test_recorded_steps_are_the_env_steps_and_padding_is_masked() -> None:
    recording = record("lbf-5x5-2p-1f", episodes=20, seed=0)
    rec, info = recording.episodes, recording.info
    env = make_env("lbf-5x5-2p-1f")
    lengths = rec.lengths
    assert (lengths <= info.episode_limit).all() and (lengths < info.episode_limit).any()
    # Episode 0 is reset with the recording's seed and drawn from a generator of the same seed.
    steps = list(rollout(env, seed=0))
    assert len(steps) == int(lengths[0]) + 1
    np.testing.assert_array_equal(rec.state[0, : len(steps)].numpy(), np.stack([ts.state for _, ts in steps]))
    np.testing.assert_array_equal(
        rec.actions[0, : len(steps) - 1].numpy(), np.stack([a for a, _ in steps[1:]])
    )
    for e, n in enumerate(lengths.tolist()):
        assert not rec.filled[e, n:].any() and rec.filled[e, :n].all()
        assert (rec.state[e, n + 1 :] == 0).all() and (rec.reward[e, n:] == 0).all()
        assert rec.terminated[e, : n - 1].sum() == 0
        assert rec.terminated[e, n - 1] or n == info.episode_limit
        assert rec.avail_actions[e, :n].gather(2, rec.actions[e, :n, :, None]).all()
    assert rec.visited_states().shape == (int(lengths.sum()) + rec.n_episodes, info.state_dim)
    assert torch.allclose(rec.returns, (rec.reward * rec.filled).sum(1))


def test_recording_is_reproducible_per_seed() -> None:
    a, b, c = (record("mpe-spread-3", episodes=2, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.episodes.state, b.episodes.state)
    assert torch.equal(a.episodes.actions, b.episodes.actions)
    assert not torch.equal(a.episodes.state, c.episodes.state)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        record("matrix-climbing", episodes=0)
    with pytest.raises(ValueError, match="unknown policy"):
        record("matrix-climbing", episodes=1, policy="greedy")


def test_loading_anything_else_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="no recording at"):
        load_recording(tmp_path / "missing.npz")
    text = tmp_path / "notes.npz"
    text.write_text("not a zip")
    with pytest.raises(RecordingError, match="not a qllm recording"):
        load_recording(text)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(RecordingError, match="missing"):
        load_recording(other)


def test_a_future_format_is_refused(tmp_path: Path) -> None:
    path = save_recording(record("matrix-climbing", episodes=1), tmp_path / "r.npz")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(str(arrays["header"]))
    header["format"] = 99
    arrays["header"] = np.array(json.dumps(header))
    np.savez_compressed(path, **arrays)
    with pytest.raises(RecordingError, match="format 99"):
        load_recording(path)


def test_files_hold_no_pickled_objects(tmp_path: Path) -> None:
    path = save_recording(record("matrix-climbing", episodes=1), tmp_path / "r.npz")
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            header = archive.read(member)[:128]
            assert b"'descr': '|O'" not in header, f"{member} is an object array"


def test_save_never_leaves_a_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = record("matrix-climbing", episodes=1)
    target = tmp_path / "r.npz"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(KeyboardInterrupt):
        save_recording(rec, target)
    assert list(tmp_path.iterdir()) == []
