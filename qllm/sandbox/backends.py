"""Isolation backends: how the sandbox worker process is started, from strongest to weakest.

Each backend turns "run the worker" into a command line. They differ in what the *operating system*
guarantees around the worker (the worker adds its own per-job rlimits in every case):

==========  =================================================================================  ===========
backend     isolation                                                                            needs
==========  =================================================================================  ===========
gvisor      gVisor: the worker's system calls are served by a user-space kernel (the Sentry),    ``runsc``
            not the host's, so a kernel bug is not an escape; an OCI bundle whose root holds
            only read-only binds of /usr, the Python install, the venv and the qllm package, a
            private /tmp, no network at all, runs as nobody with no capabilities
bwrap       bubblewrap: new user/pid/net/ipc namespaces (network: loopback only), read-only       ``bwrap``
            binds of the Python install, the venv and the qllm package only, private /tmp,
            all capabilities dropped, runs as nobody, dies with its parent
docker      a container of an image built here from nothing (never pulled): read-only binds of    a Docker
            /usr, the Python install, the venv and the qllm package only, ``--network none``,    engine
            read-only root, private /tmp, nobody, no capabilities, pid/memory/CPU limits;
            under gVisor where the engine has ``runsc`` registered
unshare     a new network namespace (loopback only); files are protected only by                ``unshare``
            RLIMIT_FSIZE=0 (no writes), not hidden
process     a plain child process: rlimits only, *no network isolation*. Never chosen            nothing
            automatically; only when asked for by name
==========  =================================================================================  ===========

``detect_backend()`` picks the first available of gvisor, bwrap, docker, unshare (``QLLM_SANDBOX_BACKEND``
names one instead), and says once on stderr when gVisor cannot run here and a weaker backend is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any

import qllm
from qllm.sandbox import snapshots
from qllm.sandbox.protocol import SCRATCH_ENV
from qllm.sandbox.snapshots import Snapshot

WORKER_MODULE = "qllm.sandbox.worker"
AUTO_ORDER = ("gvisor", "bwrap", "docker", "unshare")
BACKEND_ENV = "QLLM_SANDBOX_BACKEND"
"""Names the backend ``auto`` resolves to (for a machine where the automatic choice is not wanted)."""
NOBODY = 65534
DOCKER_IMAGE_ENV = "QLLM_SANDBOX_DOCKER_IMAGE"
"""Names a local image for the Docker backend instead of the one it builds."""
DOCKER_RUNTIME_ENV = "QLLM_SANDBOX_DOCKER_RUNTIME"
"""Names the Docker backend's container runtime (``runc``, ``runsc``) instead of the automatic choice."""
CHECKPOINT_TIMEOUT_S = 30.0
"""Saving a warm worker takes about 1 s; one that takes this long is given up (and the worker with it)."""
DOCKER_CLIENT_ENV = frozenset(
    {"DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY"}
)
"""The host's variables the Docker client is given: where the engine is and how to reach it."""
_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/tmp",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    # glibc's malloc keeps what it was given instead of returning it to the kernel and asking again:
    # allocations under 64 MiB from the heap (not a fresh mmap each), the heap grown 64 MiB at a time
    # and trimmed only past 256 MiB free. Under gVisor every mapping change and first touch of a page
    # goes through its sentry; a warm validation there took 0.82x the time with these (five A/B runs,
    # 95% interval 0.67-0.97, reports/sandbox-latency), and nothing changed under bubblewrap. Costs: a
    # child's RLIMIT_AS budget can be reached up to 64 MiB early, and freed memory stays with it.
    "MALLOC_MMAP_THRESHOLD_": str(64 << 20),
    "MALLOC_TOP_PAD_": str(64 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
}


class SandboxUnavailableError(RuntimeError):
    """No isolation backend can run on this machine (or the requested one cannot)."""


def _probe(command: list[str], env: dict[str, str] | None = None) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=20, check=False, env=env).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _read_only_paths() -> list[Path]:
    """What the worker must see: the interpreter's install, the venv, and the qllm package."""
    package = Path(qllm.__file__).resolve().parent
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), package}
    return sorted(paths)


