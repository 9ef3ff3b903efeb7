"""Saved gVisor workers: saving, resuming, falling back to a fresh start, and the key that names them.

The first gVisor worker for a setup is saved once ready and later ones resume copies of it
(``qllm/sandbox/snapshots.py``). What must hold: a copy gives the same verdicts as a fresh worker; a
snapshot that cannot be resumed costs a fresh start, never a failed job; nothing half-written is ever
resumed; and any change to what the worker's memory holds (qllm's code, the installed packages, the
container spec) names a different snapshot. The isolation tests run every probe against a resumed copy
as well (``test_sandbox_isolation.py``).
"""

from __future__ import annotations

import os
import shutil
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import qllm
from qllm.envs.recording import record
from qllm.sandbox import Sandbox, SandboxLimits, ValidationInputs
from qllm.sandbox.backends import ProcessBackend, SaveOutcome
from qllm.sandbox.snapshots import (
    FAILED_FOR_S,
    IMAGE_FILE,
    KEPT,
    SAVING_PREFIX,
    SNAPSHOTS_ENV,
    STALE_AFTER_S,
    Snapshot,
    snapshot_key,
    snapshot_root,
)

CANDIDATE = """\
import torch


def credit_assignment(agents_q, state):
    weights = torch.softmax(state[:, :2].abs() + 1.0, dim=1) * agents_q.shape[1]
    return (weights * agents_q).sum(dim=1, keepdim=True) + state[:, :1]
"""
"""Weights and a bias that depend on the state: a verdict with numbers in it to compare."""


def _write_image(content: bytes = b"image") -> Callable[[Path], bool]:
    def checkpoint(folder: Path) -> bool:
        (folder / IMAGE_FILE).write_bytes(content)
        return True

    return checkpoint


# --- the store -------------------------------------------------------------------------------------


def test_a_saved_snapshot_is_moved_into_place_whole_and_nothing_is_left_half_saved(tmp_path: Path) -> None:
    snapshot = Snapshot("k", root=tmp_path)
    assert not snapshot.saved

    assert snapshot.save(_write_image(b"the worker"))

    assert snapshot.saved and (snapshot.folder / IMAGE_FILE).read_bytes() == b"the worker"
    assert [p.name for p in tmp_path.iterdir()] == ["k"]
    assert oct(snapshot.folder.stat().st_mode & 0o777) == "0o700"  # the owner's only


def test_a_failed_checkpoint_saves_nothing_and_is_not_tried_again(tmp_path: Path) -> None:
    snapshot = Snapshot("k", root=tmp_path)

    assert not snapshot.save(lambda folder: False)
    assert not snapshot.saved and not snapshot.possible  # not tried again for this key
    assert [p.name for p in tmp_path.iterdir()] == ["k.failed"]

    no_image = Snapshot("other", root=tmp_path)
    assert not no_image.save(lambda folder: True)  # said it saved, but wrote no image
    assert not no_image.saved and not no_image.possible


def test_a_snapshot_saved_meanwhile_by_another_process_is_kept(tmp_path: Path) -> None:
    snapshot = Snapshot("k", root=tmp_path)

    def another_process_first(folder: Path) -> bool:
        Snapshot("k", root=tmp_path).save(_write_image(b"theirs"))
        return _write_image(b"ours")(folder)

    assert snapshot.save(another_process_first)
    assert (snapshot.folder / IMAGE_FILE).read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


def test_saving_keeps_the_most_recently_used_and_removes_abandoned_saves(tmp_path: Path) -> None:
    old = time.time() - 10 * STALE_AFTER_S
    for age, key in enumerate(["a", "b", "c", "d", "e"]):
        (tmp_path / key).mkdir()
        (tmp_path / key / IMAGE_FILE).write_bytes(b"image")
        os.utime(tmp_path / key, (old + age, old + age))  # "a" used longest ago, "e" most recently
    abandoned, in_progress = tmp_path / f"{SAVING_PREFIX}dead", tmp_path / f"{SAVING_PREFIX}alive"
    abandoned.mkdir()
    in_progress.mkdir()
    os.utime(abandoned, (old, old))
    Snapshot("a", root=tmp_path).used()  # resumed just now: kept

    Snapshot("new", root=tmp_path).save(_write_image())

    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == sorted(["new", "a", "e", "d", in_progress.name])
    assert len(kept) - 1 == KEPT


