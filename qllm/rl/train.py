"""Train a learner on one task: the whole loop, readable top to bottom.

The learner is looked up by ``config.algo`` in :data:`LEARNERS`: value decomposition (``q``, with a
mixer), COMA or MADDPG; all implement :class:`~qllm.rl.learner.Learner`. The loop only collects
episodes with the learner's acting network and behaviour, and feeds them to it: once, as they come,
to an on-policy learner; through the replay buffer to an off-policy one.

``train(config, runs_dir)`` creates a run folder ``{task}__{preset}__{seed}__{time}`` holding the config,
``metrics.csv`` (and TensorBoard events), checkpoints, the final model and a learning-curve PNG.
``train(..., resume=RUN)`` continues a run from its latest checkpoint and ends exactly where an
uninterrupted run would have: every source of randomness is either saved (the torch generator that
drives exploration and sampling) or derived from counters (environment reset seeds), and a batch of
episodes collected but not yet learned from is saved with the checkpoint.

The next batch of episodes is asked for before each update, or during it once its networks are unrolled,
and taken after it: an off-policy learner's is collected meanwhile in a second process (``collect_ahead``),
see :mod:`qllm.rl.collector`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import ExitStack, closing, contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from statistics import mean
from typing import TYPE_CHECKING, Any

import torch

from qllm.envs import EnvInfo, task_info
from qllm.envs.episodes import Episodes
from qllm.envs.tasks import folder_name
from qllm.rl.agent import RNNAgent, build_agent
from qllm.rl.buffer import ReplayBuffer
from qllm.rl.collector import (
    Ask,
    AskSchedule,
    Collected,
    CollectorError,
    EpisodeCollector,
    InlineCollector,
    ProcessCollector,
)
from qllm.rl.coma import COMALearner
from qllm.rl.config import TrainConfig
from qllm.rl.credit import Credit, CreditFunctionError, SandboxCredit, SpecCredit
from qllm.rl.evaluation import Evaluator
from qllm.rl.learner import Learner, NonFiniteError, QLearner
from qllm.rl.logger import MetricsLogger, plot_learning_curve
from qllm.rl.maddpg import MADDPGLearner
from qllm.rl.mixers import MIXERS, TFCAF, LinearCredit, Mixer
from qllm.rl.runner import EpsilonGreedy, ParallelRunner, RolloutStats
from qllm.rl.tfcaf import read_tfcaf, validate_tfcaf
from qllm.rl.tuning import tune_process
from qllm.sandbox import Sandbox

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
FINAL_MODEL = "final_model.pt"


class RunError(ValueError):
    """A run folder that cannot be resumed or evaluated."""


class TrainingError(RuntimeError):
    """Training stopped because continuing would give a wrong result: the credit function failed on new
    states, an update met a NaN or infinity, or collecting episodes failed. The run folder keeps its
    checkpoints."""

    @classmethod
    def at(
        cls, cause: Exception, at: Counters, config: TrainConfig, run_dir: Path, episodes: int
    ) -> TrainingError:
        saved = checkpoints(run_dir)
        then = (
            f"the last good checkpoint is {saved[-1].name}: once the cause is fixed, continue with "
            f"--resume {run_dir}"
            if saved
            else "no checkpoint was saved yet: once the cause is fixed, start the run again"
        )
        return cls(
            f"training stopped at step {at.t_env} (episodes {at.episodes}-{at.episodes + episodes - 1}, "
            f"mixer {config.mixer}): {cause}; {then}"
        )


@dataclass
class Progress:
    """What a progress display needs after each collected batch of episodes."""

    t_env: int
    steps: int
    episode_return: float
    epsilon: float | None
    """None when the learner samples from its policy instead of acting epsilon-greedily."""
    test_return: float | None


@dataclass
class Counters:
    """Where a run is; saved in checkpoints, so that a resumed run keeps the same schedule."""

    t_env: int = 0
    episodes: int = 0
    next_eval: int = 0
    next_log: int = 0
    next_checkpoint: int = 0
    returns_since_log: list[float] = field(default_factory=list)
    """Training episode returns not yet logged (logged as their mean, so the curve is not one episode)."""

    def advance(self, rollout: RolloutStats) -> None:
        """Count the episodes of one collected batch."""
        self.t_env += rollout.steps
        self.episodes += len(rollout.returns)
        self.returns_since_log += rollout.returns


@dataclass
class TrainResult:
    run_dir: Path
    t_env: int
    final_test_return: float
    plot: Path


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but CUDA is not available")
    return torch.device(name)


def build_mixer(config: TrainConfig, info: EnvInfo) -> tuple[Mixer, Credit | None]:
    """The q learner's mixer and, for a credit function linear in Q, what computes each state's credit:
    from the credit spec for a file that is exactly qllm's compilation of one, else in the sandbox, which
    validates the file here."""
    if config.mixer not in MIXERS:
        raise ValueError(f"unknown mixer {config.mixer!r}; choose from {', '.join(MIXERS)}")
    n, state_dim = info.n_agents, info.state_dim
    if config.mixer != "tfcaf":
        return MIXERS[config.mixer](
            n,
            state_dim,
            embed_dim=config.mixing_embed_dim,
            hypernet_embed=config.hypernet_embed,
            heads=config.attention_heads,
        ), None
    if not config.tfcaf:
        raise ValueError("the tfcaf mixer needs a credit function (--tfcaf FILE)")
    file = read_tfcaf(Path(config.tfcaf), info)
    if file.spec is not None:  # weights from the spec: no generated code to validate or run
        return LinearCredit(n, state_dim), SpecCredit(file.source, file.spec)
    budget = config.credit_call_budget_s
    # One worker validates the function and, if it is linear in Q, computes its credit: a gVisor worker
    # takes about 10 s to start. It is closed here unless the credit, which then owns it, needs it.
    with ExitStack() as unless_kept:
        sandbox = unless_kept.enter_context(Sandbox(spares=False))
        tfcaf = validate_tfcaf(file, info, monotonic=config.tfcaf_monotonic, sandbox=sandbox)
        if tfcaf.linear_in_q:
            credit = SandboxCredit(
                tfcaf.source, n, config.tfcaf_monotonic, call_budget_s=budget, sandbox=sandbox
            )
            unless_kept.pop_all()
            return LinearCredit(n, state_dim), credit
    function = tfcaf.load_restricted().function
    return TFCAF(n, state_dim, credit_function=function, call_budget_s=budget), None


def build_q_learner(config: TrainConfig, info: EnvInfo, device: torch.device) -> QLearner:
    agent = build_agent(config, info)
    mixer, credit = build_mixer(config, info)
    return QLearner(agent.to(device), mixer.to(device), info.n_actions, config, credit)


@dataclass(frozen=True)
class Algorithm:
    """How to build a learner, and what the loop must know before it exists."""

    build: Callable[[TrainConfig, EnvInfo, torch.device], Learner]
    """Builds the learner and its networks on a device."""
    on_policy: bool
    """The learner's own ``on_policy``: its episodes are collected in line, never ahead."""


