"""The sandbox worker: a warm process that runs each job in a fresh, resource-limited child.

Started by an isolation backend (gVisor, bubblewrap, docker, unshare...) as ``python -I -m
qllm.sandbox.worker``, it imports torch once, says it is ready, waits to be started (the host may save
it first, so that later workers resume instead of starting anew: ``snapshots.py``), then serves jobs read
from stdin as length-prefixed JSON frames (``protocol.py``). Each job goes to a child forked for it
alone, which

- starts a new session (so the whole process group can be killed),
- sends its stdout/stderr into a pipe the worker reads with a byte cap,
- reads its job from its own request pipe, then applies rlimits before any of the job's code runs: CPU
  seconds, address space (its own plus the job's memory budget), no file writes (RLIMIT_FSIZE 0), few
  file descriptors, no core dumps,
- runs the job and writes one JSON result frame into its own result pipe.

Children are forked *before* their jobs arrive, as spares: up to :data:`SPARES` of them, forked while
the worker is idle, one at a time, each only while no job is waiting (a fork cannot be interrupted). So
the generation graph's K candidates, checked back to back after the coder's turn, each find a child
ready. Forking the torch-loaded worker is slow under gVisor (tens of milliseconds), and a fresh
fork's first writes to each page it shares with the worker are copy-on-write faults that gVisor serves
slowly too, which cost more than the checks themselves. So a spare forked after a job warms up: it runs
trusted functions (equal weights, reached in the ways candidates compute theirs) through the job's own
path on that job's inputs, so that the pages a candidate's checks write are mostly its own by the time
one arrives, then says it is ready and takes its job. The warm-up runs only qllm's code, before the
limits; the candidate still runs in a process no other candidate has touched. A job that arrives while
its spare is still warming up waits for the current step only (the spare looks for it between steps).
Candidates in bursts of at most :data:`SPARES`, apart from the next burst by more than the spares'
preparation (an LLM's turn), never wait for a fork.

After each job's answer, once that job's children are gone, the worker empties the scratch folders its
backend made private to it (``QLLM_SCRATCH``: the private /tmp, /dev/shm), so that nothing a job wrote
(RLIMIT_FSIZE stops contents, not empty files and folders) is there for the next one. Backends that share
the host's /tmp set none.

The worker itself never runs candidate code, so a job that crashes, hangs, floods or corrupts its
process cannot affect the next one. Verdicts on how the child ended (timeout, signal, output flood)
are made here, outside the child.

A trainer asks for the credit of new states hundreds of times with one function, and a fork per call
costs more than the call itself. So a credit function can also be opened as a *session*
(``credit-open``): its child loads it once and answers ``credit`` jobs naming the session over its pipes
until ``credit-close``. Every call keeps its own limits: the wall clock and the output cap are enforced
here per call, the child moves its CPU-time limit to "used so far + the budget" before each call, and its
address-space limit holds throughout. A call that fails in any way ends the session (the child is
killed); the function's state may carry over between calls, as it would in any process that calls it
repeatedly. Once a child went to a session the other spares are ended and none is forked again: a
trainer's worker needs none.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import os
import posixpath
import re
import resource
import select
import signal
import stat
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from qllm.sandbox.protocol import (
    FRAME_HEADER,
    SCRATCH_ENV,
    ProtocolError,
    SandboxLimits,
    decode_array,
    encode_array,
    encode_frame,
    read_frame,
    write_frame,
)
from qllm.sandbox.result import CreditResult, EncodedArray, ErrorKind, ValidationResult, Verdict

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from qllm.sandbox.checks import CreditFunction, Tracer
    from qllm.sandbox.restricted import LoadedCandidate
RESULT_BYTES = 4 * 1024 * 1024
MAX_OPEN_FILES = 64
MAX_PROCESSES = 64
TAIL_BYTES = 2048
WARM_UP_SOURCES = (
    "def credit_assignment(agents_q, state):\n    return agents_q.sum(dim=1, keepdim=True)\n",
    """\
import torch


def credit_assignment(agents_q, state):
    n = agents_q.shape[1]
    feature = state.reshape(state.shape[0], -1).abs().mean(dim=1, keepdim=True).clamp(0.0, 10.0)
    scores = torch.exp(-feature).expand(-1, n) * 0.0 + state.norm(dim=1, keepdim=True) * 0.0
    weights = torch.softmax(torch.where(scores > 1.0, scores, torch.zeros_like(agents_q)), dim=1) * n
    return (weights * agents_q).sum(dim=1, keepdim=True) + feature.max(dim=1, keepdim=True).values * 0.0
