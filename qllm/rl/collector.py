"""Who collects the training loop's next batch of episodes, and when: in line, or ahead in a second process.

The loop asks for the next batch before its update and takes it after (:func:`qllm.rl.train.train`).
What happens in between depends on the collector:

- :class:`InlineCollector` collects in this process when the batch is taken, so with the acting network
  as the update left it: EPyMARL's loop, one thing after the other.
- :class:`ProcessCollector` collects in a child process from the moment the batch is asked for, with a
  copy of the acting network's weights as they were then: one update behind, the way the actors of
  distributed Q-learning act on weights a little older than the learner's (Horgan et al. 2018, "Distributed
  Prioritized Experience Replay"). Collection and update then run on two cores at once.

Both draw exploration from the training loop's one generator, in the same order: the process collector
takes the generator's state with the request and hands the advanced state back with the episodes (the
loop draws nothing from it in between: the update does not sample). Environment resets are seeded by
the loop, so a batch is a function of the weights, the seeds, the behaviour and the generator's state,
wherever it is collected; runs and resumed runs repeat exactly either way.

The child is forked, not spawned: it starts at once and shares the parent's imported modules (about
100 MB it would otherwise load again). It must therefore be forked before the parent starts threads or
opens the sandbox worker's pipes (the trainer forks it before it builds the learner); it acts on the CPU
with one torch thread, ignores Ctrl-C (the parent ends it) and exits when the parent's end of the pipe
closes. The objects alive at the fork are frozen out of the cyclic garbage collector while the child
lives (``gc.freeze``, as Python's documentation advises before a fork): a collection writes into every
object it visits, which would copy the shared pages into both processes (24 MB less memory over a
training run, measured).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import pickle
import signal
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Protocol

import torch

from qllm.envs.episodes import Episodes
from qllm.rl.agent import RNNAgent, build_agent
from qllm.rl.config import TrainConfig
from qllm.rl.runner import ActionSelector, ParallelRunner, RolloutStats

CLOSE_TIMEOUT_S = 5.0
"""How long closing waits for an idle child to exit before it is killed."""


class CollectorError(RuntimeError):
    """The process collecting episodes died, or failed with an error that cannot cross processes.

    An error raised while collecting (an environment's, say) is raised again in the parent as itself,
    as collecting in line would raise it."""


@dataclass(frozen=True)
class Collected:
    """One batch of episodes and what the loop counts of them."""

    episodes: Episodes
    stats: RolloutStats


class EpisodeCollector(Protocol):
    """Collects batches of training episodes, one request at a time: ``submit`` then ``result``."""

    def submit(self, agent: RNNAgent, seeds: list[int], behaviour: ActionSelector) -> None:
        """Ask for one episode per seed, acting with ``agent`` and ``behaviour``."""
        ...

    def result(self) -> Collected:
        """The episodes asked for by the last ``submit``."""
        ...

    def close(self) -> None: ...


class InlineCollector:
    """Collects in this process when :meth:`result` is called, with the network as it is then."""

    def __init__(self, runner: ParallelRunner, generator: torch.Generator, device: torch.device) -> None:
        self.runner, self.generator, self.device = runner, generator, device
        self._request: tuple[RNNAgent, list[int], ActionSelector] | None = None

    def submit(self, agent: RNNAgent, seeds: list[int], behaviour: ActionSelector) -> None:
        self._request = (agent, seeds, behaviour)

    def result(self) -> Collected:
        if self._request is None:
            raise RuntimeError("result() without a submitted request")
        (agent, seeds, behaviour), self._request = self._request, None
        return Collected(*self.runner.run(agent, seeds, behaviour, self.generator, self.device))

    def close(self) -> None:
        self.runner.close()


@dataclass(frozen=True)
class _Request:
    weights: dict[str, torch.Tensor]
    seeds: list[int]
    behaviour: ActionSelector
    generator_state: torch.Tensor


@dataclass(frozen=True)
class _Reply:
    collected: Collected
    generator_state: torch.Tensor


@dataclass(frozen=True)
class _Failure:
    error: BaseException
    """What collecting raised, or a :class:`CollectorError` describing it where it cannot be pickled."""


class ProcessCollector:
    """Collects in a forked child process from the moment a batch is asked for (see the module's text)."""

    def __init__(self, config: TrainConfig, generator: torch.Generator) -> None:
        self.generator = generator
        context = multiprocessing.get_context("fork")
        self._connection, child_end = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child_end, self._connection, config), name="qllm-collector", daemon=True
        )
        gc.collect()  # what is garbage now is not frozen with the rest
        gc.freeze()
        self._process.start()
        child_end.close()
        self._in_flight = False

    def submit(self, agent: RNNAgent, seeds: list[int], behaviour: ActionSelector) -> None:
        if self._in_flight:
            raise RuntimeError("submit() while a batch is still being collected")
        weights = {name: tensor.detach().cpu() for name, tensor in agent.state_dict().items()}
        # Pickled now, so the child gets the weights as they are before the update that follows.
        self._send(_Request(weights, seeds, behaviour, self.generator.get_state()))
        self._in_flight = True

    def result(self) -> Collected:
        if not self._in_flight:
            raise RuntimeError("result() without a submitted request")
        try:
            reply = pickle.loads(self._connection.recv_bytes())
        except (EOFError, OSError):
            self._process.join(timeout=1.0)
            raise CollectorError(
                f"the process collecting episodes ended unexpectedly (exit code {self._process.exitcode})"
            ) from None
        self._in_flight = False
        if isinstance(reply, _Failure):
            reply.error.add_note("(raised in the process collecting episodes)")
            raise reply.error
        self.generator.set_state(reply.generator_state)
        return reply.collected

    def close(self) -> None:
        if self._process.is_alive() and not self._in_flight:
            with contextlib.suppress(OSError):  # it went away meanwhile: nothing left to tell it
                self._send(None)
            self._process.join(timeout=CLOSE_TIMEOUT_S)
        if self._process.is_alive():  # busy collecting, or not answering: nothing it does is needed now
            self._process.kill()
            self._process.join()
        self._connection.close()
        gc.unfreeze()  # this process may go on (sweeps, tests): its old objects are collectable again

    def _send(self, message: _Request | None) -> None:
        self._connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _serve(connection: Connection, parent_end: Connection, config: TrainConfig) -> None:
    """The child: answer requests until the parent says stop or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent ends us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not a handler the parent installed (Ray's, say)
    parent_end.close()  # so that the parent's exit shows here as the end of the pipe
    torch.set_num_threads(1)
    try:
        runner = ParallelRunner(config.task, config.envs)
        agent = build_agent(config, runner.info)
    except Exception as exc:  # answered to every request: the parent raises it where it asked
        setup_error: _Failure | None = _failure(exc)
    else:
        setup_error = None
    generator, cpu = torch.Generator(), torch.device("cpu")
    while True:
        try:
            request = pickle.loads(connection.recv_bytes())
        except (EOFError, OSError):
            return
        if request is None:
            return
        reply: _Reply | _Failure
        if setup_error is not None:
            reply = setup_error
        else:
            try:
                agent.load_state_dict(request.weights)
                generator.set_state(request.generator_state)
                collected = Collected(*runner.run(agent, request.seeds, request.behaviour, generator, cpu))
                reply = _Reply(collected, generator.get_state())
            except Exception as exc:
                reply = _failure(exc)
        try:
            connection.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:  # the parent went away while we collected: nobody is left to answer
            return


def _failure(exc: Exception) -> _Failure:
    """The error itself where it survives pickling (most do); else one that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        described = "".join(traceback.format_exception_only(exc)).strip()
        return _Failure(CollectorError(f"collecting episodes failed in the collector process: {described}"))
    return _Failure(exc)