LEARNERS: dict[str, Algorithm] = {
    "q": Algorithm(build_q_learner, QLearner.on_policy),
    "coma": Algorithm(COMALearner, COMALearner.on_policy),
    "maddpg": Algorithm(MADDPGLearner, MADDPGLearner.on_policy),
}
"""Learners by ``TrainConfig.algo``."""


def new_run_dir(config: TrainConfig, runs_dir: Path, name: str | None = None) -> Path:
    """A new run folder under ``runs_dir``: ``name``, or ``{task}__{preset}__{seed}__{time}``."""
    if name is None:
        name = f"{folder_name(config.task)}__{config.preset}__{config.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = runs_dir / name
    run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
    return run_dir


def load_run_config(run_dir: Path) -> TrainConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir} is not a qllm run folder (no {CONFIG_FILE})")
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise RunError(f"{path} is not a config this version of qllm can read: {exc}") from None


def check_resumable(run_dir: Path, config: TrainConfig) -> None:
    """Only the step budget may change when a run is continued."""
    saved = load_run_config(run_dir)
    if saved.replace(steps=config.steps) != config:
        raise RunError(f"{run_dir} was trained with different settings; resume it with its own config")


def checkpoints(run_dir: Path) -> list[Path]:
    """A run's checkpoints, oldest first (none for a run that never saved one)."""
    return sorted((run_dir / CHECKPOINT_DIR).glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))


def latest_checkpoint(run_dir: Path) -> Path:
    saved = checkpoints(run_dir)
    if not saved:
        raise RunError(f"{run_dir} has no checkpoint to resume from")
    return saved[-1]