""",
    """\
import math

import torch


def credit_assignment(agents_q, state):
    n = agents_q.shape[1]
    weights, biases = [], []
    for row in state.tolist():
        s = {"pairs": [tuple(row[j : j + 2]) for j in range(0, len(row) - 1, 2)], "values": list(row)}
        spread = max(abs(v - sum(s["values"]) / len(s["values"])) for v in s["values"])
        weights.append([math.exp(0.0 * spread + 0.0 * math.sqrt(len(s["pairs"])))] * n)
        biases.append(0.0)
    w = torch.tensor(weights, dtype=agents_q.dtype)
    b = torch.tensor(biases, dtype=agents_q.dtype)
    return (w * agents_q).sum(dim=1, keepdim=True) + b.unsqueeze(1)
""",
)
"""The trusted functions a spare runs through its predecessor's job to warm up, all equal weights (VDN):
reached directly, through the tensor operations hand-written candidates use most, and through a Python
loop over the rows as qllm's template does (named values, lists, tuples, ``math``)."""
WARMED_KINDS = frozenset({"validate", "credit"})
"""Jobs whose inputs the next spare warms up on (a probe's plain Python is not worth repeating)."""
READY_TIMEOUT_S = 10.0
"""How long a job waits for its spare to take it (it finishes its current warm-up step first) before a
fresh child is forked instead; well inside the host's margin over a job's own budget
(``client.ANSWER_MARGIN_S``)."""
READY = {"ready": True}
"""Said by the worker once warmed up, and by each child once it has its job."""
STARTED = {"started": True}
"""The worker's answer to the host's start frame (``{"kind": "start", "spares": bool}``): from then on it
serves jobs, forking spares ahead of them only if the start frame asked for them."""
SPARES = 3
"""Children kept forked ahead of jobs: the generation graph's default K (``GenerationSettings.candidates``),
whose candidates are checked back to back. Each spare costs the memory its warm-up wrote (its own copies
of the pages it touched): 6.5 MB private per spare, measured under bubblewrap."""


def main() -> None:
    # Keep the protocol stream private: anything else printed to fd 1 goes to stderr instead.
    protocol_out: IO[bytes] = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    # Unbuffered, so that a job waiting on the pipe is a job waiting on fd 0 (no read-ahead hides one).
    protocol_in: IO[bytes] = os.fdopen(0, "rb", buffering=0)
    _warm_up()
    write_frame(protocol_out, READY)
    # Nothing past this point has run when a backend saves this process (gVisor: later workers resume
    # copies of it from here, ``snapshots.py``): no spare forked, no job read. Each goes on when started.
    try:
        start = read_frame(protocol_in)
    except ProtocolError:
        return  # the host closed the pipe (or saved this process and ended it): shut down
    if start.get("kind") != "start":
        return
    _SPARES.wanted = bool(start.get("spares", True))
    write_frame(protocol_out, STARTED)
    while True:
        _SPARES.replenish(job_waiting=lambda: bool(select.select([protocol_in], [], [], 0)[0]))
        try:
            job = read_frame(protocol_in)
        except ProtocolError:
            return  # the host closed the pipe: shut down
        write_frame(protocol_out, run_job(job))
        # While the host reads the answer and prepares the next job: the exit of a finished child (tens of
        # milliseconds for a torch-sized process), then, with every child of that job gone, emptying the
        # scratch folders (up to 12 ms under gVisor, whose file system calls go through its sentry).
        _reap_retired()
        _empty_scratch()


def _warm_up() -> None:
    """Import what every job needs, so that forked children start instantly. No tensor maths here:
    thread pools created before fork() would be unusable in the children."""
    with _paths_resolved_once():
        import torch  # noqa: F401, PLC0415

        import qllm.sandbox.checks  # noqa: PLC0415
        import qllm.sandbox.restricted  # noqa: F401, PLC0415