def _worker_argv() -> list[str]:
    return [sys.executable, "-I", "-m", WORKER_MODULE]


class SaveOutcome(Enum):
    """What :meth:`Backend.save_worker` did with the worker it was given."""

    NOT_TRIED = "not tried"
    """Nothing: the worker goes on."""
    SAVED = "saved"
    """Saved, and the worker has exited: go on in a resumed copy."""
    FAILED = "failed"
    """Tried and failed: the worker may be dead or stopped half-way; start another."""


class Backend(ABC):
    """How to start a sandbox worker."""

    name: str
    runtime_pids: int = 0
    """Host processes and threads the isolation runtime itself holds in the worker's pids cgroup, on top of
    the worker's own allowance."""

    @abstractmethod
    def available(self) -> bool:
        """Whether this backend can run here (may run a quick probe; cached by ``detect_backend``)."""

    @abstractmethod
    def command(self) -> list[str]:
        """The argv that starts a worker speaking the frame protocol on stdin/stdout."""

    private_scratch: tuple[str, ...] = ()
    """Writable folders inside that only this worker sees (its private /tmp), which the worker empties
    after every job; empty for backends that share the host's."""

    def environment(self) -> dict[str, str]:
        """The worker's environment variables (never the caller's: no API keys leak in)."""
        env = dict(_ENV)
        if self.private_scratch:
            env[SCRATCH_ENV] = ":".join(self.private_scratch)
        return env

    def launcher_environment(self) -> dict[str, str]:
        """The environment of the process :meth:`command` starts: the worker's, unless that process is
        a launcher (the Docker client) that needs more of the host's to reach its engine."""
        return self.environment()

    def release(self) -> None:  # noqa: B027  (optional hook: most backends leave nothing behind)
        """Clean up after the workers this backend started, once they have exited."""

    # Saved workers (optional: only gVisor can save a process and resume it; ``snapshots.py``).

    def resume_command(self) -> list[str] | None:
        """The argv that resumes a copy of a saved worker, which then waits to be started as a fresh one
        does once ready; None where there is none to resume (start one with :meth:`command`)."""
        return None

    def save_worker(self) -> SaveOutcome:
        """Save the worker the last :meth:`command` started, which has said it is ready and waits to be
        started, for :meth:`resume_command`. Once tried, saved or not, that worker is gone or going."""
        return SaveOutcome.NOT_TRIED

    def resume_failed(self) -> None:  # noqa: B027  (optional hook, with the two above)
        """The worker :meth:`resume_command` started did not start: do not resume that one again."""


def _system_tops() -> list[tuple[str, Path | None]]:
    """The top-level system folders the interpreter's shared libraries may live under: (path, the
    target of a symlink such as merged-/usr's ``/lib -> usr/lib``, or None for a real folder)."""
    tops = []
    for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32"):
        path = Path(top)
        if path.is_symlink():
            tops.append((top, path.readlink()))
        elif path.exists():
            tops.append((top, None))
    return tops


def _worker_binds() -> list[Path]:
    """Everything a root made from nothing binds read-only for the worker: /usr, the system's real
    library folders (symlinked ones are links in the root), the Python install, the venv and qllm."""
    system = [Path("/usr"), *(Path(top) for top, target in _system_tops() if target is None)]
    return [*system, *_read_only_paths()]


HOME_PREFIX = "qllm-gvisor-"
"""Each gVisor backend's folder (bundles, runsc state) is ``/tmp/qllm-gvisor-<pid>-<random>``."""


def _remove_orphaned_homes() -> None:
    """Remove the folders of gVisor backends whose process is gone (killed before it could clean up)."""
    for home in Path(tempfile.gettempdir()).glob(f"{HOME_PREFIX}*-*"):
        pid = home.name.removeprefix(HOME_PREFIX).split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(home, ignore_errors=True)


