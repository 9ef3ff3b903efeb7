"""Who collects the training loop's next batch of episodes, and when: in line, or ahead in a second process.

The loop asks for the next batch before its update, or during it (below), and takes it after
(:func:`qllm.rl.train.train`). What happens in between depends on the collector:

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

A process collector's request can be made at either of two moments of the update (:class:`AskSchedule`
says which is faster, by timing both): before it, so that the collection runs beside all of it, or once
the update has unrolled its networks, so that it runs beside the backward pass while the two unrolls (the
online and target networks') have a core each. The weights do not change until the update's parameter
step, so the two give the same runs.

Collectors also play the loop's greedy evaluations (:mod:`qllm.rl.evaluation`): begun with a copy of the
weights as they are then, taken later. In line, an evaluation is played when it is begun. The process
collector plays it a step at a time whenever no batch is asked of it, in the time it would otherwise wait
for the learner's update, and finishes it when it is taken; a batch asked for meanwhile comes first.

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
import enum
import gc
import multiprocessing
import pickle
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from statistics import median
from typing import Protocol

import torch

from qllm.envs.episodes import Episodes
from qllm.rl.agent import RNNAgent, build_agent
from qllm.rl.config import TrainConfig
from qllm.rl.evaluation import EvalReturns, Evaluator
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

    def start_evaluation(self, agent: RNNAgent) -> None:
        """Begin a greedy evaluation of ``agent``'s weights as they are now (the previous one taken)."""
        ...

    def evaluation(self) -> EvalReturns:
        """The evaluation begun last, once it has ended."""
        ...

    def close(self) -> None: ...


class InlineCollector:
    """Collects in this process when :meth:`result` is called, with the network as it is then, and
    evaluates when an evaluation is begun."""

    def __init__(
        self, runner: ParallelRunner, generator: torch.Generator, device: torch.device, evaluator: Evaluator
    ) -> None:
        self.runner, self.generator, self.device, self.evaluator = runner, generator, device, evaluator
        self._request: tuple[RNNAgent, list[int], ActionSelector] | None = None
        self._evaluation: EvalReturns | None = None

    def submit(self, agent: RNNAgent, seeds: list[int], behaviour: ActionSelector) -> None:
        self._request = (agent, seeds, behaviour)

    def result(self) -> Collected:
        if self._request is None:
            raise RuntimeError("result() without a submitted request")
        (agent, seeds, behaviour), self._request = self._request, None
        return Collected(*self.runner.run(agent, seeds, behaviour, self.generator, self.device))

    def start_evaluation(self, agent: RNNAgent) -> None:
        if self._evaluation is not None:
            raise RuntimeError("start_evaluation() before the last evaluation was taken")
        self._evaluation = self.evaluator.evaluate(agent)

    def evaluation(self) -> EvalReturns:
        if self._evaluation is None:
            raise RuntimeError("evaluation() without a begun evaluation")
        evaluation, self._evaluation = self._evaluation, None
        return evaluation

    def close(self) -> None:
        self.runner.close()
        self.evaluator.close()


class Ask(enum.Enum):
    """When the training loop asks a process collector for the next batch."""

    BEFORE_UPDATE = "before the update"
    AFTER_UNROLL = "once the update has unrolled its networks"


