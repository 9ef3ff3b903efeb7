"""Isolation backends: how the sandbox worker process is started, from strongest to weakest.

Each backend turns "run the worker" into a command line. They differ in what the *operating system*
guarantees around the worker (the worker adds its own per-job rlimits in every case):

==========  =================================================================================  ===========
backend     isolation                                                                            needs
==========  =================================================================================  ===========
bwrap       bubblewrap: new user/pid/net/ipc namespaces (network: loopback only), read-only       ``bwrap``
            binds of the Python install, the venv and the qllm package only, private /tmp,
            all capabilities dropped, runs as nobody, dies with its parent
docker      a container with ``--network none``, read-only root, no capabilities, pid/memory     a Docker
            limits, the venv and package mounted read-only                                       engine
unshare     a new network namespace (loopback only); files are protected only by                ``unshare``
            RLIMIT_FSIZE=0 (no writes), not hidden
process     a plain child process: rlimits only, *no network isolation*. Never chosen            nothing
            automatically; only when asked for by name
==========  =================================================================================  ===========

``detect_backend()`` picks the first available of bwrap, docker, unshare.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from functools import cache
from pathlib import Path

import qllm

WORKER_MODULE = "qllm.sandbox.worker"
AUTO_ORDER = ("bwrap", "docker", "unshare")
NOBODY = 65534
DOCKER_IMAGE_ENV = "QLLM_SANDBOX_DOCKER_IMAGE"
DEFAULT_DOCKER_IMAGE = "debian:bookworm-slim"
_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/tmp",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


class SandboxUnavailableError(RuntimeError):
    """No isolation backend can run on this machine (or the requested one cannot)."""


def _probe(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _read_only_paths() -> list[Path]:
    """What the worker must see: the interpreter's install, the venv, and the qllm package."""
    package = Path(qllm.__file__).resolve().parent
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), package}
    return sorted(paths)


def _worker_argv() -> list[str]:
    return [sys.executable, "-I", "-m", WORKER_MODULE]


class Backend(ABC):
    """How to start a sandbox worker."""

    name: str

    @abstractmethod
    def available(self) -> bool:
        """Whether this backend can run here (may run a quick probe; cached by ``detect_backend``)."""

    @abstractmethod
    def command(self) -> list[str]:
        """The argv that starts a worker speaking the frame protocol on stdin/stdout."""

    def environment(self) -> dict[str, str]:
        """Environment variables of the started command (never the caller's: no API keys leak in)."""
        return dict(_ENV)


class BwrapBackend(Backend):
    name = "bwrap"

    def available(self) -> bool:
        return shutil.which("bwrap") is not None and _probe([*self._sandbox_argv(), "/bin/true"])

    def command(self) -> list[str]:
        return [*self._sandbox_argv(), *_worker_argv()]

    def _sandbox_argv(self) -> list[str]:
        argv = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        if os.geteuid() == 0:
            argv += ["--uid", str(NOBODY), "--gid", str(NOBODY)]
        # The private /tmp comes first: bwrap mounts in order, and a later tmpfs would hide binds below it
        # (a checkout, venv or interpreter under /tmp).
        argv += ["--tmpfs", "/tmp", "--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32"):
            path = Path(top)
            if path.is_symlink():
                argv += ["--symlink", str(path.readlink()), top]
            elif path.exists():
                argv += ["--ro-bind", top, top]
        for path in _read_only_paths():
            argv += ["--ro-bind", str(path), str(path)]
        argv += ["--dev", "/dev", "--proc", "/proc", "--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
        for key, value in _ENV.items():
            argv += ["--setenv", key, value]
        return argv


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, image: str | None = None, memory_mb: int = 4096) -> None:
        self.image = image or os.environ.get(DOCKER_IMAGE_ENV, DEFAULT_DOCKER_IMAGE)
        self.memory_mb = memory_mb

    def available(self) -> bool:
        return shutil.which("docker") is not None and _probe(
            ["docker", "info", "--format", "{{.ServerVersion}}"]
        )

    def command(self) -> list[str]:
        argv = ["docker", "run", "--rm", "-i", "--network", "none", "--read-only", "--cap-drop", "ALL"]
        argv += [
            "--security-opt",
            "no-new-privileges",
            "--pids-limit",
            "64",
            "--memory",
            f"{self.memory_mb}m",
        ]
        argv += ["--user", f"{NOBODY}:{NOBODY}", "--tmpfs", "/tmp", "--workdir", "/tmp"]
        for path in _read_only_paths():
            argv += ["--volume", f"{path}:{path}:ro"]
        for key, value in _ENV.items():
            argv += ["--env", f"{key}={value}"]
        return [*argv, self.image, *_worker_argv()]


class UnshareBackend(Backend):
    name = "unshare"

    def _prefix(self) -> list[str]:
        # Without root, a user namespace is needed to own the new network namespace.
        return ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--net", "--map-root-user"]

    def available(self) -> bool:
        return shutil.which("unshare") is not None and _probe([*self._prefix(), "true"])

    def command(self) -> list[str]:
        return [*self._prefix(), *_worker_argv()]


class ProcessBackend(Backend):
    name = "process"

    def available(self) -> bool:
        return True

    def command(self) -> list[str]:
        return _worker_argv()


BACKENDS: dict[str, type[Backend]] = {
    b.name: b for b in (BwrapBackend, DockerBackend, UnshareBackend, ProcessBackend)
}


@cache
def _available(name: str) -> bool:
    return BACKENDS[name]().available()


def detect_backend(name: str = "auto") -> Backend:
    """The backend called ``name``, or with ``auto`` the strongest one available here."""
    if name != "auto":
        if name not in BACKENDS:
            raise SandboxUnavailableError(
                f"unknown sandbox backend {name!r}; choose from auto, {', '.join(BACKENDS)}"
            )
        if not _available(name):
            raise SandboxUnavailableError(f"the {name} sandbox backend is not available on this machine")
        return BACKENDS[name]()
    for candidate in AUTO_ORDER:
        if _available(candidate):
            return BACKENDS[candidate]()
    raise SandboxUnavailableError(
        "no isolation backend is available: install bubblewrap (`apt-get install bubblewrap`, done by "
        "scripts/setup.sh), or make `unshare --net` work, or start a Docker engine. "
        "`--backend process` runs without network isolation; use it only for trusted code."
    )
