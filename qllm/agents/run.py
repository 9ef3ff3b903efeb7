"""Start, resume and finish a generation run: the folder, the context, and the checkpointed graph.

::

    run = GenerationRun.create(GenerationSettings(task="matrix-climbing"), Path("runs/generate"))
    outcome = run.execute()                 # or GenerationRun.open(path).execute() to resume
    outcome.status, outcome.artifact        # RunStatus.SUCCEEDED, Path(".../tfcaf.py")

A run is identified by its folder. Everything needed to resume it is in there: the settings, the
recorded states, the LangGraph checkpoints (SQLite) and the trace (which replays completed LLM calls).
Tests pass fake chat models through ``models=``; otherwise models are built from the settings.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.types import Command, RetryPolicy, StateSnapshot

from qllm.agents import artifact
from qllm.agents.context import GenerationContext, GenerationSettings
from qllm.agents.graph import build_graph
from qllm.agents.llm import ChatRole, LLMCaller
from qllm.agents.messages import task_prompt
from qllm.agents.modes import resolve_mode, writing_mode
from qllm.agents.review import ReviewAnswer, ReviewRequest
from qllm.agents.selection import judge_for, resolve_selection
from qllm.agents.state import CHECKPOINTED_TYPES, GenerationState, RunStatus
from qllm.agents.template import NamedState
from qllm.agents.trace import RunStarted, Trace, TraceEvent
from qllm.agents.trial import TrialBench
from qllm.envs.recording import load_recording, record, save_recording
from qllm.envs.tasks import folder_name, resolve_task
from qllm.llm.providers import ModelSpec, make_chat_model
from qllm.prompts import PromptLibrary
from qllm.sandbox import Sandbox, ValidationInputs

T = TypeVar("T")

SETTINGS_FILE = "settings.json"
STATES_FILE = "states.npz"
CHECKPOINTS_FILE = "checkpoints.sqlite"


class RunFolderError(ValueError):
    """A path that is not a generation run folder."""


@dataclass(frozen=True)
class GenerationOutcome:
    status: RunStatus
    reason: str
    run_dir: Path
    artifact: Path | None
    """``tfcaf.py`` when the run succeeded."""
    state: GenerationState
    pending: ReviewRequest | None = None
    """The review the run waits on, when it stopped for one."""


@dataclass(frozen=True)
class NodeFinished:
    """A node of the graph finished a step (LangGraph's ``updates`` stream)."""

    node: str
    namespace: tuple[str, ...] = ()
    """Where it ran: ``()`` in the outer loop, ``("candidate:<task id>",)`` inside a candidate."""


@dataclass(frozen=True)
class ReviewPending:
    """The run waits for a person's answer to this request (:mod:`qllm.agents.review`)."""

    request: ReviewRequest


RunUpdate = TraceEvent | NodeFinished | ReviewPending
"""What :meth:`GenerationRun.stream` yields."""
Listener = Callable[[TraceEvent], None]
"""Takes each trace event of a run as it happens (``qllm sweep``'s progress lines)."""
Reviewer = Callable[[ReviewRequest], ReviewAnswer]
"""Answers a review: a person at a terminal (``qllm generate --review``), or a test."""


@dataclass(frozen=True)
class Models:
    """Chat models to use instead of building them from the settings (tests, notebooks)."""

    coder: BaseChatModel
    evaluator: BaseChatModel


def _role(name: str, spec: ModelSpec, model: BaseChatModel) -> ChatRole:
    return ChatRole(name, spec, model, structured_output=spec.info.structured_output)


def _serializer() -> JsonPlusSerializer:
    allowed = [(t.__module__, t.__name__) for t in CHECKPOINTED_TYPES]
    return JsonPlusSerializer(allowed_msgpack_modules=allowed)


@contextmanager
def _closing(trials: TrialBench | None) -> Iterator[None]:
    """Stops the trials' executor (a local Ray instance) however the run ends."""
    try:
        yield
    finally:
        if trials is not None:
            trials.close()


class GenerationRun:
    """One run folder."""

    def __init__(self, run_dir: Path, settings: GenerationSettings) -> None:
        self.run_dir = run_dir
        self.settings = settings

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @classmethod
    def create(cls, settings: GenerationSettings, runs_dir: Path, label: str | None = None) -> GenerationRun:
        """A new run folder with the settings, the recorded states and the task prompt, named after the
        task, the seed and ``label`` (the time by default; the LangGraph server's thread id)."""
        spec = resolve_task(settings.task)
        # Recorded first: an environment that fails (a plugin's, say) leaves no half-made run folder.
        recording = record(spec.name, settings.record_episodes, seed=settings.seed)
        label = label or time.strftime("%Y%m%d-%H%M%S")
        base = f"{folder_name(spec.name)}__tfcaf__{settings.seed}__{label}"
        run_dir, suffix = runs_dir / base, 1
        while run_dir.exists():
            run_dir = runs_dir / f"{base}.{suffix}"
            suffix += 1
        run_dir.mkdir(parents=True)
        (run_dir / SETTINGS_FILE).write_text(json.dumps(settings.to_dict(), indent=2) + "\n")
        save_recording(recording, run_dir / STATES_FILE)
        return cls(run_dir, settings)

    @classmethod
    def open(cls, run_dir: Path) -> GenerationRun:
        """An existing run folder (to resume or inspect)."""
        path = run_dir / SETTINGS_FILE
        if not path.is_file():
            raise RunFolderError(f"{run_dir} is not a generation run folder (no {SETTINGS_FILE})")
        saved = json.loads(path.read_text())
        # Folders from before these settings existed were all written as code and judged by the evaluator.
        saved.setdefault("mode", "code")
        saved.setdefault("selection", "evaluator")
        # ... and trained no trials (every trial setting added since has a default).
        return cls(run_dir, GenerationSettings.from_dict(saved))

    def _trial_bench(self, trace: Trace) -> TrialBench | None:
        s = self.settings
        trial_settings = s.trial_settings(resolve_task(s.task).trial_steps)
        if trial_settings is None:
            return None
        return TrialBench(trial_settings, self.run_dir, trace, s.trial_executor, s.trial_address)

    def _context(
        self, trace: Trace, sandbox: Sandbox, trials: TrialBench | None, models: Models | None
    ) -> GenerationContext:
        s = self.settings
        spec = resolve_task(s.task)
        recording = load_recording(self.run_dir / STATES_FILE)
        named = NamedState.for_task(recording.info)
        prompts = PromptLibrary(s.prompt_version)
        task_text = task_prompt(prompts, spec, named, s.notes)
        inputs = ValidationInputs.from_recording(recording, seed=s.seed)
        (self.run_dir / "task_prompt.md").write_text(task_text)
        coder_spec = ModelSpec.parse(s.coder, s.coder_base_url)
        evaluator_spec = ModelSpec.parse(s.evaluator, s.evaluator_base_url)
        mode = writing_mode(resolve_mode(s.mode, coder_spec), named, inputs)
        if models is None:
            models = Models(
                make_chat_model(coder_spec, s.coder_temperature, s.max_tokens, s.timeout_s),
                make_chat_model(evaluator_spec, s.evaluator_temperature, s.max_tokens, s.timeout_s),
            )
        return GenerationContext(
            settings=s, spec=spec, named=named,
            inputs=inputs,
            episode=recording,
            task_prompt=task_text, prompts=prompts,
            contract_prompt=mode.contract(prompts, named, inputs), mode=mode,
            selection=resolve_selection(s.selection, evaluator_spec), judge=judge_for(evaluator_spec),
            trials=trials,
            coder=_role("coder", coder_spec, models.coder),
            evaluator=_role("evaluator", evaluator_spec, models.evaluator),
            llm=LLMCaller(trace, seed=s.seed), trace=trace, sandbox=sandbox,
            run_id=self.run_id, run_dir=self.run_dir,
        )  # fmt: skip

    @contextmanager
    def context(self, models: Models | None = None) -> Iterator[GenerationContext]:
        """The live context the graph's nodes need (models, sandbox, trials, recorded states), open for
        as long as the ``with`` block: for :meth:`stream`, and for the LangGraph server's graph factory."""
        trace = Trace(self.run_dir)
        trials = self._trial_bench(trace)
        with Sandbox() as sandbox, _closing(trials):
            yield self._context(trace, sandbox, trials, models)

    @contextmanager
    def _checkpointer(self) -> Iterator[SqliteSaver]:
        with SqliteSaver.from_conn_string(str(self.run_dir / CHECKPOINTS_FILE)) as saver:
            saver.serde = _serializer()
            yield saver

    def graph_config(self, ctx: GenerationContext) -> dict[str, Any]:
        """How the graph runs: as many candidates at once as the coder serves, and metadata that every
        trace a tracer (LangSmith) records of this run carries, down to the LLM calls."""
        return {
            "max_concurrency": self._concurrency(ctx),
            "metadata": {"qllm_run": self.run_id, "qllm_task": self.settings.task},
        }

    def record_start(self, ctx: GenerationContext, resumed: bool) -> RunStarted:
        """Record in the trace that the run starts (or resumes) with these settings and prompts."""
        started = RunStarted(
            event="resumed" if resumed else "started",
            settings=self.settings.to_dict(),
            prompt_version=ctx.prompts.version,
            prompt_hashes=ctx.prompts.hashes(),
        )
        return ctx.trace.record(started)

    def _config(self, ctx: GenerationContext | None = None) -> dict[str, Any]:
        extra = self.graph_config(ctx) if ctx is not None else {}
        return {"configurable": {"thread_id": self.run_id}, **extra}

    def stream(self, models: Models | None = None, reviewer: Reviewer | None = None) -> Iterator[RunUpdate]:
        """Run the graph to its end (or to a review nobody answers here), resuming from the last checkpoint
        if there is one, and yield what happens: every trace event as it is recorded (the graph's
        ``custom`` stream), each finished node (its ``updates`` stream) and each review it waits on.

        With ``reviewer``, each review is answered by it and the run goes on; without, the stream ends
        at the first review, which the next call's reviewer answers (the checkpoint holds it)."""
        with self.context(models) as ctx:
            yield from _driven(self._astream(ctx, reviewer))

    async def _astream(self, ctx: GenerationContext, reviewer: Reviewer | None) -> AsyncIterator[RunUpdate]:
        async with AsyncSqliteSaver.from_conn_string(str(self.run_dir / CHECKPOINTS_FILE)) as saver:
            saver.serde = _serializer()
            graph = build_graph(ctx.retry_policy()).compile(checkpointer=saver)
            config = self._config(ctx)
            snapshot = await graph.aget_state(config)
            if snapshot.values and not snapshot.next:
                return  # already finished
            pending = _pending_review(snapshot)
            graph_input: Any = None if snapshot.values else GenerationState()
            if pending is not None:
                if reviewer is None:
                    yield ReviewPending(pending)
                    return
                graph_input = _answered(reviewer, pending)
            yield self.record_start(ctx, resumed=bool(snapshot.values))
            while True:
                pending = None
                # aclosing: a consumer that stops early closes the graph's stream too, cancelling its steps
                async with aclosing(graph.astream(graph_input, config, context=ctx, **STREAM)) as chunks:
                    async for chunk in chunks:
                        for update in _typed(chunk):
                            if isinstance(update, ReviewPending):
                                pending = update.request
                            yield update
                if pending is None or reviewer is None:
                    return
                graph_input = _answered(reviewer, pending)

    def execute(
        self, models: Models | None = None, listener: Listener | None = None, reviewer: Reviewer | None = None
    ) -> GenerationOutcome:
        """:meth:`stream` to its end, handing each trace event to ``listener``; the run's outcome."""
        updates = self.stream(models, reviewer)
        try:
            for update in updates:
                if listener is not None and not isinstance(update, NodeFinished | ReviewPending):
                    listener(update)
        except KeyboardInterrupt as interrupt:
            # Ctrl-C while the listener ran: raised in the stream too, so that it ends at once as after a
            # Ctrl-C inside it (see _driven), instead of waiting, as it closes, for a model call in flight.
            updates.throw(interrupt)
            raise
        return self.outcome()

    def outcome(self) -> GenerationOutcome:
        """Where the run stands, from its last checkpoint."""
        with self._checkpointer() as saver:
            graph = build_graph(RetryPolicy()).compile(checkpointer=saver)
            snapshot = graph.get_state(self._config())
        state = GenerationState(**snapshot.values) if snapshot.values else GenerationState()
        return self._outcome(state, _pending_review(snapshot))

    @staticmethod
    def _concurrency(ctx: GenerationContext) -> int:
        """As many candidates at once as the coder serves calls (the local model: one)."""
        return max(1, min(ctx.coder.spec.info.max_concurrency, ctx.settings.candidates))

    def _outcome(self, state: GenerationState, pending: ReviewRequest | None) -> GenerationOutcome:
        path = self.run_dir / artifact.ARTIFACT_FILE
        succeeded = state.status == RunStatus.SUCCEEDED
        reason = state.reason
        if pending is not None:  # said plainly wherever a run is driven without a reviewer (sweeps, evals)
            reason = (
                f"the run waits for a person's review of round {pending.round}: answer it with "
                f"qllm generate --resume {self.run_dir}"
            )
        return GenerationOutcome(
            state.status, reason, self.run_dir, path if succeeded else None, state, pending
        )


STREAM: dict[str, Any] = {"stream_mode": ["updates", "custom"], "subgraphs": True}
"""How the run streams its graph: node updates and the trace's events, from the candidate subgraphs too."""


def _driven(chunks: AsyncIterator[T]) -> Iterator[T]:
    """``chunks`` iterated from synchronous code, on an event loop of its own.

    The graph streams asynchronously (its sync nodes run on threads) because LangGraph's synchronous
    ``stream`` runs the thread that waits on the ``custom`` stream on one of the run's
    ``max_concurrency`` threads: with one slot (the local model serves one call at a time) the run would
    hang, and with more, candidates would run more at once than the coder serves. The asynchronous
    stream waits on the event loop instead. Leaving the loop early (an error) closes the stream, which
    cancels the run's pending steps; Ctrl-C leaves them to the process's end."""
    loop = asyncio.new_event_loop()
    step: asyncio.Future[T] | None = None
    abandoned = False
    try:
        while True:
            step = asyncio.ensure_future(anext(chunks), loop=loop)
            try:
                with _ctrl_c_between_callbacks(loop):
                    chunk = loop.run_until_complete(step)
            except StopAsyncIteration:
                return
            yield chunk
    except KeyboardInterrupt:
        # Ctrl-C ends the stream now, without waiting for the step: its thread may be in a model call
        # for minutes. Nothing is lost: the trace and the checkpoints are written as the run goes.
        abandoned = True
        raise
    finally:
        if not abandoned:
            if step is not None and not step.done():
                step.cancel()
                loop.run_until_complete(asyncio.gather(step, return_exceptions=True))
            loop.run_until_complete(chunks.aclose())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


@contextmanager
def _ctrl_c_between_callbacks(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """While ``loop`` runs, Ctrl-C raised by the loop between two callbacks, not inside the graph's code.

    Python raises KeyboardInterrupt wherever the main thread is when the signal arrives. Inside the
    graph's own coroutines, LangGraph's task executor catches it on the way out and waits for every
    task in flight, a model call among them (minutes), before it lets the interrupt through. Raised
    from a callback of the loop, it leaves ``run_until_complete`` at once. Only where Ctrl-C is
    Python's default (not ignored, no other handler) and on the main thread, where signals land."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    loop.add_signal_handler(signal.SIGINT, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)  # puts back Python's default handler


def _raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


INTERRUPT = "__interrupt__"
"""The key under which LangGraph's ``updates`` stream carries a pending ``interrupt()``."""


def _typed(chunk: tuple[tuple[str, ...], str, Any]) -> Iterator[RunUpdate]:
    """One chunk of the graph's stream as typed updates."""
    namespace, mode, data = chunk
    if mode == "custom":
        yield data
    elif INTERRUPT in data:
        yield ReviewPending(ReviewRequest.model_validate(data[INTERRUPT][0].value))
    else:
        yield from (NodeFinished(node, namespace) for node in data)


def _answered(reviewer: Reviewer, request: ReviewRequest) -> Command:
    """What resumes a run waiting on ``request``: the reviewer's answer."""
    return Command(resume=reviewer(request).model_dump(mode="json"))


def _pending_review(snapshot: StateSnapshot) -> ReviewRequest | None:
    """The review a checkpointed run waits on, if it waits on one."""
    for task in snapshot.tasks:
        for pending in task.interrupts:
            return ReviewRequest.model_validate(pending.value)
    return None