def test_a_snapshot_that_failed_to_resume_is_deleted_and_one_just_saved_is_not_saved_again(
    tmp_path: Path,
) -> None:
    stale = Snapshot("stale", root=tmp_path)
    stale.save(_write_image())
    stale.drop(just_saved=False)  # older: perhaps stale; the next fresh start saves it again
    assert not stale.saved and stale.possible

    fresh = Snapshot("fresh", root=tmp_path)
    fresh.save(_write_image())
    fresh.drop(just_saved=True)  # saved and at once unresumable: this host cannot resume them
    assert not fresh.saved and not fresh.possible


def test_a_failure_mark_lapses_after_a_day_and_is_pruned(tmp_path: Path) -> None:
    snapshot = Snapshot("k", root=tmp_path)
    snapshot.save(lambda folder: False)
    assert not snapshot.possible
    old = time.time() - FAILED_FOR_S - 60
    os.utime(snapshot.failed, (old, old))

    assert snapshot.possible
    assert snapshot.save(_write_image())
    assert not snapshot.failed.exists()


def test_a_folder_left_half_deleted_is_replaced(tmp_path: Path) -> None:
    snapshot = Snapshot("k", root=tmp_path)
    snapshot.folder.mkdir()
    (snapshot.folder / "pages").write_bytes(b"left behind")  # no image: a delete that died half-way

    assert snapshot.save(_write_image(b"new"))
    assert (snapshot.folder / IMAGE_FILE).read_bytes() == b"new"
    assert not (snapshot.folder / "pages").exists()


def test_a_snapshot_folder_others_may_write_to_or_a_link_is_not_trusted(tmp_path: Path) -> None:
    root = tmp_path / "snapshots"
    assert Snapshot("k", root=root).trusted  # not made yet: it will be made private
    root.mkdir(mode=0o700)
    assert Snapshot("k", root=root).trusted

    root.chmod(0o770)
    assert not Snapshot("k", root=root).trusted
    root.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(root)
    assert not Snapshot("k", root=link).trusted


# --- the key -----------------------------------------------------------------------------------------


SPEC = {"process": {"args": ["python", "-I", "-m", "qllm.sandbox.worker"], "env": ["A=1"]}, "mounts": []}
FLAGS = ["--network=none"]


@pytest.fixture
def runsc(tmp_path: Path) -> Path:
    binary = tmp_path / "runsc"
    binary.write_bytes(b"release 1")
    return binary


def test_the_key_is_stable_and_changes_with_the_spec_the_flags_and_runsc(runsc: Path) -> None:
    key = snapshot_key(SPEC, str(runsc), FLAGS)
    assert snapshot_key(dict(SPEC), str(runsc), list(FLAGS)) == key
    assert snapshot_key({**SPEC, "mounts": [{"destination": "/data"}]}, str(runsc), FLAGS) != key
    assert snapshot_key(SPEC, str(runsc), [*FLAGS, "--rootless"]) != key

    runsc.write_bytes(b"release 2, upgraded in place")
    assert snapshot_key(SPEC, str(runsc), FLAGS) != key