@contextlib.contextmanager
def _paths_resolved_once() -> Iterator[None]:
    """Meanwhile, ``os.path.realpath`` keeps every path it resolved, so each folder is looked up once.

    Importing torch resolves the path of every module imported so far, about a thousand times (its
    operator registrations call ``inspect.getmodule``), and each resolution looks up every component of
    the path again: some 10,000 ``lstat`` calls, at about 0.2 ms each under gVisor (1.8 s of a worker's
    10 s start). Nothing changes the worker's files while it starts, so a resolution can be kept.
    """
    resolve = posixpath.realpath

    @functools.cache
    def resolved(path: str) -> str:
        """``path`` (absolute, normalised) with every link resolved."""
        parent, name = posixpath.split(path)
        if not name:
            return path
        joined = posixpath.join(resolved(parent), name)
        return resolve(joined) if posixpath.islink(joined) else joined

    def realpath(path: str | bytes | os.PathLike[str], *, strict: bool = False) -> str | bytes:
        text = os.fspath(path)
        # What abspath would normalise differently, the original resolves: ".." (taken lexically by
        # abspath, after links by realpath) and a leading "//" (kept by abspath).
        if strict or not isinstance(text, str) or ".." in text.split("/") or text.startswith("//"):
            return resolve(path, strict=strict)
        return resolved(posixpath.abspath(text))

    posixpath.realpath = realpath
    try:
        yield
    finally:
        posixpath.realpath = resolve


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job and return its result as a dict: a call of an open credit session in that session's
    child, any other job in a child of its own."""
    kind = job.get("kind")
    if kind == "credit" and "session" in job:
        return _SESSIONS.call(int(job["session"]), job)
    if kind == "credit-close":
        _SESSIONS.close(int(job["session"]))
        return {"ok": True}
    try:
        child = _SPARES.take(job)
    except OSError as exc:
        return _failure(ErrorKind.SANDBOX, f"cannot start a child process: {exc}", bytearray())
    if kind == "credit-open":
        return _SESSIONS.open(child)
    return child.answer_once()


def _empty_scratch() -> None:
    folders = [folder for folder in os.environ.get(SCRATCH_ENV, "").split(":") if folder]
    mounts = _mount_points() if folders else frozenset()
    for folder in folders:
        with contextlib.suppress(OSError):
            device = os.lstat(folder).st_dev
            for entry in os.scandir(folder):
                _remove_unmounted(entry.path, device, mounts)


@functools.cache
def _mount_points() -> frozenset[str]:
    """Where something is mounted, from ``/proc/self/mountinfo`` (empty if it cannot be read). Read
    once: the backend sets the worker's mounts up before it starts, and jobs cannot change them."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:  # noqa: PTH123
            # The fifth field, with space, tab, newline and backslash escaped in octal.
            return frozenset(
                re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4]) for line in mountinfo
            )
    except (OSError, IndexError):
        return frozenset()


def _remove_unmounted(top: str, device: int, mounts: frozenset[str]) -> None:
    """Remove ``top`` and everything under it, except what is mounted there (or lies on another device
    than the scratch folder's). A venv or checkout under /tmp is bound into the private /tmp, and walking
    it would unlink its files (a writable bind) or try to, one by one (a read-only one: seconds per job
    under gVisor). Iterative, so that no depth of folders a job made can exhaust the worker's stack."""
    pending = [(top, False)]  # (path, whether its contents are already on the stack above it)
    while pending:
        path, emptied = pending.pop()
        with contextlib.suppress(OSError):
            if emptied:
                os.rmdir(path)  # noqa: PTH106  (fails, and is left, where a mount is below it)
                continue
            info = os.lstat(path)
            if path in mounts or info.st_dev != device:
                continue
            if not stat.S_ISDIR(info.st_mode):  # files, and links (never followed)
                os.unlink(path)  # noqa: PTH108
                continue
            pending.append((path, True))
            pending.extend((entry.path, False) for entry in os.scandir(path))


def _address_space_bytes() -> int:
    with open("/proc/self/status") as status:  # noqa: PTH123
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


# --- children: forked ahead of their job, one job each (or one credit session) ---------------------


def _frame_complete(data: bytearray) -> bool:
    header = FRAME_HEADER.size
    return len(data) >= header and len(data) >= header + FRAME_HEADER.unpack_from(data)[0]


