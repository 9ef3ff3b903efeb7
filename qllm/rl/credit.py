"""Credit as data: the ``(w(s), b(s))`` of a credit function, computed outside the trainer's networks and
stored with each state.

Every credit function qllm writes is linear in Q, ``Q_tot = w(s) . Q + b(s)``, and the sandbox measures
that of any file (``linear_in_q_error``). For such a function the trainer never needs the function
itself, only each state's weights and bias, which the runner stores beside the state in the replay
buffer; the mixer is then ``(w * Q).sum(-1) + b`` (:class:`qllm.rl.mixers.LinearCredit`). Two sources
give them (:class:`Credit`):

- :class:`SpecCredit`, for a file that is exactly qllm's compilation of a credit spec: the weights come
  from the spec itself (:class:`qllm.agents.spec.SpecWeights`, numpy), in this process. Nothing the LLM
  wrote runs: the spec is data, the arithmetic is qllm's;
- :class:`SandboxCredit`, for any other file: the new states of each collected batch go to the isolated
  sandbox worker (a :class:`~qllm.sandbox.CreditSession`: one limited child loads the function once, and
  each call has the CPU-time, wall-clock and output limits of a validation job). No generated code ever
  runs in the trainer's process.

A call that fails (an exception, a timeout, a crash, memory) or gives non-finite or, where monotonicity
is required, negative weights raises :class:`CreditFunctionError` with the reason.

The trainer does not wait for a sandbox call: :meth:`SandboxCredit.begin` runs it on the object's own
thread (which only sends the states and waits on the worker's pipe), and the learner unrolls its networks
meanwhile; the credit is waited for when the mixer needs it.
"""

from __future__ import annotations

import hashlib
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch

from qllm.agents.spec import SpecWeights
from qllm.sandbox import Sandbox, SandboxLimits


class CreditFunctionError(RuntimeError):
    """A validated credit function that failed on states met during training."""


class Credit(Protocol):
    """Each state's credit ``[w_1..w_n, b]`` under one credit function."""

    sha256: str
    """Identifies the function whose credit a replay buffer holds (a resumed run may bring a new one)."""

    @property
    def width(self) -> int:
        """Values per state: the ``n`` weights and the bias."""
        ...

    def __call__(self, states: torch.Tensor) -> torch.Tensor:
        """``states [..., S]`` -> credit ``[..., n + 1]`` (float32, on the states' device)."""
        ...

    def begin(self, states: torch.Tensor) -> Future[torch.Tensor]:
        """``self(states)``, possibly computed while the caller goes on; a failure raises its
        :class:`CreditFunctionError` from the future's ``result()``."""
        ...

    def close(self) -> None: ...


class SpecCredit:
    """Each state's credit under a compiled credit spec, computed from the spec: ``[w(s), 0]``.

    A state with NaN or infinity in a column the spec reads stops training (the compiled file would
    raise, or skip an entity or not depending on where the NaN sits), and so does an overflow.
    """

    def __init__(self, source: str, weights: SpecWeights) -> None:
        """``source``: the file the spec was recognised in (its hash identifies the function, as for
        :class:`SandboxCredit`: a run resumes with either)."""
        self.weights = weights
        self.sha256 = hashlib.sha256(source.encode()).hexdigest()
        self.columns_read = weights.columns

    @property
    def width(self) -> int:
        return self.weights.n_agents + 1

    def __call__(self, states: torch.Tensor) -> torch.Tensor:
        rows = states.detach().reshape(-1, states.shape[-1]).to("cpu", torch.float32).numpy()
        finite = np.isfinite(rows[:, self.columns_read]).all(axis=1)
        if not finite.all():
            raise CreditFunctionError(
                f"{int((~finite).sum())} of {len(rows)} new states hold NaN or infinite values where the "
                "credit spec reads them"
            )
        try:
            weights = self.weights(rows)
        except (ValueError, ArithmeticError) as exc:
            raise CreditFunctionError(
                f"the credit spec failed on {len(rows)} new states: {type(exc).__name__}: {exc}"
            ) from None
        credit = np.concatenate([weights, np.zeros((len(rows), 1), np.float32)], axis=1)
        return torch.from_numpy(credit).reshape(*states.shape[:-1], self.width).to(states.device)

    def begin(self, states: torch.Tensor) -> Future[torch.Tensor]:
        """Computed now, as a finished future: 0.2-0.6 ms for 200-260 states (lbf, mpe), far less than what
        a thread would save."""
        done: Future[torch.Tensor] = Future()
        try:
            done.set_result(self(states))
        except CreditFunctionError as exc:
            done.set_exception(exc)
        return done

    def close(self) -> None:
        """Nothing to close: no process or thread of its own."""