@dataclass(frozen=True)
class _Container:
    """One gVisor container: the ``runsc`` binary, its global flags, the container's id."""

    runsc: str
    flags: tuple[str, ...]
    id: str

    def argv(self, command: str, *arguments: str) -> list[str]:
        return [self.runsc, *self.flags, command, *arguments, self.id]


class GvisorBackend(Backend):
    """The worker in a gVisor sandbox (``runsc run`` on an OCI bundle made here, with no network).

    The bundle's root is an empty read-only folder: only what is bound in exists inside. Each worker is a
    container with its own id and its own ``runsc`` state folder, removed by :meth:`release`: ``runsc``
    takes its sandbox down with it when it is killed, but leaves the container's state behind.

    The first worker started for a setup is saved once ready (``runsc checkpoint``); later workers are
    copies resumed from it (``runsc restore`` on the same bundle): about 1 s instead of 8-10
    (``snapshots.py``).
    """

    name = "gvisor"
    private_scratch = ("/tmp", "/dev/shm")
    runtime_pids = 192
    """Measured: runsc's sandbox, gofer and platform stubs hold about 60 host threads once a worker is
    warm, a few more per job; a guest's processes run in stubs too, so a fork bomb still meets the
    cgroup."""
    TMP_MB = 64
    """Size of the private /tmp (jobs can only leave empty files there, RLIMIT_FSIZE being 0, and the worker
    empties it after each)."""

    def __init__(self) -> None:
        _remove_orphaned_homes()
        self._home = Path(tempfile.mkdtemp(prefix=f"{HOME_PREFIX}{os.getpid()}-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._home, ignore_errors=True)
        self._bundles: dict[tuple[str, ...], Path] = {}
        self._states: list[Path] = []
        self._started: _Container | None = None
        """The container of the worker :meth:`command` started last (the one :meth:`save_worker` saves)."""
        self._snapshot: Snapshot | None = None
        self._just_saved = False
        """The last worker this backend started was saved (and none was resumed since)."""
        self._resuming_just_saved = False
        self._snapshots_failed = False
        """A save, or the resume of a worker just saved, failed: this backend starts its workers cold."""

    def available(self) -> bool:
        if shutil.which("runsc") is None:
            return False
        try:
            process = [sys.executable, "-I", "-c", "pass"]
            return _probe(self._container().argv("run", "--bundle", str(self._bundle(process))))
        finally:
            self.release()

    def command(self) -> list[str]:
        self._started = self._container()
        return self._started.argv("run", "--bundle", str(self._bundle(_worker_argv())))

    def resume_command(self) -> list[str] | None:
        # The copy about to start is of a snapshot this backend saved just now only if none came between.
        self._resuming_just_saved, self._just_saved = self._just_saved, False
        try:
            snapshot = self._worker_snapshot()
            if snapshot is None or not snapshot.saved:
                return None
            snapshot.used()
        except OSError:  # an unreadable cache: start fresh, as without one
            self._snapshots_failed = True
            return None
        bundle = str(self._bundle(_worker_argv()))  # the spec the snapshot's key was made of
        return self._container().argv("restore", "--image-path", str(snapshot.folder), "--bundle", bundle)

    def save_worker(self) -> SaveOutcome:
        started, checkpointed = self._started, False

        def checkpoint(folder: Path) -> bool:
            nonlocal checkpointed
            checkpointed = True
            argv = started.argv("checkpoint", "--image-path", str(folder))
            try:
                done = subprocess.run(argv, capture_output=True, timeout=CHECKPOINT_TIMEOUT_S, check=False)
            except (OSError, subprocess.TimeoutExpired):
                return False
            return done.returncode == 0

        try:
            snapshot = self._worker_snapshot()
            if snapshot is None or started is None or snapshot.saved or not snapshot.possible:
                return SaveOutcome.NOT_TRIED
            if self._key() != snapshot.folder.name:  # qllm or a package changed while this worker started
                self._snapshot = None
                return SaveOutcome.NOT_TRIED
            self._just_saved = snapshot.save(checkpoint)
        except OSError:  # an unwritable cache: start fresh, as without one
            self._snapshots_failed = True
            return SaveOutcome.FAILED if checkpointed else SaveOutcome.NOT_TRIED
        self._snapshots_failed = not self._just_saved  # a failed save costs a fresh start: not twice
        return SaveOutcome.SAVED if self._just_saved else SaveOutcome.FAILED

    def resume_failed(self) -> None:
        if self._snapshot is not None:
            with contextlib.suppress(OSError):
                self._snapshot.drop(just_saved=self._resuming_just_saved)
        self._snapshots_failed = self._resuming_just_saved

    def _worker_snapshot(self) -> Snapshot | None:
        """Where the saved worker for this setup is (whether or not one is there yet); None when
        snapshots are off, failed here, or their folder is not this user's own."""
        if self._snapshots_failed or not snapshots.enabled():
            return None
        if self._snapshot is None:
            snapshot = Snapshot(self._key())
            if not snapshot.trusted:
                _say_once(
                    f"{snapshot.root} is not this user's own folder, or others may write to it: gVisor "
                    "sandbox workers start fresh instead of resuming a saved one"
                )
                self._snapshots_failed = True
                return None
            self._snapshot = snapshot
        return self._snapshot

    def _key(self) -> str:
        return snapshots.snapshot_key(self._spec(_worker_argv()), self._runsc(), self._flags())

    def release(self) -> None:
        for state in self._states:
            shutil.rmtree(state, ignore_errors=True)
        self._states.clear()

    @staticmethod
    def _runsc() -> str:
        return shutil.which("runsc") or "runsc"  # found on the host's PATH, not the worker's

    def _container(self) -> _Container:
        """A new container: its own id and ``runsc`` state folder."""
        state = Path(tempfile.mkdtemp(prefix="state-", dir=self._home))
        self._states.append(state)
        flags = ("--root", str(state), *self._flags())
        return _Container(self._runsc(), flags, f"qllm-{uuid.uuid4().hex[:12]}")

    @staticmethod
    def _flags() -> list[str]:
        """``runsc``'s flags for every container (each also has its own ``--root``)."""
        # Not --file-access-mounts=exclusive (caching the read-only binds' files in the Sentry): a worker
        # started 1-2 s sooner with it, but each warm validation took 25-36 ms instead of 20-21 (a child is
        # forked per candidate), twice in a row, alternating with this (benchmarks/sandbox_latency.py).
        flags = ["--network=none", "--ignore-cgroups"]
        if os.geteuid() != 0:
            flags.append("--rootless")
        return flags

    def _bundle(self, process: list[str]) -> Path:
        """An OCI bundle running ``process`` (made once per command line)."""
        key = tuple(process)
        if key not in self._bundles:
            bundle = Path(tempfile.mkdtemp(prefix="bundle-", dir=self._home))
            root = bundle / "rootfs"
            root.mkdir()
            for top, target in _system_tops():
                if target is not None:
                    (root / top.lstrip("/")).symlink_to(target)
            (bundle / "config.json").write_text(json.dumps(self._spec(process)))
            self._bundles[key] = bundle
        return self._bundles[key]

    def _spec(self, process: list[str]) -> dict[str, Any]:
        def read_only(path: str) -> dict[str, Any]:
            return {"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]}

        binds = [str(path) for path in _worker_binds()]
        no_capabilities = {
            kind: [] for kind in ("bounding", "effective", "inheritable", "permitted", "ambient")
        }
        return {
            "ociVersion": "1.0.0",
            "process": {
                "user": {"uid": NOBODY, "gid": NOBODY},
                "args": process,
                "env": [f"{key}={value}" for key, value in self.environment().items()],
                "cwd": "/tmp",
                "capabilities": no_capabilities,
                "noNewPrivileges": True,
            },
            "root": {"path": "rootfs", "readonly": True},
            "hostname": "sandbox",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},  # runsc makes /dev itself
                {
                    "destination": "/tmp",
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "nodev", f"size={self.TMP_MB}m"],
                },
                *(read_only(path) for path in binds),
            ],
            "linux": {"namespaces": [{"type": kind} for kind in ("pid", "network", "ipc", "uts", "mount")]},
        }


