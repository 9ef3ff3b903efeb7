"""The host side of the sandbox: start workers, send them candidates, read back typed verdicts.

``Sandbox`` is what the rest of qllm uses::

    with Sandbox() as sandbox:                       # picks bwrap / docker / unshare
        inputs = ValidationInputs.from_recording(load_recording("states.npz"))
        result = sandbox.validate(source, inputs)    # -> ValidationResult
        print(result.ok, result.error_kind, result.weights)

By default one worker stays warm between candidates (torch is imported once); each candidate still runs
in a child of its own inside it, forked and warmed up before the candidate arrives (``worker.py``).
``warm=False`` starts a new worker per candidate.

A trainer that needs one function's credit for new states again and again opens a
:class:`CreditSession`: the function is loaded once, in one limited child of the worker, and every call
still has its own wall-clock, CPU-time and output limits.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from qllm.envs.recording import Recording
from qllm.sandbox.backends import Backend, SaveOutcome, detect_backend
from qllm.sandbox.cgroup import PidsCgroup
from qllm.sandbox.checks import CheckOptions
from qllm.sandbox.protocol import ProtocolError, SandboxLimits, encode_array, receive_frame, write_frame
from qllm.sandbox.restricted import LoadedCandidate, load_credit_function
from qllm.sandbox.result import CreditResult, ErrorKind, ValidationResult, Verdict

START_TIMEOUT_S = 120.0
RESUME_TIMEOUT_S = 30.0
"""A copy of a saved worker starts in about 1 s; one that has not after this long is given up for a
fresh start."""
MAX_PIDS = 64
"""Processes and threads one worker and everything it starts may have at once (where cgroups allow)."""
AnyVerdict = TypeVar("AnyVerdict", bound=Verdict)
ANSWER_MARGIN_S = 15.0
"""How much longer than a job's own wall-clock budget the host waits before declaring the worker hung."""


@dataclass(frozen=True)
class ValidationInputs:
    """The batch a candidate is validated on: real states and Q-values in a realistic range."""

    agents_q: torch.Tensor
    """``[B, n_agents]`` float32."""
    states: torch.Tensor
    """``[B, state_dim]`` float32, rows of a recording."""

    @classmethod
    def from_recording(
        cls, recording: Recording, max_states: int = 256, seed: int = 0, q_scale: float | None = None
    ) -> ValidationInputs:
        """Up to ``max_states`` distinct visited states plus the all-zero padding state, and Q-values
        uniform in ``[-q_scale, q_scale]``.

        ``q_scale`` defaults to the largest absolute episode return in the recording (at least 1), the
        order of magnitude Q-values take in that task.
        """
        visited = torch.unique(recording.episodes.visited_states(), dim=0)
        if visited.shape[0] < 2:
            raise ValueError("the recording has fewer than 2 distinct states: record more episodes")
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(visited.shape[0], generator=generator)[:max_states]
        states = visited[order]
        # Trainers also evaluate the function on the all-zero state that pads finished episodes in a batch
        # (masked out of the loss, but computed): a function must not crash there either.
        padding = torch.zeros_like(states[:1])
        if not (states == padding).all(dim=1).any():
            states = torch.cat([states, padding])
        if q_scale is None:
            q_scale = max(1.0, float(recording.episodes.returns.abs().max()))
        n_agents = recording.info.n_agents
        agents_q = (torch.rand(states.shape[0], n_agents, generator=generator) * 2 - 1) * q_scale
        return cls(agents_q=agents_q.float(), states=states.float())


class CandidateFileError(ValueError):
    """A credit-function file that is missing or not text."""


def read_candidate_file(path: Path) -> str:
    """The source of a credit-function file, or :class:`CandidateFileError` saying why not."""
    if not path.is_file():
        raise CandidateFileError(f"no file at {path}: no credit-function file to load")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CandidateFileError(f"{path} is not a UTF-8 text file (expected Python source)") from None


class CandidateRejectedError(ValueError):
    """A credit function failed validation; ``result`` says why."""

    def __init__(self, result: ValidationResult) -> None:
        super().__init__(result.feedback())
        self.result = result


