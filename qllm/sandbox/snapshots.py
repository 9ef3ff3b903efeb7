"""Saved gVisor workers: later workers resume a copy instead of importing torch again.

A gVisor worker takes 8-10 s to start on a 2-core machine, nearly all of it ``import torch`` through
gVisor's file proxy (the gofer): thousands of ``stat`` and ``open`` calls at 0.2-0.3 ms each
(``reports/training-speed/report.md``, eleventh measurement). gVisor can save a whole sandbox to a file
and resume it (``runsc checkpoint``, ``runsc restore``), which takes about 1 s. So the first gVisor
worker started for a given setup is saved at the one moment it holds nothing of anyone's: warmed up
(torch and qllm's sandbox modules imported, no tensor maths run) and waiting to be started, before it
forks a child or reads a job (``worker.main``). Saving ends that worker; it and every later one are
resumed copies, each in a sandbox of its own, with the container spec of a fresh one.

A snapshot is named by a key of what its memory was made from: the container spec (the worker's
command, environment and mounts) and ``runsc``'s flags and binary, qllm's source files, the interpreter,
the folders that hold the standard library and the installed packages (installing, upgrading or
removing a package changes them) and the system's shared-library cache. Changes the key cannot see (a
file edited in place inside an installed package) need ``QLLM_SANDBOX_SNAPSHOTS=0`` or an emptied
cache.

Snapshots live in the cache (:func:`qllm.cache.cache_dir`), in a folder that must belong to this user
and be writable by no one else: an image planted there would run as the sandbox's worker, so anything
else turns snapshots off. Deleting them costs one slow start. A snapshot that fails to resume is
deleted and the worker starts fresh. Where saving fails, or a copy just saved does not resume, the key
is marked for a day and its workers are not saved again meanwhile (no failed save on top of each
start). ``QLLM_SANDBOX_SNAPSHOTS=0`` starts every worker fresh.

Copies share what the saved process had drawn before it was saved: its pid and address-space layout,
the seeds of Python's string hashing and of the ``random`` module, ``multiprocessing``'s key. No check
depends on them: validation draws its inputs on the host, and each job runs in a child of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import sys
import sysconfig
import tempfile
import time
import uuid
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
STALE_AFTER_S = 3600.0
"""A folder still being saved into (or deleted) after this long belongs to a process that died."""
FAILED_FOR_S = 86_400.0
"""How long a failed save (or a copy that did not resume right after its save) stops saving for a key:
a busy moment should not cost the speed-up until qllm's code changes."""
SAVING_PREFIX, TRASH_PREFIX = ".saving-", ".trash-"


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
        """Touched when saving failed, or a worker just saved did not resume: no saving for this key for
        :data:`FAILED_FOR_S` (an existing snapshot is still resumed)."""

    @property
    def trusted(self) -> bool:
        """Whether the snapshot folder is this user's own and writable by no one else (or not made yet)."""
        try:
            info = self.root.lstat()
        except FileNotFoundError:
            return True
        return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022

    @property
    def saved(self) -> bool:
        return (self.folder / IMAGE_FILE).is_file()

    @property
    def possible(self) -> bool:
        """Whether saving is worth trying (it has not failed here lately)."""
        try:
            return time.time() - self.failed.stat().st_mtime > FAILED_FOR_S
        except FileNotFoundError:
            return True

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
            if self.folder.exists() and not self.saved:  # left half-deleted by a process that died
                _discard(self.folder)
            try:
                saving.rename(self.folder)
            except OSError:  # saved meanwhile by another process: keep theirs
                return self.saved
        finally:
            shutil.rmtree(saving, ignore_errors=True)
        with contextlib.suppress(OSError):  # saved either way
            _prune(self.root, keep=self.folder)
        return True

    def drop(self, *, just_saved: bool) -> None:
        """Delete it: it failed to resume. One ``just_saved`` by this process shows that this host cannot
        resume them; an older one may only be stale, and is saved again by the next fresh start."""
        _discard(self.folder)
        if just_saved:
            self._mark_failed()

    def _mark_failed(self) -> None:
        with contextlib.suppress(OSError):
            self.failed.touch()


def _discard(folder: Path) -> None:
    """Remove ``folder``, first moving it out of its name in one step, so that no one starts resuming
    a half-deleted image."""
    trash = folder.with_name(f"{TRASH_PREFIX}{uuid.uuid4().hex[:12]}")
    try:
        folder.rename(trash)
    except OSError:
        return  # gone already
    shutil.rmtree(trash, ignore_errors=True)


def _prune(root: Path, keep: Path) -> None:
    """Keep the :data:`KEPT` most recently used snapshots (``keep`` among them); remove what dead
    processes left half-saved or half-deleted, and old failure marks."""
    now = time.time()
    snapshots = []
    for entry in root.iterdir():
        with contextlib.suppress(OSError):
            age = now - entry.lstat().st_mtime
            if entry.name.endswith(".failed"):
                if age > FAILED_FOR_S:
                    entry.unlink()
            elif entry.name.startswith((SAVING_PREFIX, TRASH_PREFIX)):
                if age > STALE_AFTER_S:
                    shutil.rmtree(entry, ignore_errors=True)
            elif entry != keep and entry.is_dir():
                snapshots.append((entry.stat().st_mtime, entry))
    for _, folder in sorted(snapshots, reverse=True)[KEPT - 1 :]:
        _discard(folder)


def snapshot_key(spec: dict[str, Any], runsc: str, flags: list[str]) -> str:
    """The key of a worker started from ``spec`` (an OCI config) by the ``runsc`` binary at that path
    with those global flags."""
    digest = hashlib.sha256(json.dumps([spec, flags], sort_keys=True).encode())
    for path in (Path(runsc).resolve(), *_interpreter_paths()):
        digest.update(_stat_line(path))
    package = Path(qllm.__file__).resolve().parent
    for source in sorted(package.rglob("*.py")):
        if source.is_symlink() or not source.is_file():  # an editor's lock file, say
            continue
        digest.update(str(source.relative_to(package)).encode() + b"\0")
        digest.update(hashlib.sha256(source.read_bytes()).digest())
    return digest.hexdigest()[:32]


def _interpreter_paths() -> list[Path]:
    """The interpreter, the folders of its standard library and installed packages, and the system's
    shared-library cache (rewritten when a system library is installed or upgraded)."""
    folders = ("stdlib", "platstdlib", "purelib", "platlib")
    paths = {Path(sys.executable).resolve(), *(Path(sysconfig.get_path(name)).resolve() for name in folders)}
    paths |= {Path(sysconfig.get_path("platstdlib")).resolve() / "lib-dynload", Path("/etc/ld.so.cache")}
    return sorted(paths)


def _stat_line(path: Path) -> bytes:
    try:
        info = path.stat()
    except OSError:
        return f"{path} missing\0".encode()
    return f"{path} {info.st_size} {info.st_mtime_ns}\0".encode()
