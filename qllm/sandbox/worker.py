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
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from qllm.sandbox.protocol import (
    SCRATCH_ENV,
    ProtocolError,
    SandboxLimits,
    decode_array,
    encode_array,
    read_frame,
    write_frame,
)
from qllm.sandbox.result import CreditResult, EncodedArray, ErrorKind, ValidationResult, Verdict

if TYPE_CHECKING:
    from qllm.sandbox.checks import CreditFunction, Tracer

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
    """Run one job in a forked, limited child and return its result as a dict."""
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


def _child(job: dict[str, Any], limits: SandboxLimits, result_w: int, output_w: int, baseline: int) -> None:
    code = 0
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output_w, 1)
        os.dup2(output_w, 2)
        os.dup2(result_w, 3)
        os.closerange(4, 1 << 16)  # the worker's protocol pipes among them
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


def _apply_limits(limits: SandboxLimits, baseline: int) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
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
    from qllm.sandbox.restricted import (  # noqa: PLC0415
        CandidateError,
        OutputLimitExceeded,
        candidate_traceback,
        load_credit_function,
    )

    source = job["source"]
    result_type = CreditResult if job.get("kind") == "credit" else ValidationResult
    start = time.perf_counter()
    try:
        candidate = load_credit_function(source, print_limit=limits.output_bytes)
    except CandidateError as exc:
        return result_type.failure(exc.kind, exc.message, exc.traceback).model_dump(mode="json")
    load_time = time.perf_counter() - start

    def trace(exc: BaseException) -> str:
        return candidate_traceback(exc, source)

    result: Verdict
    try:
        if result_type is CreditResult:
            result = _credit(candidate.function, job, trace)
        else:
            result = _validate(candidate.function, job, trace)
            result.timings.load = load_time
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
    selector = selectors.DefaultSelector()
    buffers = {result_r: bytearray(), output_r: bytearray()}
    for fd in buffers:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + limits.wall_s
    verdict: tuple[ErrorKind, str] | None = None
    while selector.get_map():
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
    if verdict is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    selector.close()
    for fd in buffers:
        os.close(fd)
    output_tail = bytes(buffers[output_r][-TAIL_BYTES:]).decode(errors="replace")
    if verdict is None:
        verdict_or_result = _exit_verdict(status, bytes(buffers[result_r]))
        if isinstance(verdict_or_result, dict):
            # Prints of the candidate come first; what the process wrote itself (warnings) after.
            printed = str(verdict_or_result.get("printed", "")) + output_tail
            return {**verdict_or_result, "printed": printed[-TAIL_BYTES:]}
        verdict = verdict_or_result
    kind, message = verdict
    return ValidationResult.failure(kind, message, printed=output_tail).model_dump(mode="json")


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