def train(
    config: TrainConfig,
    runs_dir: Path = Path("runs"),
    resume: Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    run_name: str | None = None,
) -> TrainResult:
    """Train with ``config`` in a new run folder (named ``run_name`` if given), or continue the run
    folder ``resume``. A credit function that fails on new states, a NaN or infinity in an update, or a
    failure collecting episodes stops the run with :class:`TrainingError`; its checkpoints stay, so it
    can be resumed once fixed."""
    # --- set-up (everything that can refuse the config happens before a run folder exists) ----------
    if resume is not None:
        check_resumable(resume, config)
    if config.algo not in LEARNERS:
        raise ValueError(f"unknown algo {config.algo!r}; choose from {', '.join(LEARNERS)}")
    if config.eval_episodes < 1:
        raise ValueError(f"an evaluation needs at least one episode, got {config.eval_episodes}")
    device = pick_device(config.device)
    tune_process(config.threads, device)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)  # exploration and replay sampling
    # Each resource is closed, last made first, however the run ends; the credit's sandbox on a thread of
    # its own, joined when train() returns or raises: a gVisor worker takes most of a second to stop,
    # which the run spends meanwhile saving its final model and plotting.
    with closing_meanwhile() as close_meanwhile:
        with ExitStack() as resources:
            info = task_info(config.task)
            # Forked after the task's modules are imported (by task_info) and before the learner exists:
            # its threads and the sandbox worker's pipes must not be inherited.
            collector = resources.enter_context(closing(episode_collector(config, generator, device)))
            learner = LEARNERS[config.algo].build(config, info, device)
            resources.callback(learner.close)
            if learner.credit is not None:
                resources.callback(close_meanwhile, learner.credit)
            run_dir = resume if resume is not None else new_run_dir(config, runs_dir, run_name)
            buffer = replay_buffer(config, info, learner)
            at = Counters(next_checkpoint=config.checkpoint_interval)
            pending: Collected | None = None
            if resume is not None:
                at, pending = restore_checkpoint(
                    latest_checkpoint(run_dir), learner, buffer, generator, device
                )
            logger = resources.enter_context(
                closing(MetricsLogger(run_dir, resume_step=at.t_env if resume is not None else None))
            )
            ask_schedule = AskSchedule() if isinstance(collector, ProcessCollector) else None
            run = TrainingRun(
                config, run_dir, device, learner, buffer, generator, collector, logger, ask_schedule
            )

            # --- the loop, then the final evaluation ------------------------------------------------
            run.loop(at, pending, on_progress)
            final_return = run.final_evaluation(at)

        # --- wrap-up -------------------------------------------------------------------------------
        final_model = {name: network.state_dict() for name, network in learner.networks().items()}
        torch.save({**final_model, "t_env": at.t_env}, run_dir / FINAL_MODEL)
        del run, buffer, learner  # the replay buffer is most of a run's memory: released before plotting
        plot = plot_learning_curve(run_dir, f"{config.task}: {config.preset} (seed {config.seed})")
        return TrainResult(run_dir=run_dir, t_env=at.t_env, final_test_return=final_return, plot=plot)


@contextmanager
def closing_meanwhile() -> Iterator[Callable[[Credit], None]]:
    """``close(credit)`` begins closing ``credit`` on a thread of its own; the block's end waits for every
    such close, and raises the first one's error unless the block is raising one of its own."""
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []

    def close_quietly(resource: Credit) -> None:
        try:
            resource.close()
        except BaseException as exc:  # raised where the block ends, in the caller's thread
            errors.append(exc)

    def close(resource: Credit) -> None:
        thread = threading.Thread(target=close_quietly, args=(resource,), name="qllm-close-meanwhile")
        thread.start()
        threads.append(thread)

    try:
        yield close
    finally:
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]