@dataclass
class _Child:
    """A forked child and the worker's ends of its pipes: its requests (its fd 4), its result frames (its
    fd 3) and its stdout and stderr (one pipe); ``limits`` are its job's, once it has one."""

    pid: int
    requests: int
    results: int
    output: int
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    unread: bytearray = field(default_factory=bytearray)
    """Result bytes read past the frame that said it is ready: the start of its job's answer, if any."""

    def begin(self, job: dict[str, Any]) -> str | None:
        """Hand the child ``job`` and wait until it has stopped warming up (at its next step, once the job
        is there) and taken it; None once it has, else why not (the child is then ended)."""
        self.limits = SandboxLimits(**job.get("limits", {}))
        try:
            _write_all(self.requests, encode_frame(job), time.monotonic() + READY_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            self.stop()
            return f"it did not read its job ({exc})"
        return self._await_ready(time.monotonic() + READY_TIMEOUT_S)

    def _await_ready(self, deadline: float) -> str | None:
        """Read the child's first frame, which says it is ready, by ``deadline``. Only the result pipe is
        read: a child that took its job at once may have answered it already, and both that answer (kept
        in ``unread`` for :meth:`receive`) and what it printed belong to the job."""
        while not _frame_complete(self.unread):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.results], [], [], remaining)[0]:
                return self.end((ErrorKind.SANDBOX, f"not ready after {READY_TIMEOUT_S:g}s"))["message"]
            chunk = os.read(self.results, 65536)
            if not chunk:  # it died: its exit status says how, and its traceback (if any) why
                failure = self.end(None, _read_available(self.output, TAIL_BYTES))
                return " ".join(filter(None, (failure["message"], failure["printed"].strip())))
            self.unread += chunk
        size = FRAME_HEADER.size + FRAME_HEADER.unpack_from(self.unread)[0]
        frame, self.unread = self.unread[:size], self.unread[size:]
        if _decoded(frame) != READY:
            return self.end((ErrorKind.SANDBOX, "its first message was not that it is ready"))["message"]
        return None

    def answer_once(self) -> dict[str, Any]:
        """The answer to the job it began, its only one: the child is gone afterwards in any case."""
        answer = self.receive()
        if answer.get("ok"):
            self.retire()
        return answer

    def exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send ``request`` and return the child's answer, or the verdict on why none came (the child is
        then over: it is killed); an answer that is a failure ends the child too."""
        try:
            _write_all(self.requests, encode_frame(request), time.monotonic() + self.limits.wall_s)
        except (OSError, TimeoutError) as exc:
            return self.end((ErrorKind.CRASHED, f"the child process stopped reading requests ({exc})"))
        return self.receive()

    def receive(self) -> dict[str, Any]:
        """The child's next answer within its job's limits, or the verdict on why none came."""
        result, output, verdict = _gather(
            self.results, self.output, self.limits, done=_frame_complete, result=self.unread
        )
        self.unread = bytearray()
        if verdict is not None:
            return self.end(verdict, output)
        if not _frame_complete(result):  # both pipes closed: the child died
            return self.end(None, output)
        answer = _decoded(result)
        if answer is None:
            return self.end((ErrorKind.CRASHED, "the process returned a malformed result"), output)
        answer = _with_output(answer, output)
        if not answer.get("ok"):
            self.retire()
        return answer

    def end(self, verdict: tuple[ErrorKind, str] | None, output: bytearray | None = None) -> dict[str, Any]:
        """Stop the child; the failure answer with ``verdict``, or (None) with what its exit status says
        (it died, or failed and was on its way out)."""
        status = self.stop()
        return _failure(*(verdict or _exit_verdict(status)), output or bytearray())

    def stop(self) -> int:
        """Kill the child's process group, reap it and close the pipes; its wait status."""
        self._kill()
        return self._reap()

    def retire(self) -> None:
        """Kill the child's process group now (it runs no code from here on) and reap it once the answer
        is on its way (:func:`_reap_retired`)."""
        self._kill()
        _RETIRED.append(self)

    def _kill(self) -> None:
        # The group for what its job started; the child itself too, for a child so freshly forked that
        # it has not made its own group yet (killpg finds no such group, and it would live on).
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError):
                kill(self.pid, signal.SIGKILL)

    def _reap(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        for fd in (self.requests, self.results, self.output):
            with contextlib.suppress(OSError):
                os.close(fd)
        return status


_RETIRED: list[_Child] = []
"""Children killed while their answer was being given, to reap after it."""


def _reap_retired() -> None:
    while _RETIRED:
        _RETIRED.pop()._reap()


def _decoded(frame: bytearray) -> dict[str, Any] | None:
    """The JSON object a complete frame carries, or None if it carries none."""
    try:
        message = json.loads(bytes(frame[FRAME_HEADER.size :]))
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


class _Spares:
    """The children forked ahead of the next jobs, oldest first, and the inputs they warm up on."""

    def __init__(self) -> None:
        self.ready: deque[_Child] = deque()
        self.warm_job: dict[str, Any] | None = None
        """The last warmed kind of job, with its inputs and settings, for the next spares to warm up on."""
        self.wanted = True
        """False after a job that opened a credit session, or that said no spares are wanted after it (the
        client's ``Sandbox(spares=False)``): a trainer's worker needs none."""

    def replenish(self, job_waiting: Callable[[], bool]) -> None:
        """Fork spares up to :data:`SPARES`, one at a time, each only while ``job_waiting()`` is false:
        a job that arrives meanwhile waits for one fork at most."""
        while self.wanted and len(self.ready) < SPARES and not job_waiting():
            try:
                self.ready.append(_fork_child(self.warm_job))
            except OSError:  # no process to spare now: the next job forks its own
                return

    def take(self, job: dict[str, Any]) -> _Child:
        """A child that began ``job``: the oldest spare (the likeliest to have finished warming up), or
        (none, or not ready in time) a fresh one that does not warm up."""
        child = self.ready.popleft() if self.ready else None
        if child is None or child.begin(job) is not None:
            child = _fork_child(None)
            if (why := child.begin(job)) is not None:
                raise OSError(f"a new child process did not start: {why}")
        if job.get("kind") in WARMED_KINDS:
            self.warm_job = {key: value for key, value in job.items() if key != "source"}
        self.wanted = job.get("kind") != "credit-open" and bool(job.get("spares", True))
        while not self.wanted and self.ready:  # ended with the answer, like a finished job's child
            self.ready.popleft().retire()
        return child


_SPARES = _Spares()


def _fork_child(warm_job: dict[str, Any] | None) -> _Child:
    """Fork a child that warms up on ``warm_job`` (None: it does not), says it is ready, and waits."""
    request_r, request_w = os.pipe()
    result_r, result_w = os.pipe()
    output_r, output_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        for fd in (request_w, result_r, output_r):
            os.close(fd)
        _child(warm_job, request_r=request_r, result_w=result_w, output_w=output_w)
    for fd in (request_r, result_w, output_w):
        os.close(fd)
    os.set_blocking(request_w, False)  # so that a child that stops reading cannot block the worker
    return _Child(pid, request_w, result_r, output_r)


def _enter_child(result_w: int, output_w: int, request_r: int) -> None:
    """A forked child's own session and descriptors: stdin from /dev/null, its requests on fd 4, stdout
    and stderr into the output pipe, results on fd 3, nothing else open."""
    os.setsid()
    # Copies above the numbers they go to first: a pipe that happens to be fd 3 or 4 is not overwritten.
    null, output, result, request = (
        fcntl.fcntl(fd, fcntl.F_DUPFD, 5)
        for fd in (os.open(os.devnull, os.O_RDONLY), output_w, result_w, request_r)
    )
    for fd, number in ((null, 0), (output, 1), (output, 2), (result, 3), (request, 4)):
        os.dup2(fd, number)
    os.closerange(5, 1 << 16)  # the copies, the worker's protocol pipes, other children's pipes


def _child(warm_job: dict[str, Any] | None, *, request_r: int, result_w: int, output_w: int) -> None:
    """Warm up, say ready, take one job, apply its limits, then answer it (or serve the credit session it
    opens). Any failure ends the child; the worker gives the verdict."""
    code = 0
    try:
        _enter_child(result_w, output_w, request_r)
        import torch  # noqa: PLC0415

        torch.set_num_threads(1)
        if warm_job is not None:
            _run_warm_up(warm_job)
        _flush_standard_streams()
        with os.fdopen(4, "rb") as requests, os.fdopen(3, "wb") as results:
            write_frame(results, READY)
            try:
                job = read_frame(requests)
            except ProtocolError:
                return  # the worker went away before this child got a job
            limits = SandboxLimits(**job.get("limits", {}))
            session = job.get("kind") == "credit-open"
            _apply_limits(limits, _address_space_bytes(), session=session)
            if session:
                _serve_session(job, limits, requests, results)
            else:
                answer = _execute(job, limits)
                _flush_standard_streams()
                write_frame(results, answer)
    except BaseException:
        code = 70
        with contextlib.suppress(BaseException):  # why, for the worker's verdict (its output's tail)
            traceback.print_exc()
    finally:
        _flush_standard_streams()
        os._exit(code)


def _run_warm_up(job: dict[str, Any]) -> None:
    """The trusted warm-up functions through ``job``'s own path on its inputs; the answers are thrown
    away (and so is a failure: a warm-up only makes the next job faster), and so is what they print, so
    that the output pipe carries this child's job's output only. Once this child's own job is waiting on
    its request pipe (candidates back to back), it goes first."""
    limits = SandboxLimits(**job.get("limits", {}))
    output = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    for number in (1, 2):
        os.dup2(null, number)
    os.close(null)
    try:
        for source in WARM_UP_SOURCES:
            if select.select([4], [], [], 0)[0]:
                return
            with contextlib.suppress(Exception):
                _execute({**job, "source": source}, limits)
    finally:
        _flush_standard_streams()
        for number in (1, 2):
            os.dup2(output, number)
        os.close(output)


def _flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):  # os._exit skips Python's own flushing
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def _apply_limits(limits: SandboxLimits, baseline: int, *, session: bool) -> None:
    # The CPU budget starts now, on top of what warming up used. A session child raises its own soft
    # limit before each call (_allow_cpu), so its hard limit stays open; its calls' code is restricted and
    # cannot reach setrlimit itself.
    cpu_soft = _cpu_used_s() + limits.cpu_s
    cpu_hard = resource.RLIM_INFINITY if session else cpu_soft + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_soft, cpu_hard))
    memory = baseline + limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (MAX_OPEN_FILES, MAX_OPEN_FILES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Processes and threads of the sandbox user; a backstop against fork bombs (not enforced for root).
    resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))


