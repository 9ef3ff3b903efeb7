"""Saved gVisor workers: later workers resume a copy instead of importing torch again.

A gVisor worker takes 8-10 s to start on a 2-core machine, nearly all of it ``import torch`` through
gVisor's file proxy (the gofer): thousands of ``stat`` and ``open`` calls at 0.2-0.3 ms each
(``reports/training-speed/report.md``, eleventh measurement). gVisor can save a whole sandbox to a file
and resume it (``runsc checkpoint``, ``runsc restore``), which takes about 1 s. So the first gVisor
worker started for a given setup is saved at the one moment it holds nothing of anyone's: warmed up
(torch and qllm's sandbox modules imported, no tensor maths run) and waiting to be started, before it
forks a child or reads a job (``worker.main``). Saving ends that worker; it and every later one are
resumed copies, each in a sandbox of its own, with the container spec of a fresh one.

A snapshot is named by a key of everything its memory depends on: the container spec (the worker's
command, environment and mounts), the ``runsc`` binary, qllm's source files, the interpreter and the
folders that hold the installed packages (installing or removing one changes them). Any change gives a
new key, so a saved worker never runs older code than a fresh one would. Snapshots live in the cache
(:func:`qllm.cache.cache_dir`, folders readable by their owner only); deleting them costs one slow start.
A snapshot that fails to resume is deleted and the worker starts cold. Where saving fails, or a copy
just saved does not resume, that key is marked and its workers start cold from then on (no failed save
on top of every start). ``QLLM_SANDBOX_SNAPSHOTS=0`` starts every worker cold.

Copies share what the saved process had drawn before it was saved: its pid, the seed of Python's string
hashing and of the ``random`` module. No check depends on them: validation draws its inputs on the host.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import qllm
from qllm.cache import cache_dir

SNAPSHOTS_ENV = "QLLM_SANDBOX_SNAPSHOTS"
"""``0`` starts every gVisor worker from nothing (no snapshot saved or resumed)."""
IMAGE_FILE = "checkpoint.img"
"""What ``runsc checkpoint`` writes into its ``--image-path`` folder."""
KEPT = 4
"""Snapshots kept in the cache (the most recently used); about 30 MB each."""
ABANDONED_AFTER_S = 3600.0
"""A folder still being saved into after this long belongs to a process that died while saving."""
SAVING_PREFIX = ".saving-"


def enabled() -> bool:
    return os.environ.get(SNAPSHOTS_ENV, "1").strip() != "0"


def snapshot_root() -> Path:
    return cache_dir() / "sandbox-snapshots"


class Snapshot:
    """The saved worker for one setup (its key): whether there is one, resuming it, saving one."""

    def __init__(self, key: str, root: Path | None = None) -> None:
        self.root = root or snapshot_root()
        self.folder = self.root / key
        self.failed = self.root / f"{key}.failed"
        """Left when saving failed, or a worker just saved failed to resume: this host cannot do it, and
        every start that tried again would cost a failed save on top of a fresh start. Until the key
        changes (any change to qllm's code or the packages), workers for it start fresh."""

    @property
    def saved(self) -> bool:
        return (self.folder / IMAGE_FILE).is_file()

    @property
    def possible(self) -> bool:
        """Whether saving is worth trying (it has not failed here)."""
        return not self.failed.exists()

    def used(self) -> None:
        """Mark it recently used, so that pruning keeps it."""
        with contextlib.suppress(OSError):
            os.utime(self.folder)

    def save(self, checkpoint: Callable[[Path], bool]) -> bool:
        """Save with ``checkpoint(folder)`` (True once it wrote the image there) into a private folder,
        then move that into place in one step, so that no one resumes a half-written image. True if a
        snapshot is in place afterwards (another process's, saved meanwhile, counts)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        saving = Path(tempfile.mkdtemp(prefix=SAVING_PREFIX, dir=self.root))  # mode 0700
        try:
            if not checkpoint(saving) or not (saving / IMAGE_FILE).is_file():
                self._mark_failed()
                return False
            try:
                saving.rename(self.folder)
            except OSError:  # saved meanwhile by another process: keep theirs
                return self.saved
        finally:
            shutil.rmtree(saving, ignore_errors=True)
        _prune(self.root, keep=self.folder)
        return True

    def drop(self, *, just_saved: bool) -> None:
        """Delete it: it failed to resume. One ``just_saved`` by this process shows that this host cannot
        resume them; an older one may only be stale, and is saved again by the next cold start."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if just_saved:
            self._mark_failed()

    def _mark_failed(self) -> None:
        with contextlib.suppress(OSError):
            self.failed.touch()


def _prune(root: Path, keep: Path) -> None:
    """Keep the :data:`KEPT` most recently used snapshots (``keep`` among them) and remove what dead
    processes left half-saved."""
    now = time.time()
    snapshots = []
    for folder in root.iterdir():
        with contextlib.suppress(OSError):
            if not folder.is_dir():
                continue
            if folder.name.startswith(SAVING_PREFIX):
                if now - folder.stat().st_mtime > ABANDONED_AFTER_S:
                    shutil.rmtree(folder, ignore_errors=True)
            elif folder != keep:
                snapshots.append((folder.stat().st_mtime, folder))
    for _, folder in sorted(snapshots, reverse=True)[KEPT - 1 :]:
        shutil.rmtree(folder, ignore_errors=True)


def snapshot_key(spec: dict[str, Any], runsc: str) -> str:
    """The key of a worker started from ``spec`` (an OCI config) by the ``runsc`` binary at that path."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for path in (Path(runsc).resolve(), *_interpreter_paths()):
        digest.update(_stat_line(path))
    package = Path(qllm.__file__).resolve().parent
    for source in sorted(package.rglob("*.py")):
        digest.update(str(source.relative_to(package)).encode() + b"\0")
        digest.update(hashlib.sha256(source.read_bytes()).digest())
    return digest.hexdigest()[:32]


def _interpreter_paths() -> list[Path]:
    """The interpreter and the folders of its standard library and installed packages."""
    folders = ("stdlib", "platstdlib", "purelib", "platlib")
    paths = {Path(sys.executable).resolve(), *(Path(sysconfig.get_path(name)).resolve() for name in folders)}
    return sorted(paths)


def _stat_line(path: Path) -> bytes:
    try:
        info = path.stat()
    except OSError:
        return f"{path} missing\0".encode()
    return f"{path} {info.st_size} {info.st_mtime_ns}\0".encode()