@dataclass
class TrainingRun:
    """What the training loop's steps share; :meth:`loop` is the loop, readable top to bottom."""

    config: TrainConfig
    run_dir: Path
    device: torch.device
    learner: Learner
    buffer: ReplayBuffer | None
    generator: torch.Generator
    collector: EpisodeCollector
    logger: MetricsLogger
    ask_schedule: AskSchedule | None = None
    """When to ask a process collector for each batch (None: the collection is in line, at the take)."""
    evaluating_at: int | None = None
    """The step of the evaluation begun and not yet logged, if one is."""
    test_return: float | None = None
    """The mean return of the evaluation logged last."""

    def loop(
        self, at: Counters, pending: Collected | None, on_progress: Callable[[Progress], None] | None
    ) -> None:
        """Train until ``config.steps``, counting in ``at``, starting from the batch in hand (``pending``)
        if there is one: learn from it (asking for the next batch before or during the update), begin an
        evaluation and log when due, take the next batch, save a checkpoint (with that batch) when one is
        due.

        An evaluation is played by the collector (a process collector, in the time it waits between
        batches) and logged, at the step it was begun, when the next one begins or a checkpoint is saved,
        whichever comes first: a checkpoint then follows every row logged up to its step, and
        metrics.csv is the same however the time was shared."""
        config = self.config
        while at.t_env < config.steps:
            if pending is None:  # the run's first batch, or a checkpoint saved with none in hand
                self.ask_for_next_batch(at)
                pending = self.take_batch(at)
            collected, pending = pending, None
            behaviour = self.learner.behaviour(at.t_env)  # what collected these episodes
            epsilon = behaviour.epsilon if isinstance(behaviour, EpsilonGreedy) else None
            update = self.learn(collected, at)
            if at.t_env >= at.next_eval:
                at.next_eval += config.eval_interval
                if at.t_env < config.steps:  # the run's last step is evaluated after the loop
                    self.log_evaluation(at)
                    self.begin_evaluation(at)
            if at.t_env >= at.next_log:
                log_training(self.logger, at, epsilon, update)
                at.next_log += config.log_interval
            if at.t_env < config.steps:
                pending = self.take_batch(at)
            if at.t_env >= at.next_checkpoint:
                self.log_evaluation(at)
                at.next_checkpoint += config.checkpoint_interval
                save_checkpoint(self.run_dir, self.learner, self.buffer, self.generator, at, pending=pending)
            if on_progress is not None:
                returns = mean(collected.stats.returns)
                on_progress(Progress(at.t_env, config.steps, returns, epsilon, self.test_return))

    def learn(self, collected: Collected, at: Counters) -> DataclassInstance | None:
        """Store the batch and count it, ask for the next batch (now, or from within the update once its
        networks are unrolled: :meth:`when_to_ask`), update once there is enough to learn from, labelling
        the new states with their credit meanwhile if the learner needs it; returns the update's
        diagnostics."""
        before = replace(at, returns_since_log=[])
        episodes = len(collected.stats.returns)
        try:
            stored = store(collected.episodes, self.buffer, self.config.batch_size, self.generator)
            at.advance(collected.stats)
            ask_next = partial(self.ask_for_next_batch, at) if at.t_env < self.config.steps else None
            after_unroll = self.when_to_ask(stored, ask_next)
            new_credit = NewCredit.begin(self.learner, stored, self.buffer)
            update = self.update(stored, episodes, new_credit, after_unroll)
            if new_credit is not None:
                new_credit.wait()  # in the replay buffer before the next draw, and a failure raised
            return update
        except (CreditFunctionError, NonFiniteError) as exc:
            raise TrainingError.at(exc, before, self.config, self.run_dir, episodes) from exc

    def when_to_ask(self, stored: Stored, ask_next: Callable[[], None] | None) -> Callable[[], None] | None:
        """Ask for the next batch (``ask_next``; None: the run needs none) now, or return it for the update
        to call once its networks are unrolled, as the ask schedule says (a process collector's, when
        there is an update)."""
        if ask_next is None:
            return None
        schedule = self.ask_schedule
        if schedule is not None and stored.drawn is not None and schedule.ask() is Ask.AFTER_UNROLL:
            return ask_next
        ask_next()  # a process collector collects it meanwhile
        return None

    def update(
        self,
        stored: Stored,
        new_episodes: int,
        new_credit: NewCredit | None,
        after_unroll: Callable[[], None] | None,
    ) -> DataclassInstance | None:
        """The learner's update on the drawn batch, if there is one yet; the credit of the new states, where
        it is being computed, is waited for only when the mixer needs it."""
        batch = training_batch(stored, self.buffer)
        if batch is None:
            return None
        steps = batch.filled.shape[1]
        pending_credit = None if new_credit is None else partial(new_credit.of_drawn, steps, self.device)
        return self.learner.update(batch.to(self.device), new_episodes, pending_credit, after_unroll)

    def begin_evaluation(self, at: Counters) -> None:
        """Have the collector evaluate the acting network as it is now."""
        with self.collector_failures(at):
            self.collector.start_evaluation(self.learner.agent)
        self.evaluating_at = at.t_env

    def log_evaluation(self, at: Counters) -> None:
        """Log the evaluation begun last, if one is, at the step it was begun, waiting for it to end."""
        if self.evaluating_at is None:
            return
        with self.collector_failures(at):
            evaluation = self.collector.evaluation()
        self.logger.log(self.evaluating_at, evaluation.metrics())
        self.evaluating_at, self.test_return = None, evaluation.return_mean

    def final_evaluation(self, at: Counters) -> float:
        """Log the evaluation under way, then evaluate the trained network; its mean test return."""
        self.log_evaluation(at)
        self.begin_evaluation(at)
        self.log_evaluation(at)
        assert self.test_return is not None  # just logged
        return self.test_return

    def ask_for_next_batch(self, at: Counters) -> None:
        """Environment reset seeds follow the episode count, so a resumed run draws the same ones."""
        seeds = [self.config.seed * 1_000_003 + at.episodes + e for e in range(self.config.envs)]
        with self.collector_failures(at):
            self.collector.submit(self.learner.agent, seeds, self.learner.behaviour(at.t_env))

    def take_batch(self, at: Counters) -> Collected:
        """The batch asked for last."""
        with self.collector_failures(at):
            collected = self.collector.result()
        if self.ask_schedule is not None:
            self.ask_schedule.batch_taken()
        return collected

    @contextmanager
    def collector_failures(self, at: Counters) -> Iterator[None]:
        """A collector that failed (its process died, say) stops training with one clear line."""
        try:
            yield
        except CollectorError as exc:
            raise TrainingError.at(exc, at, self.config, self.run_dir, self.config.envs) from exc


