"""The process layer alone contains plain Python: what holds even if the language layer were bypassed.

These tests run *unrestricted* probe code in the sandbox (``Sandbox.probe``), so they show what the
isolation backend and the worker's rlimits guarantee by themselves, under each backend that hides the
host's files: gvisor and bwrap (``scripts/setup.sh`` installs both, so CI runs both), and docker where an
engine runs (``scripts/test.sh`` starts one where it can, and then requires these tests to run).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from qllm.envs.recording import record
from qllm.sandbox import ErrorKind, Sandbox, SandboxLimits, ValidationInputs, detect_backend
from qllm.sandbox.backends import (
    AUTO_ORDER,
    BACKENDS,
    DockerBackend,
    GvisorBackend,
    SandboxUnavailableError,
    _docker_runtimes,
    available_backends,
    local_image,
)
from qllm.sandbox.snapshots import SNAPSHOTS_ENV

ROOT = Path(__file__).resolve().parents[1]
VDN = "def credit_assignment(agents_q, state):\n    return agents_q.sum(dim=1, keepdim=True)\n"


REQUIRE_DOCKER = os.environ.get("QLLM_REQUIRE_DOCKER") == "1"
"""Set by ``scripts/test.sh`` when a Docker engine runs: the Docker tests must run, not skip."""
DOCKER = REQUIRE_DOCKER or DockerBackend().available()
HIDING_BACKENDS = ("gvisor:cold", "gvisor:resumed", "bwrap", *(("docker",) if DOCKER else ()))
"""Each backend that hides the host's files; gVisor's workers both started anew and resumed from a saved
one (``snapshots.py``), which must hold everything a fresh one does."""
needs_docker = pytest.mark.skipif(
    not DOCKER, reason="no Docker engine runs here (scripts/test.sh starts one where it can: root, docker.io)"
)


@pytest.fixture(scope="module", params=HIDING_BACKENDS)
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    limits = SandboxLimits(wall_s=5.0, cpu_s=5, memory_mb=256)
    backend, _, start = request.param.partition(":")
    with pytest.MonkeyPatch.context() as patch:
        if start == "cold":  # then also the workers that replace a killed one
            patch.setenv(SNAPSHOTS_ENV, "0")
        elif start == "resumed":
            patch.delenv(SNAPSHOTS_ENV, raising=False)
        with Sandbox(limits=limits, backend=backend) as box:  # refused, not skipped, where one is missing
            if start:
                assert box.probe("pass").ok
                assert box._worker.resumed == (start == "resumed")
            yield box


def test_the_strongest_backend_is_chosen_and_reported() -> None:
    # scripts/setup.sh installs runsc and bubblewrap, so CI runs gVisor, the strongest backend.
    assert available_backends()[:2] == ["gvisor", "bwrap"]
    with Sandbox() as auto:
        assert auto.backend.name == "gvisor"
        result = auto.probe("pass")
    assert result.ok and result.backend == "gvisor"


def test_the_environment_variable_forces_a_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QLLM_SANDBOX_BACKEND", "bwrap")
    assert detect_backend().name == "bwrap"
    monkeypatch.setenv("QLLM_SANDBOX_BACKEND", "vm")
    with pytest.raises(SandboxUnavailableError, match="unknown sandbox backend 'vm'"):
        detect_backend()


def test_a_weaker_backend_is_used_and_said_once_where_gvisor_cannot_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "/nowhere")  # no runsc (nor anything else) on the PATH
    monkeypatch.setattr("qllm.sandbox.backends._available", lambda name: name in {"bwrap", "unshare"})
    assert [detect_backend().name for _ in range(3)] == ["bwrap"] * 3
    lines = [line for line in capsys.readouterr().err.splitlines() if "gvisor" in line]
    assert lines == [
        "qllm: the gvisor sandbox backend cannot run here (runsc is not installed): using bwrap, which "
        "shares the host's kernel with generated code"
    ]


def test_host_files_outside_the_binds_do_not_exist_inside(sandbox: Sandbox) -> None:
    home = Path.home()
    for hidden in (
        "/etc/shadow",
        "/etc/passwd",
        str(ROOT / ".git"),
        str(home / ".cache"),
        "/var",
        "/root/.bashrc",
    ):
        result = sandbox.probe(f"import os\nassert not os.path.exists({hidden!r}), 'visible'")
        assert result.ok, (hidden, result.message)


def test_nothing_written_inside_survives_the_call(sandbox: Sandbox) -> None:
    # RLIMIT_FSIZE=0 stops contents, not empty files and folders: those land in the private /tmp, which
    # the worker empties after every job.
    written = sandbox.probe("import os\nopen('/tmp/qllm-left', 'w').close()\nos.mkdir('/tmp/qllm-dir')")
    assert written.ok, written.message
    assert not Path("/tmp/qllm-left").exists() and not Path("/tmp/qllm-dir").exists()  # not the host's /tmp
    after = sandbox.probe("import os\nprint(sorted(os.listdir('/tmp')))")
    assert after.ok and after.printed.strip() == "[]"


def test_the_gvisor_bundle_binds_only_what_the_worker_needs() -> None:
    backend = GvisorBackend()
    spec = backend._spec(["python"])
    binds = {m["destination"] for m in spec["mounts"] if m["type"] == "bind"}
    assert all("ro" in m["options"] for m in spec["mounts"] if m["type"] == "bind")
    assert str(ROOT / ".git") not in binds and str(ROOT) not in binds and "/etc" not in binds
    assert spec["root"]["readonly"] and spec["process"]["user"] == {"uid": 65534, "gid": 65534}
    assert not any(spec["process"]["capabilities"].values())
    assert "--network=none" in backend.command()
    assert AUTO_ORDER[0] == "gvisor"


def test_no_network_even_to_the_host_loopback(sandbox: Sandbox) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    result = sandbox.probe(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
    assert not result.ok
    assert "Connection refused" in result.message or "unreachable" in result.message
    with pytest.raises(TimeoutError):
        server.accept()
    server.close()
    interfaces = sandbox.probe("import socket\nprint(socket.if_nameindex())")
    assert interfaces.ok and interfaces.printed.strip() == "[(1, 'lo')]"  # loopback only, its own


def test_files_are_read_only_and_the_rest_is_invisible(sandbox: Sandbox, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    host_tmp = Path("/tmp") / f"qllm-escape-{os.getpid()}"
    for target in (canary, ROOT / "escaped.txt", host_tmp):
        result = sandbox.probe(f"with open({str(target)!r}, 'w') as f:\n    f.write('escaped')")
        assert not result.ok, target  # read-only mounts, and RLIMIT_FSIZE=0 on the private /tmp
    assert not canary.exists() and not (ROOT / "escaped.txt").exists() and not host_tmp.exists()
    # Only the interpreter, the venv and the qllm package are mounted: the repository itself is not.
    assert not sandbox.probe(f"open({str(ROOT / 'pyproject.toml')!r}).read()").ok
    assert sandbox.probe(f"print(open({str(ROOT / 'qllm' / '__init__.py')!r}).read()[:3])").ok


def test_runs_as_nobody_in_its_own_process_namespace(sandbox: Sandbox) -> None:
    result = sandbox.probe(f"import os\nassert os.getuid() == 65534\nos.kill({os.getpid()}, 9)")
    assert not result.ok and "ProcessLookupError" in result.message  # the host's pids do not exist there


def test_memory_cpu_output_and_process_limits(sandbox: Sandbox) -> None:
    assert "MemoryError" in sandbox.probe("hog = bytearray(2 * 1024**3)").message
    assert sandbox.probe("while True:\n    pass").error_kind == ErrorKind.TIMEOUT
    flood = sandbox.probe("import os\nfor _ in range(10**5):\n    os.write(1, b'x' * 1024)")
    assert flood.error_kind == ErrorKind.OUTPUT_LIMIT
    forks = sandbox.probe(
        "import os, time\n"
        "for _ in range(200):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(3)\n"
        "        os._exit(0)\n"
    )
    assert not forks.ok
    if sandbox.backend.name == "gvisor" or getattr(sandbox.backend, "runtime", "") == "runsc":
        # gVisor does not enforce RLIMIT_NPROC: the host's pids cgroup stops the flood, and the worker
        # (runsc) with it; the next job gets a new one.
        assert forks.error_kind == ErrorKind.SANDBOX
        assert sandbox.probe("pass").ok
    else:
        assert "Resource temporarily unavailable" in forks.message


def test_a_killed_worker_is_replaced_and_the_host_is_unharmed(sandbox: Sandbox) -> None:
    inputs = ValidationInputs.from_recording(record("matrix-climbing", episodes=2), max_states=8)
    result = sandbox.probe("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert not result.ok and result.error_kind in {ErrorKind.SANDBOX, ErrorKind.CRASHED}
    assert sandbox.validate(VDN, inputs).ok


def test_each_job_gets_a_fresh_process(sandbox: Sandbox) -> None:
    sandbox.probe("import torch\ntorch.sum = None")
    assert sandbox.probe("import torch\nassert torch.sum is not None").ok


def test_unknown_and_unavailable_backends_are_clear_errors() -> None:
    with pytest.raises(SandboxUnavailableError, match="unknown sandbox backend 'vm'"):
        detect_backend("vm")
    if not BACKENDS["docker"]().available():
        with pytest.raises(SandboxUnavailableError, match="docker sandbox backend is not available"):
            detect_backend("docker")


def test_docker_command_isolates_the_container() -> None:
    argv = DockerBackend(image="example/python:3.11").command()
    text = " ".join(argv)
    for flag in ("--pull never", "--network none", "--read-only", "--cap-drop ALL", "--pids-limit",
                 "--memory 4096m --memory-swap 4096m", "--cpus 1", "--user 65534:65534", "no-new-privileges",
                 "--tmpfs /tmp:size=64m"):  # fmt: skip
        assert flag in text
    volumes = [v for i, v in enumerate(argv) if argv[i - 1] == "--volume"]
    assert volumes and all(v.endswith(":ro") for v in volumes)
    assert not any(v.startswith((f"{ROOT}:", "/etc", "/root:", "/home")) for v in volumes)
    assert argv[argv.index("example/python:3.11") + 1 :][-2:] == ["-m", "qllm.sandbox.worker"]


def test_docker_runs_here_or_the_skip_says_why() -> None:
    if not DockerBackend().available():
        assert not REQUIRE_DOCKER, "QLLM_REQUIRE_DOCKER is set, but no Docker engine answers"
        pytest.skip("no Docker engine runs here (scripts/test.sh starts one where it can: root, docker.io)")


@needs_docker
def test_the_docker_image_is_built_here_from_nothing_and_never_pulled() -> None:
    tag = local_image()
    assert tag.startswith("qllm-sandbox:") and local_image() == tag  # built once, then found
    inspect = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=True)
    (image,) = json.loads(inspect.stdout)
    assert image["Size"] < 1024  # a few symlinks: everything the worker runs is bound in read-only
    argv = DockerBackend().command()
    assert tag in argv and argv[argv.index("--pull") + 1] == "never"
    assert not DockerBackend(image="qllm-sandbox:never-built").available()  # never pulled: not there


@needs_docker
def test_docker_runs_the_worker_under_gvisor_where_the_engine_has_it() -> None:
    backend = DockerBackend()
    if "runsc" not in _docker_runtimes():
        assert not REQUIRE_DOCKER or shutil.which("runsc") is None, "scripts/test.sh registers runsc"
        pytest.skip("this Docker engine has no runsc runtime")
    assert backend.runtime == "runsc"
    with Sandbox(backend="docker") as box:
        kernel = box.probe("print(open('/proc/version').read())")
    assert kernel.ok and "4.4.0" in kernel.printed  # gVisor's Sentry, not the host's kernel


def test_a_killed_backends_folder_is_removed_by_the_next_one() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    orphan = Path(tempfile.gettempdir()) / f"qllm-gvisor-{dead.pid}-test"
    (orphan / "state-x").mkdir(parents=True)
    mine = GvisorBackend()
    assert not orphan.exists() and mine._home.exists()