def _cpu_used_s() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return math.ceil(usage.ru_utime + usage.ru_stime)


def _execute(job: dict[str, Any], limits: SandboxLimits) -> dict[str, Any]:
    import torch  # noqa: PLC0415

    torch.set_num_threads(1)
    if job.get("kind") == "probe":
        return _probe(job["source"])
    return _run_candidate(job, limits)


def _run_candidate(job: dict[str, Any], limits: SandboxLimits) -> dict[str, Any]:
    """Load the candidate under the restricted globals, then validate it (``validate`` jobs) or compute
    the credit it gives a batch of states (``credit`` jobs)."""
    result_type = CreditResult if job.get("kind") == "credit" else ValidationResult
    start = time.perf_counter()
    loaded = _load(job["source"], limits, result_type)
    if isinstance(loaded, Verdict):
        return loaded.model_dump(mode="json")
    load_time = time.perf_counter() - start
    if result_type is CreditResult:
        return _answer(loaded, job["source"], job, limits, result_type=CreditResult, run=_credit)

    def validate(function: CreditFunction, job: dict[str, Any], trace: Tracer) -> ValidationResult:
        result = _validate(function, job, trace)
        result.timings.load = load_time
        return result

    return _answer(loaded, job["source"], job, limits, result_type=ValidationResult, run=validate)