class AskSchedule:
    """Which :class:`Ask` the loop uses for each batch: the faster, by timing both in turn.

    Asked before the update, the collection shares the machine's two cores with all of the update; asked
    after the unroll, it waits for the unrolls to use both cores, then runs beside the backward pass.
    Which is faster depends on how long the collection takes against the update's parts, and that changes
    with the preset, the task and, within a run, the episodes' lengths. On lbf-8x8-2p-2f with 8
    environments (2 cores, 50k steps), asking every batch after the unroll made the ``qllm`` preset's
    updates 84-91 -> 68 ms and its whole runs 1.20x faster (95% interval 1.16-1.23, 6 pairs), ``riit``'s
    1.08x (0.99-1.18, not resolved), but ``qmix``'s with 8 environments, whose updates are short beside
    the collection, 0.85x (0.81-0.89).

    So the loop times its period (one batch taken to the next) each way, in trials of ``TRIAL`` periods
    of each, alternating, as the benchmarks pair their runs: the machine's speed drifts, and an
    evaluation the collector plays in its idle time slows the periods it falls in. The first trial picks
    the way with the shorter median period; that way is kept for ``EXPLOIT`` periods, then a trial
    against the other way again, which takes over only if its median is shorter by more than
    ``MARGIN`` (noise does not switch), and each trial the way in use wins doubles how long it is kept
    before the next, up to ``LONGEST``. Only periods with an update count (:meth:`ask`), and not the
    first (the run's first update allocates what the later ones reuse). A period also holds what the
    loop does besides (logging, a checkpoint now and then), the same either way: the medians see past it.

    The ways time the same thing for a learner whose update has no unroll to wait for (``maddpg``: it
    calls ``after_unroll`` at once); the schedule then keeps whichever noise favours, at no cost."""

    TRIAL = 4
    EXPLOIT = 40
    LONGEST = 640
    MARGIN = 0.05

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.in_use: Ask | None = None
        """The faster way by the last trial (None before the first)."""
        self.trial: dict[Ask, list[float]] = {ask: [] for ask in Ask}
        """The periods (seconds) of each way in the last trial."""
        self.keep_for = self.EXPLOIT
        self._plan: deque[tuple[Ask, bool]] = deque()
        """The ways to ask for the coming periods, each with whether it is part of a trial."""
        self._asked: tuple[Ask, bool] | None = None
        self._taken_at: float | None = None
        self._warming_up = True

    def ask(self) -> Ask:
        """When to ask for the batch to be taken next, before an update."""
        if not self._plan:
            self._plan.extend(self._next_plan())
        self._asked = self._plan.popleft()
        return self._asked[0]

    def batch_taken(self) -> None:
        """A batch was taken: the period since the last one counts for the way its batch was asked."""
        now = self.clock()
        if self._asked is not None and self._taken_at is not None:
            ask, in_trial = self._asked
            if self._warming_up:
                self._warming_up = False
            elif in_trial:
                self.trial[ask].append(now - self._taken_at)
        self._asked, self._taken_at = None, now

    def _next_plan(self) -> list[tuple[Ask, bool]]:
        """A trial after a time in use (or at first); after a trial, the faster way in use."""
        if all(self.trial.values()):
            self._decide()
            for periods in self.trial.values():
                periods.clear()
            assert self.in_use is not None  # just decided
            return [(self.in_use, False)] * self.keep_for
        order = list(Ask) if self.in_use is None else [self._other(self.in_use), self.in_use]
        return [(ask, True) for _ in range(self.TRIAL) for ask in order]

    def _decide(self) -> None:
        medians = {ask: median(periods) for ask, periods in self.trial.items()}
        if self.in_use is None:
            self.in_use = min(Ask, key=medians.__getitem__)
            return
        other = self._other(self.in_use)
        if medians[other] < (1 - self.MARGIN) * medians[self.in_use]:
            self.in_use, self.keep_for = other, self.EXPLOIT
        else:
            self.keep_for = min(2 * self.keep_for, self.LONGEST)

    @staticmethod
    def _other(ask: Ask) -> Ask:
        return next(other for other in Ask if other is not ask)


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
class _Evaluate:
    """Begin an evaluation of these weights (answered by nothing: the child plays it while idle)."""

    weights: dict[str, torch.Tensor]


@dataclass(frozen=True)
class _TakeEvaluation:
    """Answer with the evaluation begun last, once it has ended."""


@dataclass(frozen=True)
class _Evaluated:
    evaluation: EvalReturns


@dataclass(frozen=True)
class _Failure:
    error: BaseException
    """What collecting raised, or a :class:`CollectorError` describing it where it cannot be pickled."""


_Message = _Request | _Evaluate | _TakeEvaluation
_Answer = _Reply | _Evaluated | _Failure


class ProcessCollector:
    """Collects in a forked child process from the moment a batch is asked for, and evaluates there in
    the time it waits between batches (see the module's text)."""

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
        self._evaluating = False
        self._early: _Answer | None = None
        """A batch's answer read before it was asked for, to get at an evaluation's behind it."""

    def submit(self, agent: RNNAgent, seeds: list[int], behaviour: ActionSelector) -> None:
        if self._in_flight:
            raise RuntimeError("submit() while a batch is still being collected")
        # Pickled now, so the child gets the weights as they are before the update that follows.
        self._send(_Request(_cpu_weights(agent), seeds, behaviour, self.generator.get_state()))
        self._in_flight = True

    def result(self) -> Collected:
        if not self._in_flight:
            raise RuntimeError("result() without a submitted request")
        reply = self._early if self._early is not None else self._receive()
        self._early, self._in_flight = None, False
        if not isinstance(reply, _Reply):
            raise _raised(reply)
        self.generator.set_state(reply.generator_state)
        return reply.collected

    def start_evaluation(self, agent: RNNAgent) -> None:
        if self._evaluating:
            raise RuntimeError("start_evaluation() before the last evaluation was taken")
        self._read_batch_ahead()
        self._send(_Evaluate(_cpu_weights(agent)))
        self._evaluating = True

    def evaluation(self) -> EvalReturns:
        if not self._evaluating:
            raise RuntimeError("evaluation() without a begun evaluation")
        self._read_batch_ahead()
        self._send(_TakeEvaluation())
        reply = self._receive()
        self._evaluating = False
        if not isinstance(reply, _Evaluated):
            raise _raised(reply)
        return reply.evaluation

    def close(self) -> None:
        if self._process.is_alive() and not self._in_flight:
            with contextlib.suppress(CollectorError):  # it went away meanwhile: nothing left to tell it
                self._send(None)
            self._process.join(timeout=CLOSE_TIMEOUT_S)
        if self._process.is_alive():  # busy collecting, or not answering: nothing it does is needed now
            self._process.kill()
            self._process.join()
        self._connection.close()
        gc.unfreeze()  # this process may go on (sweeps, tests): its old objects are collectable again

    def _read_batch_ahead(self) -> None:
        """Read the answer of a batch still in flight before saying anything more to the child. Answers
        come in the order asked, and a child sending a batch larger than the pipe holds reads nothing
        until it is read: a large message sent to it then would leave both waiting on each other."""
        if self._in_flight and self._early is None:
            self._early = self._receive()

    def _send(self, message: _Message | None) -> None:
        try:
            self._connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            raise self._ended_unexpectedly() from None

    def _receive(self) -> _Answer:
        try:
            return pickle.loads(self._connection.recv_bytes())
        except (EOFError, OSError):
            raise self._ended_unexpectedly() from None

    def _ended_unexpectedly(self) -> CollectorError:
        self._process.join(timeout=1.0)
        return CollectorError(
            f"the process collecting episodes ended unexpectedly (exit code {self._process.exitcode})"
        )


