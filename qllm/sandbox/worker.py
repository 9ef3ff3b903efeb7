"""The sandbox worker: a warm process that runs each job in a fresh, resource-limited child.

Started by an isolation backend (bubblewrap, docker, unshare...) as ``python -I -m qllm.sandbox.worker``,
it imports torch once, says it is ready, then serves jobs read from stdin as length-prefixed JSON frames
(``protocol.py``). For each job it forks a child that

- starts a new session (so the whole process group can be killed),
- sends its stdout/stderr into a pipe the worker reads with a byte cap,
- applies rlimits: CPU seconds, address space (the worker's own plus the job's memory budget), no
  file writes (RLIMIT_FSIZE 0), few file descriptors, no core dumps,
- runs the job and writes one JSON result into a private pipe.

After each job the worker empties the scratch folders its backend made private to it (``QLLM_SCRATCH``:
the private /tmp, /dev/shm), so that nothing a job wrote (RLIMIT_FSIZE stops contents, not empty files and
folders) is there for the next one. Backends that share the host's /tmp set none.

The worker itself never runs candidate code, so a job that crashes, hangs, floods or corrupts its
process cannot affect the next one. Verdicts on how the child ended (timeout, signal, output flood)
are made here, outside the child.

A trainer asks for the credit of new states hundreds of times with one function, and a fork per call
costs more than the call itself (a fork of the torch-loaded worker is tens of milliseconds under
gVisor). So a credit function can also be opened as a *session* (``credit-open``): one limited child
loads it once and answers ``credit`` jobs naming the session over its own pipes until ``credit-close``.
Every call keeps its own limits: the wall clock and the output cap are enforced here per call, the
child moves its CPU-time limit to "used so far + the budget" before each call, and its address-space
limit holds throughout. A call that fails in any way ends the session (the child is killed); the
function's state may carry over between calls, as it would in any process that calls it repeatedly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import select
import selectors
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
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
    from collections.abc import Callable

    from qllm.sandbox.checks import CreditFunction, Tracer
    from qllm.sandbox.restricted import LoadedCandidate

RESULT_BYTES = 4 * 1024 * 1024
MAX_OPEN_FILES = 64
MAX_PROCESSES = 64
TAIL_BYTES = 2048


def main() -> None:
    # Keep the protocol stream private: anything else printed to fd 1 goes to stderr instead.
    protocol_out: IO[bytes] = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    protocol_in = sys.stdin.buffer
    _warm_up()
    write_frame(protocol_out, {"ready": True, "pid": os.getpid()})
    while True:
        try:
            job = read_frame(protocol_in)
        except ProtocolError:
            return  # the host closed the pipe: shut down
        write_frame(protocol_out, run_job(job))


def _warm_up() -> None:
    """Import what every job needs, so that forked children start instantly. No tensor maths here:
    thread pools created before fork() would be unusable in the children."""
    import torch  # noqa: F401, PLC0415

    import qllm.sandbox.checks  # noqa: PLC0415
    import qllm.sandbox.restricted  # noqa: F401, PLC0415


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job and return its result as a dict: a credit-session job in its session's child, any
    other in a new forked, limited child."""
    kind = job.get("kind")
    try:
        if kind == "credit-open":
            return _SESSIONS.open(job)
        if kind == "credit" and "session" in job:
            return _SESSIONS.call(int(job["session"]), job)
        if kind == "credit-close":
            _SESSIONS.close(int(job["session"]))
            return {"ok": True}
    finally:
        _empty_scratch()
    limits = SandboxLimits(**job.get("limits", {}))
    result_r, result_w = os.pipe()
    output_r, output_w = os.pipe()
    baseline = _address_space_bytes()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(result_r)
        os.close(output_r)
        _child(job, limits, result_w, output_w, baseline)
    os.close(result_w)
    os.close(output_w)
    try:
        return _supervise(pid, result_r, output_r, limits)  # the host times the whole round trip
    finally:
        _empty_scratch()