class BwrapBackend(Backend):
    name = "bwrap"
    private_scratch = ("/tmp", "/dev/shm")

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
        for top, target in _system_tops():
            argv += ["--symlink", str(target), top] if target is not None else ["--ro-bind", top, top]
        for path in _read_only_paths():
            argv += ["--ro-bind", str(path), str(path)]
        argv += ["--dev", "/dev", "--proc", "/proc", "--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
        for key, value in self.environment().items():
            argv += ["--setenv", key, value]
        return argv


IMAGE_REPOSITORY = "qllm-sandbox"
"""The local image the Docker backend builds: ``qllm-sandbox:<hash of its contents>``."""


def _image_layer() -> bytes:
    """The sandbox image's only layer, as a tar: the symlinks of a merged-/usr system (``/lib ->
    usr/lib``) and nothing else. Everything the worker runs is bound in read-only."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for top, target in _system_tops():
            if target is not None:
                link = tarfile.TarInfo(top.lstrip("/"))
                # mtime 0: the same layout makes the same bytes, hence the same tag on every machine.
                link.type, link.linkname, link.mtime = tarfile.SYMTYPE, str(target), 0
                tar.addfile(link)
    return layer.getvalue()


@cache
def local_image() -> str:
    """The sandbox image's tag, built from nothing (``docker import``) the first time a machine needs it;
    never pulled. The tag names its contents' hash, so an image of another layout is another tag."""
    layer = _image_layer()
    tag = f"{IMAGE_REPOSITORY}:{hashlib.sha256(layer).hexdigest()[:16]}"
    if not _probe(["docker", "image", "inspect", tag]):
        try:
            subprocess.run(
                ["docker", "import", "-", tag], input=layer, capture_output=True, timeout=120, check=True
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            why = (exc.stderr or b"").decode(errors="replace").strip() or str(exc)
            raise SandboxUnavailableError(f"cannot build the Docker sandbox image {tag}: {why}") from None
    return tag


@cache
def _docker_runtimes() -> frozenset[str]:
    """The container runtimes the Docker engine has registered (``runc``; ``runsc`` when gVisor is)."""
    try:
        out = subprocess.run(
            ["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, timeout=20, check=True
        ).stdout
        return frozenset(json.loads(out))
    except (OSError, subprocess.SubprocessError, ValueError):
        return frozenset()


class DockerBackend(Backend):
    """The worker in a Docker container of a local image made from nothing (:func:`local_image`): only
    read-only binds of /usr, the system's library folders, the Python install, the venv and the qllm
    package exist inside; no network, a read-only root, a private /tmp, nobody, no capabilities, no new
    privileges, and pid, memory and CPU limits. No image is ever pulled (``--pull never``; an image
    named by ``QLLM_SANDBOX_DOCKER_IMAGE`` must be on the machine). Where Docker has gVisor registered
    as its ``runsc`` runtime, the container runs under it."""

    name = "docker"
    private_scratch = ("/tmp", "/dev/shm")
    runtime_pids = 64
    """The Docker client's own threads (a Go program) in the client's pids cgroup."""
    TMP_MB = 64
    CPUS = 1
    PIDS = 64
    """The container's own pids limit: its processes are the engine's children, not the client's, so
    the client's pids cgroup does not reach them."""

    def __init__(self, image: str | None = None, memory_mb: int = 4096) -> None:
        self.image = image or os.environ.get(DOCKER_IMAGE_ENV) or None
        self.memory_mb = memory_mb

    def available(self) -> bool:
        """A container with these flags runs here: an engine that answers is not enough (one without the
        CPU controller refuses ``--cpus``, a runtime can be refused), and a user's image must be here."""
        if shutil.which("docker") is None or not _probe(["docker", "info", "--format", "{{.ServerVersion}}"]):
            return False
        if self.image is not None and not _probe(["docker", "image", "inspect", self.image]):
            return False
        try:
            trial = self._run_argv([sys.executable, "-I", "-c", "pass"])
        except SandboxUnavailableError:
            return False
        return _probe(trial, env=self.launcher_environment())

    def launcher_environment(self) -> dict[str, str]:
        """The worker's environment, plus what the client needs to find its engine: the host's
        ``DOCKER_*`` variables and its configuration folder (where ``docker context use`` keeps the
        engine). The container gets none of them: its variables are ``--env``s."""
        docker = {key: value for key, value in os.environ.items() if key in DOCKER_CLIENT_ENV}
        config = Path.home() / ".docker"
        if "DOCKER_CONFIG" not in docker and config.is_dir():
            docker["DOCKER_CONFIG"] = str(config)  # the worker's HOME is /tmp, which has none
        return {**self.environment(), **docker}

    @property
    def runtime(self) -> str | None:
        """The container runtime: ``QLLM_SANDBOX_DOCKER_RUNTIME`` if set, else ``runsc`` where the engine
        has gVisor registered, else ``None``: the engine's default (``runc`` usually)."""
        chosen = os.environ.get(DOCKER_RUNTIME_ENV, "").strip()
        return chosen or ("runsc" if "runsc" in _docker_runtimes() else None)

    def command(self) -> list[str]:
        return self._run_argv(_worker_argv())

    def _run_argv(self, process: list[str]) -> list[str]:
        client = shutil.which("docker") or "docker"  # found on the host's PATH, not the worker's
        argv = [client, "run", "--rm", "-i", "--pull", "never"]
        if self.runtime is not None:
            argv += ["--runtime", self.runtime]
        isolation = ["--network", "none", "--read-only", "--cap-drop", "ALL"]
        argv += [*isolation, "--security-opt", "no-new-privileges"]
        # Under gVisor the container's pids cgroup also holds runsc's own threads, as the gvisor backend's.
        pids = self.PIDS + (GvisorBackend.runtime_pids if self.runtime == "runsc" else 0)
        argv += ["--pids-limit", str(pids), "--cpus", str(self.CPUS)]
        argv += ["--memory", f"{self.memory_mb}m", "--memory-swap", f"{self.memory_mb}m"]
        argv += ["--user", f"{NOBODY}:{NOBODY}", "--tmpfs", f"/tmp:size={self.TMP_MB}m", "--workdir", "/tmp"]
        for path in _worker_binds():
            argv += ["--volume", f"{path}:{path}:ro"]
        for key, value in self.environment().items():
            argv += ["--env", f"{key}={value}"]
        return [*argv, self.image or local_image(), *process]


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
    b.name: b for b in (GvisorBackend, BwrapBackend, DockerBackend, UnshareBackend, ProcessBackend)
}


@cache
def _available(name: str) -> bool:
    return BACKENDS[name]().available()


def available_backends() -> list[str]:
    """The backends of the automatic order that can run here, strongest first."""
    return [name for name in AUTO_ORDER if _available(name)]


@cache
def _say_once(message: str) -> None:
    print(f"qllm: {message}", file=sys.stderr)


def detect_backend(name: str = "auto") -> Backend:
    """The backend called ``name``, or with ``auto`` the one ``QLLM_SANDBOX_BACKEND`` names, else the
    strongest one available here."""
    if name == "auto":
        name = os.environ.get(BACKEND_ENV, "").strip() or "auto"
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
            if candidate != AUTO_ORDER[0]:
                why = "does not start" if shutil.which("runsc") else "is not installed"
                _say_once(
                    f"the gvisor sandbox backend cannot run here (runsc {why}): using {candidate}, which "
                    "shares the host's kernel with generated code"
                )
            return BACKENDS[candidate]()
    raise SandboxUnavailableError(
        "no isolation backend is available: install bubblewrap (`apt-get install bubblewrap`, done by "
        "scripts/setup.sh), or make `unshare --net` work, or start a Docker engine. "
        "`--backend process` runs without network isolation; use it only for trusted code."
    )
