"""Progress of long work: a live bar on a terminal, plain lines everywhere else.

Rich's live bar assumes a terminal. Written into a pipe or a log file it renders once, at the end, at 80
columns, so ``qllm run > log`` kept only ``lbf-8x8-2p-2f tfcaf ━━ 2…``. When the console is not a
terminal, :func:`step_progress` prints a full line instead whenever another tenth of the budget is done,
or a while has passed since the last line, and once more at the end. Every command with progress over a
budget (``train``, ``run``, ``sweep``, ``record``) comes through here, so they choose alike.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LINE_FRACTION = 0.1
"""Without a terminal, a line each time this much more of the budget is done..."""
LINE_SECONDS = 30.0
"""...or when this many seconds have passed since the last line (slow steps, or no known total)."""


class StepProgress(Protocol):
    """Where long work reports how far it is."""

    def update(self, done: int, total: int | None = None, detail: str = "") -> None:
        """``done`` of ``total`` units (``None``: keep the total given last), and a short ``detail``
        (rich markup allowed) such as the latest return."""
        ...

    def note(self, line: str) -> None:
        """A line of its own (a run that started or ended), kept above a live bar."""
        ...


class _Bar:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress, self.task = progress, task

    def update(self, done: int, total: int | None = None, detail: str = "") -> None:
        self.progress.update(self.task, completed=done, total=total, detail=detail)

    def note(self, line: str) -> None:
        self.progress.console.print(line, highlight=False, soft_wrap=True)


class _Lines:
    def __init__(self, console: Console, label: str, total: int | None, unit: str) -> None:
        self.console, self.label, self.total, self.unit = console, label, total, unit
        self.start = self.last_time = time.monotonic()
        self.done, self.detail = 0, ""
        self.printed: int | None = None  # `done` when the last line was printed
        self.next_done = self._step()

    def _step(self) -> int:
        return max(1, round(self.total * LINE_FRACTION)) if self.total else 0

    def update(self, done: int, total: int | None = None, detail: str = "") -> None:
        if total is not None:
            self.total = total  # a sweep's total shrinks as runs fail for good
        self.done, self.detail = done, detail
        step = self._step()
        if (step and done >= self.next_done) or time.monotonic() - self.last_time >= LINE_SECONDS:
            self._print()
            self.next_done = (done // step + 1) * step if step else 0

    def note(self, line: str) -> None:
        self.console.print(line, highlight=False, soft_wrap=True)

    def finish(self) -> None:
        if self.printed != self.done:
            self._print()

    def _print(self) -> None:
        self.printed, self.last_time = self.done, time.monotonic()
        if self.total:
            share = f"{self.done:,}/{self.total:,} {self.unit} ({100 * self.done / self.total:.0f}%)"
        else:
            share = f"{self.done:,} {self.unit}"
        parts = [f"{self.label}: {share}", self.detail, f"{time.monotonic() - self.start:.0f} s elapsed"]
        # Soft wrap: one line however long, never cut to the 80 columns rich assumes for a pipe.
        self.console.print(" | ".join(p for p in parts if p), highlight=False, soft_wrap=True)


@contextmanager
def step_progress(
    console: Console, label: str, total: int | None, unit: str = "steps", transient: bool = False
) -> Iterator[StepProgress]:
    """Progress of ``label`` over ``total`` ``unit``: a live bar when ``console`` is a terminal (cleared
    at the end if ``transient``), plain lines otherwise (the last one when the block ends normally)."""
    if not console.is_terminal:
        lines = _Lines(console, label, total, unit)
        yield lines
        lines.finish()
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=transient) as progress:
        yield _Bar(progress, progress.add_task(label, total=total, detail=""))