def test_the_key_changes_with_qllms_code(
    runsc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "qllm"
    shutil.copytree(Path(qllm.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(qllm, "__file__", str(package / "__init__.py"))
    before = snapshot_key(SPEC, str(runsc), FLAGS)
    (package / "sandbox" / ".#worker.py").symlink_to("editor@host.1234")  # an editor's lock: no file
    assert snapshot_key(SPEC, str(runsc), FLAGS) == before

    worker = package / "sandbox" / "worker.py"
    worker.write_text(worker.read_text() + "\n# changed\n")

    assert snapshot_key(SPEC, str(runsc), FLAGS) != before


def test_the_key_changes_when_a_package_is_installed(
    runsc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site-packages"
    site.mkdir()
    os.utime(site, ns=(1, 1))
    real = sysconfig.get_path
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(site) if name == "purelib" else real(name))
    before = snapshot_key(SPEC, str(runsc), FLAGS)

    (site / "numpy-9.9.dist-info").mkdir()  # the folder's modification time is now, not 1 ns

    assert snapshot_key(SPEC, str(runsc), FLAGS) != before


# --- the client, when a copy does not start ---------------------------------------------------------


class _SavingBackend(ProcessBackend):
    """The process backend, where saving a worker has the outcome given, and copies of a saved one exit at
    once: a save that worked on a host where resuming does not, or a save that failed half-way."""

    def __init__(self, outcome: SaveOutcome) -> None:
        self.outcome, self.saved, self.failed_resumes, self.workers = outcome, False, 0, 0

    def command(self) -> list[str]:
        self.workers += 1
        return super().command()

    def resume_command(self) -> list[str] | None:
        return ["python3", "-c", "raise SystemExit(1)"] if self.saved else None

    def save_worker(self) -> SaveOutcome:
        self.saved = self.outcome is SaveOutcome.SAVED
        return self.outcome

    def resume_failed(self) -> None:
        self.failed_resumes += 1
        self.saved = False


@pytest.mark.parametrize("outcome", [SaveOutcome.SAVED, SaveOutcome.FAILED], ids=lambda o: o.name)
def test_a_worker_whose_save_or_copy_fails_starts_fresh_and_answers(outcome: SaveOutcome) -> None:
    backend = _SavingBackend(outcome)
    with Sandbox(backend=backend) as sandbox:
        result = sandbox.probe("print(1 + 1)")  # fresh, saved or not, copy fails or none, fresh again

        assert result.ok and result.printed.strip() == "2"
        assert not sandbox._worker.resumed
        assert backend.workers == 2  # the worker given to save_worker was never used again
        assert backend.failed_resumes == (outcome is SaveOutcome.SAVED)


# --- gVisor itself ---------------------------------------------------------------------------------


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of its own, with no snapshot in it."""
    monkeypatch.setenv("QLLM_CACHE", str(tmp_path))
    monkeypatch.delenv(SNAPSHOTS_ENV, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def inputs() -> ValidationInputs:
    return ValidationInputs.from_recording(record("lbf-8x8-2p-2f", episodes=4), max_states=64)


def _verdict(inputs: ValidationInputs) -> tuple[bool, dict[str, object]]:
    with Sandbox(backend="gvisor", limits=SandboxLimits(wall_s=30.0, cpu_s=30)) as sandbox:
        result = sandbox.validate(CANDIDATE, inputs)
        assert result.ok, result.message
        weights = result.weights.model_dump() if result.weights else {}
        return sandbox._worker.resumed, weights


def _images(cache: Path) -> list[Path]:
    return sorted((cache / snapshot_root().name).glob(f"*/{IMAGE_FILE}"))


def test_gvisor_workers_resume_the_first_one_saved_with_the_same_verdicts(
    own_cache: Path, inputs: ValidationInputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _images(own_cache) == []
    first = _verdict(inputs)  # starts anew, is saved, goes on in a copy
    [image] = _images(own_cache)
    saved = image.stat()
    second = _verdict(inputs)
    monkeypatch.setenv(SNAPSHOTS_ENV, "0")
    fresh = _verdict(inputs)

    assert first[0] and second[0] and not fresh[0]
    assert first[1] == second[1] == fresh[1]
    assert _images(own_cache) == [image]
    now = image.stat()
    assert (now.st_ino, now.st_mtime_ns) == (saved.st_ino, saved.st_mtime_ns)  # resumed, not saved again


def test_a_gvisor_snapshot_that_cannot_be_resumed_costs_a_fresh_start_and_is_saved_again(
    own_cache: Path, inputs: ValidationInputs
) -> None:
    _verdict(inputs)  # saves one
    [image] = _images(own_cache)
    image.write_bytes(b"not a checkpoint")

    resumed, weights = _verdict(inputs)  # the broken copy fails, a fresh worker is saved and resumed

    assert resumed and weights
    assert image.stat().st_size > len(b"not a checkpoint")
    assert _verdict(inputs)[0]