def _empty_scratch() -> None:
    for folder in filter(None, os.environ.get(SCRATCH_ENV, "").split(":")):
        with contextlib.suppress(OSError):
            for entry in Path(folder).iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def _address_space_bytes() -> int:
    with open("/proc/self/status") as status:  # noqa: PTH123
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _enter_child(result_w: int, output_w: int, request_r: int | None = None) -> None:
    """A forked child's own session and descriptors: stdin from /dev/null (or, for a credit session, its
    requests on fd 4), stdout and stderr into the output pipe, results on fd 3, nothing else open."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(output_w, 1)
    os.dup2(output_w, 2)
    os.dup2(result_w, 3)
    first_closed = 4
    if request_r is not None:
        os.dup2(request_r, 4)
        first_closed = 5
    os.closerange(first_closed, 1 << 16)  # the worker's protocol pipes and other sessions' among them


def _child(job: dict[str, Any], limits: SandboxLimits, result_w: int, output_w: int, baseline: int) -> None:
    code = 0
    try:
        _enter_child(result_w, output_w)
        _apply_limits(limits, baseline)
        payload = json.dumps(_execute(job, limits)).encode()
        for stream in (sys.stdout, sys.stderr):  # os._exit below skips Python's own flushing
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        with os.fdopen(3, "wb") as out:
            out.write(payload[:RESULT_BYTES])
    except BaseException:
        code = 70
    finally:
        os._exit(code)


def _apply_limits(limits: SandboxLimits, baseline: int, *, session: bool = False) -> None:
    # A session child raises its own soft CPU limit before each call (_allow_cpu), so its hard limit
    # stays open; its calls' code is restricted and cannot reach setrlimit itself.
    cpu_hard = resource.RLIM_INFINITY if session else limits.cpu_s + 1
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, cpu_hard))
    memory = baseline + limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (MAX_OPEN_FILES, MAX_OPEN_FILES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Processes and threads of the sandbox user; a backstop against fork bombs (not enforced for root).
    resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))


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


def _supervise(pid: int, result_r: int, output_r: int, limits: SandboxLimits) -> dict[str, Any]:
    """Collect the child's result and output until it exits, enforcing wall-clock and output caps."""
    result, output, verdict = _gather(result_r, output_r, limits, done=lambda _: False)
    if verdict is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    for fd in (result_r, output_r):
        os.close(fd)
    if verdict is None:
        verdict_or_result = _exit_verdict(status, bytes(result))
        if isinstance(verdict_or_result, dict):
            return _with_output(verdict_or_result, output)
        verdict = verdict_or_result
    kind, message = verdict
    return _failure(kind, message, output)


def _gather(
    result_r: int, output_r: int, limits: SandboxLimits, done: Callable[[bytearray], bool]
) -> tuple[bytearray, bytearray, tuple[ErrorKind, str] | None]:
    """Read a child's result and output pipes until both close or ``done(result so far)``, within the
    wall-clock budget and the output caps; returns both, and the verdict if a limit was hit."""
    selector = selectors.DefaultSelector()
    buffers = {result_r: bytearray(), output_r: bytearray()}
    for fd in buffers:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + limits.wall_s
    verdict: tuple[ErrorKind, str] | None = None
    while selector.get_map() and not done(buffers[result_r]):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            verdict = (ErrorKind.TIMEOUT, f"still running after {limits.wall_s:g}s (wall-clock budget)")
            break
        for key, _ in selector.select(timeout=remaining):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fd)
                continue
            buffers[key.fd] += chunk
        if len(buffers[output_r]) > limits.output_bytes:
            verdict = (
                ErrorKind.OUTPUT_LIMIT,
                f"wrote more than {limits.output_bytes} bytes to stdout/stderr",
            )
            break
        if len(buffers[result_r]) > RESULT_BYTES:
            verdict = (ErrorKind.OUTPUT_LIMIT, "result larger than the result budget")
            break
    selector.close()
    return buffers[result_r], buffers[output_r], verdict


def _with_output(answer: dict[str, Any], output: bytearray) -> dict[str, Any]:
    # Prints of the candidate come first; what the process wrote itself (warnings) after.
    printed = str(answer.get("printed", "")) + _tail(output)
    return {**answer, "printed": printed[-TAIL_BYTES:]}


def _failure(kind: ErrorKind, message: str, output: bytearray) -> dict[str, Any]:
    return ValidationResult.failure(kind, message, printed=_tail(output)).model_dump(mode="json")


def _tail(output: bytearray) -> str:
    return bytes(output[-TAIL_BYTES:]).decode(errors="replace")


# --- credit sessions: one function loaded once, called many times --------------------------------


def _frame_complete(data: bytearray) -> bool:
    header = FRAME_HEADER.size
    return len(data) >= header and len(data) >= header + FRAME_HEADER.unpack_from(data)[0]