def episode_collector(
    config: TrainConfig, generator: torch.Generator, device: torch.device
) -> EpisodeCollector:
    """A process collecting ahead for an off-policy learner when the config asks for it, else collection
    in line (an on-policy learner must learn from episodes of the policy it updates)."""
    if config.collect_ahead and not LEARNERS[config.algo].on_policy:
        return ProcessCollector(config, generator)
    runner = ParallelRunner(config.task, config.envs)
    try:
        evaluator = Evaluator(config.task, config.eval_episodes, device)
    except BaseException:
        runner.close()
        raise
    return InlineCollector(runner, generator, device, evaluator)


def replay_buffer(config: TrainConfig, info: EnvInfo, learner: Learner) -> ReplayBuffer | None:
    """The replay buffer of an off-policy learner, with room for each state's credit if it needs it."""
    if learner.on_policy:
        assert learner.credit is None  # the credit lives in the replay buffer (Learner.credit)
        return None
    return ReplayBuffer(config.buffer_size, info, learner.credit.width if learner.credit else 0)


@dataclass(frozen=True)
class Stored:
    """A collected batch as :func:`store` left it: in the replay buffer, with what to learn from drawn,
    but, for a credit function, without its credit yet (:class:`NewCredit` adds it)."""

    episodes: Episodes
    slots: torch.Tensor | None = None
    """Where the episodes went in the replay buffer; None for an on-policy learner (no buffer)."""
    drawn: torch.Tensor | None = None
    """The slots to learn from; None until the buffer holds a training batch (and on-policy)."""


def store(
    episodes: Episodes, buffer: ReplayBuffer | None, batch_size: int, generator: torch.Generator
) -> Stored:
    """Put ``episodes`` in the replay buffer (an off-policy learner's) and draw the episodes to learn
    from once it holds ``batch_size`` of them. The draw does not depend on the credit of the new states, so
    the credit is computed while the learner unrolls its networks (and the collector collects the next
    batch, if it was asked for before the update), and runs are the same as if the credit came first."""
    if buffer is None:
        return Stored(episodes)
    slots = buffer.insert(episodes)
    drawn = buffer.draw(batch_size, generator) if buffer.can_sample(batch_size) else None
    return Stored(episodes, slots, drawn)


def training_batch(stored: Stored, buffer: ReplayBuffer | None) -> Episodes | None:
    """What to learn from: the episodes themselves for an on-policy learner, else the drawn ones from
    replay (None before there are enough), without their credit (:meth:`NewCredit.of_drawn` gives it)."""
    if buffer is None:
        return stored.episodes.trimmed()
    return None if stored.drawn is None else buffer.gather(stored.drawn, with_credit=False)