def _cpu_weights(agent: RNNAgent) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu() for name, tensor in agent.state_dict().items()}


def _raised(answer: _Answer) -> BaseException:
    """The error a failed answer carries, to raise where the parent asked; any other answer here means the
    two processes no longer agree on what was asked."""
    if isinstance(answer, _Failure):
        answer.error.add_note("(raised in the process collecting episodes)")
        return answer.error
    return CollectorError(f"the process collecting episodes answered out of turn ({type(answer).__name__})")


class _Server:
    """The child's side: collects each batch when asked, and plays the evaluation begun last, a step at a
    time, whenever no request is waiting."""

    def __init__(self, config: TrainConfig) -> None:
        cpu = torch.device("cpu")
        self.runner = ParallelRunner(config.task, config.envs)
        self.agent = build_agent(config, self.runner.info)
        # The evaluation's own network: batches collected meanwhile load their weights into `agent`.
        self.evaluated_agent = build_agent(config, self.runner.info)
        self.evaluator = Evaluator(config.task, config.eval_episodes, cpu)
        self.generator, self.cpu = torch.Generator(), cpu
        self._evaluation: Generator[None, None, EvalReturns] | None = None
        self._ended: _Evaluated | _Failure | None = None

    @property
    def evaluating(self) -> bool:
        return self._evaluation is not None

    def step_evaluation(self) -> None:
        """One step of the evaluation under way."""
        if self._evaluation is None:
            return
        try:
            next(self._evaluation)
        except StopIteration as done:
            self._evaluation, self._ended = None, _Evaluated(done.value)
        except Exception as exc:
            self._evaluation, self._ended = None, _failure(exc)

    def answer(self, message: _Message) -> _Answer | None:
        """What a request is answered with (None: no answer is due)."""
        if isinstance(message, _Evaluate):
            try:
                self.evaluated_agent.load_state_dict(message.weights)
            except Exception as exc:  # answered when the evaluation is taken
                self._evaluation, self._ended = None, _failure(exc)
            else:
                self._evaluation, self._ended = self.evaluator.steps(self.evaluated_agent), None
            return None
        if isinstance(message, _TakeEvaluation):
            while self._evaluation is not None:
                self.step_evaluation()
            ended, self._ended = self._ended, None
            if ended is None:
                return _Failure(CollectorError("an evaluation was taken that was never begun"))
            return ended
        try:
            self.agent.load_state_dict(message.weights)
            self.generator.set_state(message.generator_state)
            collected = self.runner.run(
                self.agent, message.seeds, message.behaviour, self.generator, self.cpu
            )
            return _Reply(Collected(*collected), self.generator.get_state())
        except Exception as exc:
            return _failure(exc)


@dataclass(frozen=True)
class _Unready:
    """A child that could not set up (the task's environment failed, say): every request that wants an
    answer gets the error, and the parent raises it where it asked."""

    setup_error: _Failure
    evaluating: bool = False

    def step_evaluation(self) -> None:
        return None

    def answer(self, message: _Message) -> _Answer | None:
        return None if isinstance(message, _Evaluate) else self.setup_error


def _serve(connection: Connection, parent_end: Connection, config: TrainConfig) -> None:
    """The child: answer requests until the parent says stop or goes away, evaluating while none waits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent ends us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not a handler the parent installed (Ray's, say)
    parent_end.close()  # so that the parent's exit shows here as the end of the pipe
    torch.set_num_threads(1)
    try:
        server: _Server | _Unready = _Server(config)
    except Exception as exc:
        server = _Unready(_failure(exc))
    while True:
        if server.evaluating and not connection.poll():
            server.step_evaluation()
            continue
        try:
            message = pickle.loads(connection.recv_bytes())
        except (EOFError, OSError):
            return
        if message is None:
            return
        answer = server.answer(message)
        if answer is None:
            continue
        try:
            connection.send_bytes(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
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