def _load(source: str, limits: SandboxLimits, result_type: type[Verdict]) -> LoadedCandidate | Verdict:
    """The candidate module loaded under the restricted globals, or the verdict on why it cannot be."""
    from qllm.sandbox.restricted import CandidateError, load_credit_function  # noqa: PLC0415

    try:
        return load_credit_function(source, print_limit=limits.output_bytes)
    except CandidateError as exc:
        return result_type.failure(exc.kind, exc.message, exc.traceback)


def _answer(
    candidate: LoadedCandidate,
    source: str,
    job: dict[str, Any],
    limits: SandboxLimits,
    *,
    result_type: type[Verdict],
    run: Callable[[CreditFunction, dict[str, Any], Tracer], Verdict],
) -> dict[str, Any]:
    """``run`` the loaded candidate on ``job``; its prints (capped) go into the answer."""
    from qllm.sandbox.restricted import OutputLimitExceeded, candidate_traceback  # noqa: PLC0415

    def trace(exc: BaseException) -> str:
        return candidate_traceback(exc, source)

    result: Verdict
    try:
        result = run(candidate.function, job, trace)
    except OutputLimitExceeded as exc:
        result = result_type.failure(ErrorKind.OUTPUT_LIMIT, str(exc))
    if candidate.output.overflowed and result.error_kind != ErrorKind.OUTPUT_LIMIT:
        result = result_type.failure(
            ErrorKind.OUTPUT_LIMIT, f"printed more than {limits.output_bytes} characters"
        )
    result.printed = candidate.output.text[-TAIL_BYTES:]
    return result.model_dump(mode="json")