class SandboxCredit:
    """Each state's credit ``[w_1..w_n, b]`` under the credit function ``source``, memoised per state.

    States recur (matrix games have a handful, and a replay buffer holds each state for many updates),
    so each distinct state is sent to the sandbox once; ``max_states`` bounds the memo (it starts over
    when full). Calls may come from two threads (:meth:`begin`'s and the caller's); they take turns.
    """

    def __init__(
        self,
        source: str,
        n_agents: int,
        monotonic: bool,
        *,
        call_budget_s: float = SandboxLimits.wall_s,
        max_states: int = 500_000,
        sandbox: Sandbox | None = None,
    ) -> None:
        """``sandbox``: a warm sandbox to compute in, which this object then owns and closes (the one that
        validated the function, whose worker is already running); a new one when None."""
        self.n_agents, self.max_states = n_agents, max_states
        self.sha256 = hashlib.sha256(source.encode()).hexdigest()
        """Identifies the function whose credit a replay buffer holds (a resumed run may bring a new one)."""
        self.sandbox = sandbox or Sandbox(spares=False)
        call_limits = SandboxLimits(wall_s=call_budget_s, cpu_s=math.ceil(call_budget_s))
        self.session = self.sandbox.credit_session(source, n_agents, monotonic, call_limits)
        self.memo: dict[bytes, np.ndarray] = {}
        self.calls = 0
        """Sandbox calls so far (one per batch that brought new states)."""
        self._turn = threading.Lock()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qllm-credit")

    @property
    def width(self) -> int:
        """Values per state: the ``n`` weights and the bias."""
        return self.n_agents + 1

    def close(self) -> None:
        self._thread.shutdown()  # a call under way ends within its budget
        self.session.close()
        self.sandbox.close()

    def begin(self, states: torch.Tensor) -> Future[torch.Tensor]:
        """``self(states)`` on this object's thread: the sandbox computes while the caller goes on. A failed
        call raises its :class:`CreditFunctionError` from the future's ``result()``."""
        return self._thread.submit(self, states)

    def __call__(self, states: torch.Tensor) -> torch.Tensor:
        """``states [..., S]`` -> credit ``[..., n + 1]`` (float32, on the states' device)."""
        with self._turn:
            return self._credit(states)

    def _credit(self, states: torch.Tensor) -> torch.Tensor:
        rows = states.detach().reshape(-1, states.shape[-1]).to("cpu", torch.float32).contiguous().numpy()
        keys = [row.tobytes() for row in rows]
        missing = {key: i for i, key in enumerate(keys) if key not in self.memo}
        if missing:
            if len(self.memo) + len(missing) > self.max_states:
                self.memo.clear()
                missing = dict(zip(keys, range(len(keys)), strict=True))
            self.memo.update(zip(missing, self._compute(rows[list(missing.values())]), strict=True))
        credit = torch.from_numpy(np.stack([self.memo[key] for key in keys]))
        return credit.reshape(*states.shape[:-1], self.width).to(states.device)

    def _compute(self, rows: np.ndarray) -> np.ndarray:
        self.calls += 1
        result = self.session.credit(torch.from_numpy(rows))
        if not result.ok or result.credit is None:
            kind = result.error_kind.value if result.error_kind else "error"
            raise CreditFunctionError(
                f"the credit function failed in the sandbox on {len(rows)} new states "
                f"({kind}: {result.message})"
            )
        return result.credit.to_array()