class SandboxWorker:
    """One worker process started through a backend, answering one job at a time.

    A worker says it is ready once warmed up, then waits for a start frame that says whether it should
    fork spare children ahead of jobs. In between, a backend that can may save it, and later workers
    resume a copy of it instead of starting anew (gVisor: ``snapshots.py``).
    """

    def __init__(self, backend: Backend, spares: bool = True) -> None:
        self.backend, self.spares = backend, spares
        self.process: subprocess.Popen[bytes] | None = None
        self.cgroup: PidsCgroup | None = None
        self.starts = 0
        """Workers started so far: state a worker held (credit sessions) is gone once this changes."""
        self.resumed = False
        """Whether the running worker is a resumed copy of a saved one."""

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        self.close()  # what a worker that died left: its process, its cgroup, its backend's state
        self.starts += 1
        self.cgroup = PidsCgroup.create(MAX_PIDS + self.backend.runtime_pids)
        if self._resume():
            return
        self._start_cold()
        saved = self.backend.save_worker()
        if saved is not SaveOutcome.NOT_TRIED:  # that worker is gone, saved or not
            self._end_process()
            if saved is SaveOutcome.SAVED and self._resume():
                return
            self._start_cold()
        self._begin(START_TIMEOUT_S)

    def submit(self, job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if not self.alive:
            self.start()
        assert self.process is not None and self.process.stdin is not None
        write_frame(self.process.stdin, job)
        return self._read(time.monotonic() + timeout_s)

    def close(self) -> None:
        self._end_process()
        self.backend.release()
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None

    def _spawn(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.backend.launcher_environment(),
            start_new_session=True,
            preexec_fn=self.cgroup.enter if self.cgroup else None,  # noqa: PLW1509  (one write, no locks)
        )

    def _start_cold(self) -> None:
        """A new worker, once it says it is ready (it then waits to be started)."""
        self.resumed = False
        self._spawn(self.backend.command())
        ready = self._read(time.monotonic() + START_TIMEOUT_S)
        if not ready.get("ready"):
            self.close()
            raise ProtocolError(f"worker sent {ready!r} instead of its ready message")

    def _resume(self) -> bool:
        """Start a copy of the backend's saved worker, if it has one; False if none started."""
        argv = self.backend.resume_command()
        if argv is None:
            return False
        self._spawn(argv)
        try:
            self._begin(RESUME_TIMEOUT_S)
        except ProtocolError:
            self._end_process()
            self.backend.resume_failed()
            return False
        self.resumed = True
        return True

    def _begin(self, timeout_s: float) -> None:
        """Tell the waiting worker to serve jobs, and wait until it says it does."""
        assert self.process is not None and self.process.stdin is not None
        try:
            write_frame(self.process.stdin, {"kind": "start", "spares": self.spares})
        except OSError as exc:
            raise ProtocolError(f"the sandbox worker exited before it was started ({exc})") from None
        started = self._read(time.monotonic() + timeout_s)
        if not started.get("started"):
            raise ProtocolError(f"worker sent {started!r} instead of saying it started")

    def _end_process(self) -> None:
        """Stop the worker process (closing its stdin ends it; a stuck one is killed) and wait for it."""
        if self.process is None:
            return
        if self.process.stdin:
            with contextlib.suppress(OSError):  # a worker that already exited: the pipe is broken
                self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        self.process = None

    def _read(self, deadline: float) -> dict[str, Any]:
        """One frame from the worker, or ProtocolError if none arrives before ``deadline``."""
        return receive_frame(lambda n: self._read_exactly(n, deadline))

    def _read_exactly(self, n: int, deadline: float) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        data = b""
        while len(data) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise ProtocolError("the sandbox worker did not answer in time")
            chunk = os.read(fd, n - len(data))
            if not chunk:
                raise ProtocolError("the sandbox worker exited")
            data += chunk
        return data


class Sandbox:
    """Validates untrusted credit functions in isolated worker processes."""

    def __init__(
        self,
        backend: str | Backend = "auto",
        limits: SandboxLimits | None = None,
        warm: bool = True,
        spares: bool = True,
    ) -> None:
        """``spares``: whether the worker forks children ahead of the next jobs (the generation graph checks
        its candidates in bursts). A sandbox that validates one function, then computes its credit (a
        trainer's), needs none: spares forked after its validation would each warm up on the validation
        states, for nothing, and keep that memory while it trains."""
        self.backend = detect_backend(backend) if isinstance(backend, str) else backend
        self.limits = limits or SandboxLimits()
        self.warm = warm
        self.spares = spares
        self._worker = SandboxWorker(self.backend, spares=spares)
        self._lock = threading.Lock()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._worker.close()

    def validate(
        self, source: str, inputs: ValidationInputs, options: CheckOptions | None = None
    ) -> ValidationResult:
        """Run every check on ``source`` (a Python file's text) and return the verdict."""
        if inputs.states.shape[0] < 2 or inputs.agents_q.shape[0] != inputs.states.shape[0]:
            raise ValueError("validation needs at least 2 states and one row of Q-values per state")
        job = {
            "kind": "validate",
            "source": source,
            "agents_q": encode_array(inputs.agents_q.numpy()),
            "states": encode_array(inputs.states.numpy()),
            "options": vars(options or CheckOptions()),
            "limits": self.limits.to_dict(),
        }
        return self._run(job, ValidationResult)

    def credit(self, source: str, states: torch.Tensor, n_agents: int, monotonic: bool) -> CreditResult:
        """The credit ``[R, n_agents + 1]`` (weights, then bias) that ``source``, a function linear in Q,
        gives each row of ``states [R, S]``, computed in a fresh limited child of the worker like every
        other job. Its weights must be finite, and non-negative when ``monotonic``."""
        job = {
            "kind": "credit",
            "source": source,
            "states": encode_array(states.numpy()),
            "n_agents": n_agents,
            "monotonic": monotonic,
            "limits": self.limits.to_dict(),
        }
        return self._run(job, CreditResult)

    def credit_session(
        self, source: str, n_agents: int, monotonic: bool, limits: SandboxLimits | None = None
    ) -> CreditSession:
        """What :meth:`credit` computes, for many batches of states with one function: loaded once (on
        the first call), each call limited as one job is, by ``limits`` (default: this sandbox's). Needs
        a warm sandbox; the worker may have served other jobs (the function's validation, say) first."""
        if not self.warm:
            raise ValueError("a credit session lives in a warm worker: use Sandbox(warm=True)")
        return CreditSession(self, source, n_agents, monotonic, limits or self.limits)

    def load(
        self, source: str, inputs: ValidationInputs, options: CheckOptions | None = None
    ) -> LoadedCandidate:
        """Validate ``source`` here, then load it into *this* process under the restricted globals.

        The only sanctioned way to get a callable credit function (the trainer needs one for autograd).
        Raises :class:`CandidateRejectedError`, carrying the verdict, when validation fails.
        """
        result = self.validate(source, inputs, options)
        if not result.ok:
            raise CandidateRejectedError(result)
        return load_credit_function(source)

    def probe(self, python_source: str) -> ValidationResult:
        """Run *plain* Python in the isolated, limited child, with no language-level restriction.

        For testing what the process layer alone contains. Never pass generated code here.
        """
        job = {"kind": "probe", "source": python_source, "limits": self.limits.to_dict()}
        return self._run(job, ValidationResult)

    def _run(
        self, job: dict[str, Any], result_type: type[AnyVerdict], limits: SandboxLimits | None = None
    ) -> AnyVerdict:
        """``job``'s verdict, waiting for it as long as ``limits`` (default: this sandbox's) allow."""
        start = time.monotonic()
        wall_s = (limits or self.limits).wall_s
        with self._lock:
            try:
                job = {**job, "spares": self.spares}
                answer = self._worker.submit(job, timeout_s=wall_s + ANSWER_MARGIN_S)
                result = result_type.model_validate(answer)
            except (ProtocolError, OSError, ValueError) as exc:
                self._worker.close()  # a worker that misbehaved is never reused
                result = result_type.failure(ErrorKind.SANDBOX, f"sandbox worker failed: {exc}")
            finally:
                if not self.warm:
                    self._worker.close()
        result.backend = self.backend.name
        if isinstance(result, ValidationResult):
            result.timings.total = time.monotonic() - start
        return result


class CreditSession:
    """A credit function linear in Q, loaded once in a limited child of a warm sandbox worker, giving
    the credit of batch after batch of states (:meth:`Sandbox.credit` answers one batch in a fresh child).

    Each call has the wall-clock, CPU-time and output limits of one job, and the child's memory limit
    holds throughout. A call that fails ends the session; the next call (after the file was fixed, say)
    loads the function again, as does the first call after the worker was restarted.
    """

    def __init__(
        self, sandbox: Sandbox, source: str, n_agents: int, monotonic: bool, limits: SandboxLimits
    ) -> None:
        self.sandbox, self.source, self.n_agents, self.monotonic = sandbox, source, n_agents, monotonic
        self.limits = limits
        self._session: int | None = None
        self._worker_starts = 0

    def credit(self, states: torch.Tensor) -> CreditResult:
        """``[R, n_agents + 1]`` for ``states [R, S]``, as :meth:`Sandbox.credit` computes it."""
        failed_to_load = self._open()
        if failed_to_load is not None:
            return failed_to_load
        job = {"kind": "credit", "session": self._session, "states": encode_array(states.numpy())}
        result = self.sandbox._run(job, CreditResult, self.limits)
        if not result.ok:
            self._session = None  # the worker ended it
        return result

    def close(self) -> None:
        if self._loaded():
            self.sandbox._run({"kind": "credit-close", "session": self._session}, CreditResult, self.limits)
        self._session = None

    def _loaded(self) -> bool:
        """Whether the running worker holds this session (a worker that died or was replaced does not)."""
        worker = self.sandbox._worker
        return self._session is not None and worker.alive and worker.starts == self._worker_starts

    def _open(self) -> CreditResult | None:
        """Load the function, unless the running worker holds it already; the verdict if loading fails."""
        if self._loaded():
            return None
        job = {
            "kind": "credit-open",
            "source": self.source,
            "n_agents": self.n_agents,
            "monotonic": self.monotonic,
            "limits": self.limits.to_dict(),
        }
        opened = self.sandbox._run(job, CreditResult, self.limits)
        self._session, self._worker_starts = opened.session, self.sandbox._worker.starts
        if not opened.ok or opened.session is None:
            self._session = None
            return opened if not opened.ok else CreditResult.failure(ErrorKind.SANDBOX, "no session opened")
        return None
