"""A pids cgroup around a sandbox worker: the fork-bomb limit that also holds for root-mapped sandboxes.

RLIMIT_NPROC is not enforced for processes whose real uid is root on the host, and bubblewrap started
by root maps the sandbox user to host root. A cgroup's ``pids.max`` counts every process and thread of
the worker and its descendants whatever their uid. Both cgroup v1 (``/sys/fs/cgroup/pids``) and v2 are
supported; where neither is writable the sandbox runs without it (``PidsCgroup.create`` returns None)
and falls back to RLIMIT_NPROC.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

V1_ROOT = Path("/sys/fs/cgroup/pids")
V2_ROOT = Path("/sys/fs/cgroup")


class PidsCgroup:
    """A cgroup limiting the number of processes and threads of everything placed in it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, max_pids: int) -> PidsCgroup | None:
        """A new cgroup with ``pids.max = max_pids``, or None where this machine does not allow one."""
        parent = cls._writable_parent()
        if parent is None:
            return None
        path = parent / f"qllm-sandbox-{uuid.uuid4().hex[:12]}"
        try:
            path.mkdir()
            (path / "pids.max").write_text(str(max_pids))
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return cls(path)

    @staticmethod
    def _writable_parent() -> Path | None:
        if (V1_ROOT / "cgroup.procs").exists():
            return V1_ROOT if os.access(V1_ROOT, os.W_OK) else None
        controllers = V2_ROOT / "cgroup.controllers"
        with contextlib.suppress(OSError):
            if "pids" in (V2_ROOT / "cgroup.subtree_control").read_text().split() and os.access(
                V2_ROOT, os.W_OK
            ):
                return V2_ROOT
            if controllers.exists():
                return None
        return None

    def enter(self) -> None:
        """Move the calling process into the cgroup (used between fork and exec of the worker)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        """Kill whatever is left inside and delete the cgroup."""
        with contextlib.suppress(OSError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for _ in range(50):  # killed processes leave the cgroup once reaped
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.02)
