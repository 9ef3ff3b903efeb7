"""The coder-evaluator graph behind the LangGraph API: ``langgraph dev``, LangGraph Studio and the SDK.

``langgraph.json`` at the repository root names :func:`generation_graph`, a graph factory the server
calls for every run. A run's settings travel in its config, under ``qllm``::

    client.runs.wait(thread["thread_id"], "qllm", input={},
                     config={"configurable": {"qllm": {"task": "matrix-climbing", "candidates": 2}}})

The keys are :class:`~qllm.agents.context.GenerationSettings`' (``task`` defaults to the main job's),
plus ``runs_dir`` (``runs/generate`` by default, relative to where the server runs). The first run on a
thread makes a run folder named after the thread, with the files ``qllm generate`` writes (settings,
recorded states, trace, candidates, the credit function); later runs on the same thread, such as the
answer to a review (``command={"resume": {"action": "accept"}}``), reopen it: they must name the same
``runs_dir`` (an assistant keeps it), and a thread whose run has finished takes no new run. The thread's
checkpoints are the server's, so the folder has no ``checkpoints.sqlite``.

The nodes need a live context (models, sandbox, recorded states) that no API request can carry, so the
factory builds it from the settings and binds it to the graph it returns (:class:`BoundGraph`). Studio
reading or drawing the graph gets the plain graph, and no run folder.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.constants import CONFIG_KEY_CHECKPOINTER
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import RetryPolicy

from qllm.agents.context import GenerationContext, GenerationSettings, SettingsError
from qllm.agents.graph import build_graph
from qllm.agents.run import GenerationRun
from qllm.agents.trace import TRACE_FILE, FinishedEvent, read_events
from qllm.envs.tasks import DEFAULT_TASK

SETTINGS_KEY = "qllm"
"""Where a run's settings sit in ``config["configurable"]``."""
RUNS_DIR_KEY = "runs_dir"
DEFAULT_RUNS_DIR = Path("runs/generate")
_FOR_EXECUTION = "__is_for_execution__"
"""Set by the LangGraph server in a factory's config: true when the graph is wanted to run, not read."""


class BoundGraph(CompiledStateGraph):
    """The generation graph with its run's context bound: the server runs a graph with the context its
    client sent (none, or a dict), and the nodes get this one instead."""

    def __init__(self, *, bound_context: GenerationContext | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bound_context = bound_context

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        return super().stream(input, config, **(kwargs | {"context": self.bound_context}))

    def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        return super().astream(input, config, **(kwargs | {"context": self.bound_context}))


class ThreadRunError(ValueError):
    """A run on a thread whose run folder cannot be used: missing, or its run has finished."""


def run_for_thread(configurable: dict[str, Any], thread_has_run: bool) -> tuple[GenerationRun, bool]:
    """The run folder of this thread, made on its first run; and whether it existed already. A thread
    that already has a run (its checkpoints) must find its folder: a run folder is never made up for
    an existing thread's state (a resume sent with another ``runs_dir``, or none)."""
    requested = dict(configurable.get(SETTINGS_KEY) or {})
    runs_dir = Path(requested.pop(RUNS_DIR_KEY, DEFAULT_RUNS_DIR))
    thread = str(configurable["thread_id"])
    existing = sorted(runs_dir.glob(f"*__{thread}"))
    if existing:
        if any(isinstance(event, FinishedEvent) for event in read_events(existing[0] / TRACE_FILE)):
            raise ThreadRunError(
                f"the run of thread {thread} has finished ({existing[0]}): start a new thread"
            )
        return GenerationRun.open(existing[0]), True
    if thread_has_run:
        raise ThreadRunError(
            f"thread {thread} has a run, but its folder is not under {runs_dir}: send the config (runs_dir) "
            "the thread's first run had"
        )
    settings = GenerationSettings.from_dict({"task": DEFAULT_TASK, **requested})
    return GenerationRun.create(settings, runs_dir, label=thread), False


async def _has_checkpoint(configurable: dict[str, Any]) -> bool:
    """Whether the server's checkpointer already holds a state of this thread."""
    saver = configurable.get(CONFIG_KEY_CHECKPOINTER)
    if saver is None:
        return False
    return await saver.aget_tuple({"configurable": {"thread_id": configurable["thread_id"]}}) is not None


@asynccontextmanager
async def generation_graph(config: RunnableConfig) -> AsyncIterator[CompiledStateGraph]:
    """The graph factory ``langgraph.json`` names (see the module's docstring)."""
    configurable = config.get("configurable") or {}
    if not configurable.get(_FOR_EXECUTION):
        yield build_graph(RetryPolicy(), context_schema=None).compile()
        return
    thread_has_run = await _has_checkpoint(configurable)
    try:
        # Recording states and starting the sandbox block for seconds: off the server's event loop.
        run, resumed = await asyncio.to_thread(run_for_thread, configurable, thread_has_run)
    except SettingsError as exc:
        raise ValueError(f"bad qllm settings in config.configurable.{SETTINGS_KEY}: {exc}") from None
    with ExitStack() as stack:
        ctx = await asyncio.to_thread(stack.enter_context, run.context())
        run.record_start(ctx, resumed)
        compiled = build_graph(ctx.retry_policy(), context_schema=None).compile()
        # As Pregel.copy does (langgraph 1.2): the compiled graph's attributes are its constructor's.
        attributes = {k: v for k, v in compiled.__dict__.items() if k != "__orig_class__"}
        bound = BoundGraph(bound_context=ctx, **attributes)
        try:
            yield bound.with_config(run.graph_config(ctx))
        finally:
            await asyncio.to_thread(stack.pop_all().close)