@dataclass
class _Session:
    """A limited child holding one loaded credit function, and the worker's ends of its pipes."""

    pid: int
    requests: int
    results: int
    output: int
    limits: SandboxLimits

    def exchange(self, request: dict[str, Any] | None) -> dict[str, Any]:
        """Send ``request`` (None: wait for the load verdict) and return the child's answer, or the
        verdict on why none came (the session is then over: the child is killed)."""
        if request is not None:
            try:
                _write_all(self.requests, encode_frame(request), time.monotonic() + self.limits.wall_s)
            except (OSError, TimeoutError) as exc:
                return self.end((ErrorKind.CRASHED, f"the credit process stopped reading requests ({exc})"))
        result, output, verdict = _gather(self.results, self.output, self.limits, done=_frame_complete)
        if verdict is not None:
            return self.end(verdict, output)
        if not _frame_complete(result):  # both pipes closed: the child died
            return self.end(None, output)
        try:
            answer = json.loads(bytes(result[FRAME_HEADER.size :]))
        except ValueError:
            return self.end((ErrorKind.CRASHED, "the process returned a malformed result"), output)
        answer = _with_output(answer, output)
        if not answer.get("ok"):
            self.end(None)
        return answer

    def end(self, verdict: tuple[ErrorKind, str] | None, output: bytearray | None = None) -> dict[str, Any]:
        """Kill and reap the child; the failure answer with ``verdict``, or (None) with what its exit
        status says (it died, or failed and was on its way out)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        for fd in (self.requests, self.results, self.output):
            with contextlib.suppress(OSError):
                os.close(fd)
        if verdict is None:
            exit_verdict = _exit_verdict(status, b"")  # no payload: always a verdict
            verdict = exit_verdict if isinstance(exit_verdict, tuple) else (ErrorKind.CRASHED, "no result")
        return _failure(*verdict, output or bytearray())


class _Sessions:
    """The worker's open credit sessions, by their child's pid."""

    def __init__(self) -> None:
        self.open_sessions: dict[int, _Session] = {}

    def open(self, job: dict[str, Any]) -> dict[str, Any]:
        limits = SandboxLimits(**job.get("limits", {}))
        request_r, request_w = os.pipe()
        result_r, result_w = os.pipe()
        output_r, output_w = os.pipe()
        baseline = _address_space_bytes()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            for fd in (request_w, result_r, output_r):
                os.close(fd)
            _session_child(job, limits, baseline, request_r=request_r, result_w=result_w, output_w=output_w)
        for fd in (request_r, result_w, output_w):
            os.close(fd)
        session = _Session(pid, request_w, result_r, output_r, limits)
        answer = session.exchange(None)
        if answer.get("ok"):
            self.open_sessions[pid] = session
            answer["session"] = pid
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
            session.end((ErrorKind.SANDBOX, "closed"))


_SESSIONS = _Sessions()


def _session_child(
    job: dict[str, Any], limits: SandboxLimits, baseline: int, *, request_r: int, result_w: int, output_w: int
) -> None:
    """Load the function once, answer its load verdict, then one credit answer per request until the
    worker closes the request pipe. Any failure is answered and ends the child."""
    code = 0
    try:
        _enter_child(result_w, output_w, request_r)
        _apply_limits(limits, baseline, session=True)
        import torch  # noqa: PLC0415

        torch.set_num_threads(1)
        with os.fdopen(4, "rb") as requests, os.fdopen(3, "wb") as results:
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
                write_frame(results, answer)
                if not answer["ok"]:
                    return
    except BaseException:
        code = 70
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def _allow_cpu(budget_s: int) -> None:
    """Let the next call use ``budget_s`` more CPU seconds than this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = math.ceil(usage.ru_utime + usage.ru_stime)
    resource.setrlimit(resource.RLIMIT_CPU, (used + budget_s, resource.RLIM_INFINITY))


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    os.set_blocking(fd, False)
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


def _exit_verdict(status: int, payload: bytes) -> dict[str, Any] | tuple[ErrorKind, str]:
    """The child's result, or why there is none."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return SIGNAL_VERDICTS.get(
            sig, (ErrorKind.CRASHED, f"the process died with {signal.Signals(sig).name}")
        )
    if os.WEXITSTATUS(status) != 0 or not payload:
        return ErrorKind.CRASHED, f"the process exited with status {os.WEXITSTATUS(status)} and no result"
    try:
        return json.loads(payload)
    except ValueError:
        return ErrorKind.CRASHED, "the process returned a malformed result"


if __name__ == "__main__":
    main()
