"""How the sandbox worker hands a job to a forked child, driven in this process (no isolation backend).

A child is forked before its job and says it is ready once it has the job; the worker reads that, then
the answer. A busy machine can leave the worker descheduled long enough for a quick child to have said
ready *and* answered before the worker reads anything: both frames then arrive in one read.

Up to ``SPARES`` children are forked ahead, while no job waits, so that a burst of candidates each find
one; a credit session (a trainer's) needs none, and ends the others, as does a job that says it wants
none after it. After each job the worker empties its private scratch folders, but not what is bound
into them.
"""

from __future__ import annotations

import array
import fcntl
import os
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qllm.sandbox import SandboxLimits, worker
from qllm.sandbox.protocol import SCRATCH_ENV, encode_frame


def _bytes_waiting(fd: int) -> int:
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


def test_a_child_that_answers_before_the_worker_reads_that_it_is_ready_keeps_its_answer_and_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    child = worker._fork_child(None)
    ready_bytes = len(encode_frame(worker.READY))
    write_all: Callable[[int, bytes, float], None] = worker._write_all

    def write_then_look_away(fd: int, data: bytes, deadline: float) -> None:
        write_all(fd, data, deadline)
        give_up = time.monotonic() + 30
        while _bytes_waiting(child.results) <= ready_bytes:  # until its answer is behind the ready frame
            assert time.monotonic() < give_up, "the child did not answer"
            time.sleep(0.01)

    monkeypatch.setattr(worker, "_write_all", write_then_look_away)
    # To fd 1 itself: this process's sys.stdout is pytest's capture, not the child's output pipe.
    probe = "import os\nos.write(1, b'from the job')"
    job = {"kind": "probe", "source": probe, "limits": SandboxLimits(wall_s=20).to_dict()}

    assert child.begin(job) is None
    answer = child.answer_once()
    worker._reap_retired()

    assert answer["ok"], answer
    assert "from the job" in answer["printed"]


def _probe(source: str) -> dict[str, object]:
    return {"kind": "probe", "source": source, "limits": SandboxLimits(wall_s=20).to_dict()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def spares() -> Iterator[worker._Spares]:
    pool = worker._Spares()
    yield pool
    while pool.ready:
        pool.ready.popleft().stop()
    worker._reap_retired()


def test_spares_are_forked_only_while_no_job_waits_and_up_to_their_number(spares: worker._Spares) -> None:
    waiting = iter([False, True])
    spares.replenish(job_waiting=lambda: next(waiting))
    assert len(spares.ready) == 1  # a job came after the first fork: it is not kept waiting for more

    spares.replenish(job_waiting=lambda: False)
    assert len(spares.ready) == worker.SPARES
    assert all(_alive(child.pid) for child in spares.ready)


def test_a_burst_of_jobs_runs_in_children_forked_before_it_each_in_its_own(spares: worker._Spares) -> None:
    spares.replenish(job_waiting=lambda: False)
    forked_ahead = {child.pid for child in spares.ready}
    # A job's child leads its own session: its process group id is its pid.
    job = _probe("import os\nos.write(1, str(os.getpgid(0)).encode())")

    ran_in = []
    for _ in range(worker.SPARES):
        answer = spares.take(job).answer_once()
        assert answer["ok"], answer
        ran_in.append(int(answer["printed"]))
    worker._reap_retired()

    assert sorted(ran_in) == sorted(forked_ahead)
    assert not spares.ready


def test_a_credit_session_ends_the_other_spares_and_none_are_forked_after_it(
    spares: worker._Spares,
) -> None:
    spares.replenish(job_waiting=lambda: False)
    others = [child.pid for child in list(spares.ready)[1:]]
    job = {
        "kind": "credit-open",
        "source": "def credit_assignment(agents_q, state):\n    return agents_q.sum(dim=1, keepdim=True)\n",
        "n_agents": 2,
        "monotonic": True,
        "limits": SandboxLimits(wall_s=20).to_dict(),
    }
    session_child = spares.take(job)
    try:
        worker._reap_retired()
        assert others and not any(_alive(pid) for pid in others)
        spares.replenish(job_waiting=lambda: False)
        assert not spares.ready
    finally:
        session_child.stop()


def test_a_job_that_wants_no_spares_after_it_ends_the_others_and_none_are_forked_after_it(
    spares: worker._Spares,
) -> None:
    # A trainer's validation (Sandbox(spares=False)): spares warmed on its states would be memory for nothing.
    spares.replenish(job_waiting=lambda: False)
    others = [child.pid for child in list(spares.ready)[1:]]
    answer = spares.take({**_probe("x = 1"), "spares": False}).answer_once()
    assert answer["ok"], answer
    worker._reap_retired()
    assert others and not any(_alive(pid) for pid in others)
    spares.replenish(job_waiting=lambda: False)
    assert not spares.ready


def test_emptying_the_scratch_folder_removes_what_jobs_wrote_but_not_what_is_bound_into_it(
    tmp_path: Path,
) -> None:
    # A venv or checkout under /tmp is bound into the private /tmp the worker empties after each job.
    scratch, outside = tmp_path.resolve() / "scratch", tmp_path.resolve() / "venv"
    mount_point = scratch / "tmp" / "venv"
    mount_point.mkdir(parents=True)
    (scratch / "tmp" / "written").write_text("by a job")
    (scratch / "made" / "deeper").mkdir(parents=True)
    (scratch / "made" / "deeper" / "file").write_text("by a job")
    outside.mkdir()
    (outside / "site.py").write_text("not the job's")
    bind_then_empty = (
        "import subprocess\n"
        f"subprocess.run(['mount', '--bind', {str(outside)!r}, {str(mount_point)!r}], check=True)\n"
        "from qllm.sandbox import worker\n"
        "worker._empty_scratch()\n"
    )
    # A mount namespace of its own, so that the bind is gone with it.
    subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", bind_then_empty],
        env={**os.environ, SCRATCH_ENV: str(scratch)},
        check=True,
        timeout=60,
    )

    assert (outside / "site.py").read_text() == "not the job's"
    assert sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*")) == ["tmp", "tmp/venv"]