def _validate(function: CreditFunction, job: dict[str, Any], trace: Tracer) -> ValidationResult:
    import torch  # noqa: PLC0415

    from qllm.sandbox.checks import CheckOptions, run_checks  # noqa: PLC0415

    agents_q = torch.from_numpy(decode_array(job["agents_q"]))
    states = torch.from_numpy(decode_array(job["states"]))
    return run_checks(function, agents_q, states, CheckOptions(**job.get("options", {})), trace=trace)


def _credit(function: CreditFunction, job: dict[str, Any], trace: Tracer) -> CreditResult:
    import torch  # noqa: PLC0415

    from qllm.sandbox.checks import CheckError, compute_credit  # noqa: PLC0415

    states = torch.from_numpy(decode_array(job["states"]))
    try:
        credit = compute_credit(function, states, int(job["n_agents"]), bool(job["monotonic"]), trace)
    except CheckError as failure:
        return CreditResult.failure(failure.kind, failure.message, failure.traceback)
    return CreditResult(ok=True, credit=EncodedArray(**encode_array(credit.detach().numpy())))


def _probe(source: str) -> dict[str, Any]:
    """Run *plain* Python (no RestrictedPython) in the limited child. Only the tests of the isolation
    layer use this, to show what the process layer alone contains; generated code never comes here."""
    try:
        exec(compile(source, "<probe>", "exec"), {"__name__": "probe"})
    except BaseException as exc:
        return ValidationResult.failure(ErrorKind.RUNTIME, f"{type(exc).__name__}: {exc}").model_dump(
            mode="json"
        )
    return ValidationResult(ok=True).model_dump(mode="json")


def _gather(
    result_r: int,
    output_r: int,
    limits: SandboxLimits,
    done: Callable[[bytearray], bool],
    result: bytearray | None = None,
) -> tuple[bytearray, bytearray, tuple[ErrorKind, str] | None]:
    """Read a child's result and output pipes until both close or ``done(result so far)`` (``result``:
    what was read of it before), within the wall-clock budget and the output caps; returns both, and the
    verdict if a limit was hit.

    Plain ``select`` on the two pipes, no epoll object made and dropped per call: under gVisor's ptrace
    platform every system call costs tens of microseconds, and a selector's set-up cost 2.6 ms a call
    against 0.23 ms for this."""
    buffers = {result_r: result if result is not None else bytearray(), output_r: bytearray()}
    open_fds = [result_r, output_r]
    deadline = time.monotonic() + limits.wall_s
    verdict: tuple[ErrorKind, str] | None = None
    while open_fds and not done(buffers[result_r]):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            verdict = (ErrorKind.TIMEOUT, f"still running after {limits.wall_s:g}s (wall-clock budget)")
            break
        for fd in select.select(open_fds, [], [], remaining)[0]:
            chunk = os.read(fd, 65536)  # readable: returns at once, with data or at end of file
            if chunk:
                buffers[fd] += chunk
            else:
                open_fds.remove(fd)
        if verdict := _over_caps(buffers[result_r], buffers[output_r], limits):
            break
    else:
        # A child flushes its output before it writes its result: what is still in the pipe belongs to it.
        buffers[output_r] += _read_available(output_r, limits.output_bytes + 1 - len(buffers[output_r]))
        verdict = _over_caps(buffers[result_r], buffers[output_r], limits)
    return buffers[result_r], buffers[output_r], verdict


def _over_caps(result: bytearray, output: bytearray, limits: SandboxLimits) -> tuple[ErrorKind, str] | None:
    if len(output) > limits.output_bytes:
        return ErrorKind.OUTPUT_LIMIT, f"wrote more than {limits.output_bytes} bytes to stdout/stderr"
    if len(result) > RESULT_BYTES:
        return ErrorKind.OUTPUT_LIMIT, "result larger than the result budget"
    return None