class NewCredit:
    """The credit of the states a stored batch brought, being computed (in the sandbox, on the credit
    function's own thread: :meth:`SandboxCredit.begin`); waiting for it puts it in the replay buffer."""

    def __init__(self, computing: Future[torch.Tensor], stored: Stored, buffer: ReplayBuffer) -> None:
        self.computing, self.stored, self.buffer = computing, stored, buffer
        self.stored_in_buffer = False

    @classmethod
    def begin(cls, learner: Learner, stored: Stored, buffer: ReplayBuffer | None) -> NewCredit | None:
        """Start computing the credit of ``stored``'s states, if ``learner`` learns from credit."""
        if learner.credit is None or buffer is None or stored.slots is None:
            return None
        return cls(learner.credit.begin(stored.episodes.state), stored, buffer)

    def wait(self) -> None:
        """Wait for the credit and store it (once); a failed computation raises its error here."""
        if not self.stored_in_buffer:
            assert self.stored.slots is not None  # begin() makes none without
            self.buffer.set_credit(self.stored.slots, self.computing.result())
            self.stored_in_buffer = True

    def of_drawn(self, steps: int, device: torch.device) -> torch.Tensor:
        """The credit ``[B, steps + 1, C]`` of the drawn episodes, the new states' included (waited for)."""
        assert self.stored.drawn is not None  # asked for by an update, which needs a drawn batch
        self.wait()
        return self.buffer.credit_of(self.stored.drawn, steps).to(device)


def log_training(
    logger: MetricsLogger, at: Counters, epsilon: float | None, update: DataclassInstance | None
) -> None:
    metrics = {"charts/episode_return": mean(at.returns_since_log)}
    if epsilon is not None:
        metrics["charts/epsilon"] = epsilon
    metrics["charts/episodes"] = at.episodes
    if update is not None:
        metrics |= {f"losses/{name}": value for name, value in asdict(update).items()}
    logger.log(at.t_env, metrics)
    at.returns_since_log.clear()


def save_checkpoint(
    run_dir: Path,
    learner: Learner,
    buffer: ReplayBuffer | None,
    generator: torch.Generator,
    at: Counters,
    *,
    pending: Collected | None,
) -> Path:
    """Everything needed to continue exactly, with the batch collected but not yet learned from
    (``pending``); written atomically."""
    directory = run_dir / CHECKPOINT_DIR
    directory.mkdir(exist_ok=True)
    state: dict[str, Any] = {
        "learner": learner.state_dict(),
        "buffer": None if buffer is None else buffer.state_dict(),
        "generator": generator.get_state(),
        "counters": asdict(at),
        "credit_sha256": None if learner.credit is None else learner.credit.sha256,
        "pending": pending,
    }
    path = directory / f"step_{at.t_env}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def restore_checkpoint(
    path: Path,
    learner: Learner,
    buffer: ReplayBuffer | None,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[Counters, Collected | None]:
    """The counters and the batch in hand saved in ``path``, with the learner, buffer and generator
    restored in place. (Checkpoints from before collection could run ahead hold no batch: the loop
    collects the next one first, as it did then.)"""
    # Our own file, written by save_checkpoint: full unpickling is needed for the optimiser state.
    state = torch.load(path, map_location=device, weights_only=False)
    learner.load_state_dict(state["learner"])
    if buffer is not None:
        buffer.load_state_dict(state["buffer"])
        credit = learner.credit
        if credit is not None and state.get("credit_sha256") != credit.sha256:
            # The credit-function file was fixed or replaced since: the stored credit is the old one's.
            stored = buffer.storage[slice(0, buffer.size)]
            stored.credit[:] = credit(stored.state)
    generator.set_state(state["generator"].cpu())  # map_location may have moved it; generators live on CPU
    pending = state.get("pending")
    if pending is not None:
        pending = Collected(pending.episodes.to(torch.device("cpu")), pending.stats)
    return Counters(**state["counters"]), pending


def load_trained_agent(run_dir: Path) -> tuple[TrainConfig, RNNAgent, torch.device]:
    """A run's config and its trained agent network: the final model, else the latest checkpoint."""
    config = load_run_config(run_dir)
    device = pick_device(config.device)
    agent = build_agent(config, task_info(config.task))  # acting needs no mixer (and no TFCAF validation)
    final = run_dir / FINAL_MODEL
    if final.is_file():
        agent.load_state_dict(torch.load(final, map_location=device)["agent"])
    else:
        state = torch.load(latest_checkpoint(run_dir), map_location=device, weights_only=False)
        agent.load_state_dict(state["learner"]["agent"])
    return config, agent.to(device), device


def evaluate_run(run_dir: Path, episodes: int = 100) -> tuple[float, float]:
    """Greedy test return of a finished run's final model (or its latest checkpoint)."""
    config, agent, device = load_trained_agent(run_dir)
    with closing(Evaluator(config.task, episodes, device)) as evaluator:
        evaluation = evaluator.evaluate(agent)
    return evaluation.return_mean, evaluation.return_std