def test_while_the_worker_imports_paths_resolve_as_realpath_does_each_looked_up_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "real" / "inner").mkdir(parents=True)
    (tmp_path / "real" / "inner" / "module.py").write_text("")
    (tmp_path / "real" / "inner" / "other.py").write_text("")
    (tmp_path / "folder-link").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "relative-link").symlink_to("inner")
    (tmp_path / "real" / "file-link.py").symlink_to(tmp_path / "real" / "inner" / "module.py")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    monkeypatch.chdir(tmp_path / "real")
    linked = tmp_path / "folder-link" / "inner"
    paths = [
        linked / "module.py",
        tmp_path / "folder-link" / "relative-link" / "module.py",
        tmp_path / "real" / "file-link.py",
        tmp_path / "folder-link" / "missing" / "module.py",
        linked / ".." / "relative-link",
        tmp_path / "loop" / "module.py",
        "relative-link/module.py",
        f"{linked}/./module.py/",
        f"/{linked}/module.py",
        os.fsencode(linked / "module.py"),
        "",
        ".",
        "/",
    ]
    expected = [os.path.realpath(path) for path in paths]
    original = os.path.realpath
    looked_up: list[str] = []
    lstat = os.lstat

    def counted_lstat(path: str, *args: object, **kwargs: object) -> os.stat_result:
        looked_up.append(os.fsdecode(path))
        return lstat(path, *args, **kwargs)

    with worker._paths_resolved_once():
        assert os.path.realpath is not original  # it is the one in force, and gives the same paths:
        assert [os.path.realpath(path) for path in paths] == expected
        monkeypatch.setattr(os, "lstat", counted_lstat)
        assert os.path.realpath(linked / "other.py") == str(tmp_path / "real" / "inner" / "other.py")
        assert looked_up == [str(tmp_path / "real" / "inner" / "other.py")]  # its folder was kept
        looked_up.clear()
        assert [os.path.realpath(path) for path in paths[:4]] == expected[:4]
        assert looked_up == []  # each kept whole
        monkeypatch.setattr(os, "lstat", lstat)
        with pytest.raises(FileNotFoundError):
            os.path.realpath(paths[3], strict=True)
    assert os.path.realpath is original


def test_the_worker_module_imports_no_torch_before_its_warm_up() -> None:
    """The worker imports torch in ``_warm_up``, under ``_paths_resolved_once``; importing the package
    on the way to the worker module must not have done it already."""
    check = "import sys, qllm.sandbox.worker; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-I", "-c", check], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_sandbox_package_s_names_are_their_modules_and_type_checkers_see_the_same() -> None:
    import ast
    import importlib

    import qllm.sandbox as package
    from qllm.pysource import parse_python

    for name in package.__all__:
        module = importlib.import_module(f"qllm.sandbox.{package._MODULE_OF[name]}")
        assert getattr(package, name) is getattr(module, name)
    tree = parse_python(Path(package.__file__).read_text())
    typed = {
        (node.module, alias.name)
        for block in tree.body
        if isinstance(block, ast.If)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == {(f"qllm.sandbox.{module}", name) for name, module in package._MODULE_OF.items()}
    assert sorted(package.__all__) == sorted(package._MODULE_OF)
    with pytest.raises(AttributeError, match="no attribute 'Missing'"):
        package.Missing  # noqa: B018