def _read_available(fd: int, most: int) -> bytearray:
    """Up to about ``most`` bytes that ``fd`` has to give without waiting."""
    data = bytearray()
    while len(data) < most and select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


def _with_output(answer: dict[str, Any], output: bytearray) -> dict[str, Any]:
    # Prints of the candidate come first; what the process wrote itself (warnings) after.
    printed = str(answer.get("printed", "")) + _tail(output)
    return {**answer, "printed": printed[-TAIL_BYTES:]}


def _failure(kind: ErrorKind, message: str, output: bytearray) -> dict[str, Any]:
    return ValidationResult.failure(kind, message, printed=_tail(output)).model_dump(mode="json")


def _tail(output: bytearray) -> str:
    return bytes(output[-TAIL_BYTES:]).decode(errors="replace")


# --- credit sessions: one function loaded once, called many times --------------------------------


class _Sessions:
    """The worker's open credit sessions: their children, by pid."""

    def __init__(self) -> None:
        self.open_sessions: dict[int, _Child] = {}

    def open(self, child: _Child) -> dict[str, Any]:
        answer = child.receive()  # the load verdict of the job it began
        if answer.get("ok"):
            self.open_sessions[child.pid] = child
            answer["session"] = child.pid
        return answer

    def call(self, session_id: int, job: dict[str, Any]) -> dict[str, Any]:
        session = self.open_sessions.get(session_id)
        if session is None:
            return _failure(ErrorKind.SANDBOX, f"no open credit session {session_id}", bytearray())
        answer = session.exchange({"states": job["states"]})
        if not answer.get("ok"):
            del self.open_sessions[session_id]  # exchange ended it
        return answer

    def close(self, session_id: int) -> None:
        session = self.open_sessions.pop(session_id, None)
        if session is not None:
            session.retire()


_SESSIONS = _Sessions()


def _serve_session(
    job: dict[str, Any], limits: SandboxLimits, requests: IO[bytes], results: IO[bytes]
) -> None:
    """Load the function once, answer its load verdict, then one credit answer per request until the
    worker closes the request pipe. A failed answer ends the session."""
    loaded = _load(job["source"], limits, CreditResult)
    if isinstance(loaded, Verdict):
        write_frame(results, loaded.model_dump(mode="json"))
        return
    write_frame(results, CreditResult(ok=True).model_dump(mode="json"))
    while True:
        try:
            request = read_frame(requests)
        except ProtocolError:
            return  # the worker closed the session
        _allow_cpu(limits.cpu_s)
        loaded.output.reset()
        call = {**job, **request}  # the open job's settings, this request's states
        answer = _answer(loaded, job["source"], call, limits, result_type=CreditResult, run=_credit)
        _flush_standard_streams()
        write_frame(results, answer)
        if not answer["ok"]:
            return


def _allow_cpu(budget_s: int) -> None:
    """Let the next call use ``budget_s`` more CPU seconds than this process has used so far."""
    resource.setrlimit(resource.RLIMIT_CPU, (_cpu_used_s() + budget_s, resource.RLIM_INFINITY))


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    """Write ``data`` to ``fd`` (non-blocking, as :func:`_fork_child` leaves a request pipe) by
    ``deadline``, or raise ``TimeoutError``."""
    view = memoryview(data)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
            raise TimeoutError("timed out")
        view = view[os.write(fd, view) :]


SIGNAL_VERDICTS = {
    signal.SIGXCPU: (ErrorKind.TIMEOUT, "used up its CPU-time budget"),
    signal.SIGXFSZ: (ErrorKind.OUTPUT_LIMIT, "tried to write a file"),
    signal.SIGKILL: (ErrorKind.MEMORY, "killed (most likely out of memory)"),
}


def _exit_verdict(status: int) -> tuple[ErrorKind, str]:
    """Why a child that gave no (complete) answer ended."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return SIGNAL_VERDICTS.get(
            sig, (ErrorKind.CRASHED, f"the process died with {signal.Signals(sig).name}")
        )
    return ErrorKind.CRASHED, f"the process exited with status {os.WEXITSTATUS(status)} and no result"


if __name__ == "__main__":
    main()
