"""`qllm generate --review`: a person answers each round's review at the terminal.

Shows the round's contenders (measured weights, trial result), the chooser's pick and tips, and asks
for a decision: ``accept``, ``pick ID`` or ``stop``, then (unless stopping) new tips, Enter keeping the
old ones. An answer the run cannot use is asked for again. At the end of input (no person there) the
command ends; the run's checkpoint holds the review, and ``--resume`` asks it again.
"""

from __future__ import annotations

import typer
from rich.table import Table

from qllm.agents.review import ReviewAction, ReviewAnswer, ReviewRequest
from qllm.cli.common import console


class UnansweredReviewError(Exception):
    """Input ended while a review waited for an answer."""


def show_request(request: ReviewRequest) -> None:
    table = Table(title=f"round {request.round}: {request.chooser} picked {request.chosen}")
    for column in ("candidate", "mean weight per agent", "varies with the state", "trial vs equal weights"):
        table.add_column(column)
    for candidate in request.contenders:
        weights = ", ".join(f"{w:.2f}" for w in candidate.mean_weights)
        mark = " (picked)" if candidate.id == request.chosen else ""
        table.add_row(
            candidate.id + mark, weights, f"{candidate.weight_state_variation:.3g}", candidate.trial
        )
    console.print(table)
    chosen = next((c for c in request.contenders if c.id == request.chosen), None)
    if chosen is not None:
        console.print(f"[bold]{chosen.id}[/bold]:\n{chosen.code}", highlight=False)
    console.print(f"Tips for the next round: {request.tips or '(none)'}", highlight=False)
    if request.note:
        console.print(f"[dim]{request.note}[/dim]", highlight=False)
    if request.problem:
        console.print(f"[yellow]{request.problem}[/yellow]", highlight=False)


def parse_decision(text: str) -> ReviewAnswer:
    """``accept``, ``pick ID`` or ``stop`` (first letters will do) as an answer without new tips."""
    words = text.split()
    verb = words[0].lower() if words else ReviewAction.ACCEPT.value
    action = next((a for a in ReviewAction if a.value.startswith(verb)), None)
    if action is None or (action == ReviewAction.PICK) != (len(words) == 2) or len(words) > 2:
        raise ValueError(f"expected accept, pick ID or stop, got {text!r}")
    return ReviewAnswer(action=action, candidate=words[1] if action == ReviewAction.PICK else None)


def ask_person(request: ReviewRequest) -> ReviewAnswer:
    """The :data:`~qllm.agents.run.Reviewer` of ``--review``: the request shown, a decision read."""
    show_request(request)
    while True:
        text = _prompt("Decision [accept / pick ID / stop]", default="accept")
        try:
            answer = parse_decision(text)
        except ValueError as exc:
            console.print(f"[yellow]{exc}[/yellow]", highlight=False)
            continue
        if problem := answer.problem_with(request):
            console.print(f"[yellow]{problem}[/yellow]", highlight=False)
            continue
        break
    if answer.action != ReviewAction.STOP:
        tips = _prompt("New tips for the next round (Enter keeps them)", default="")
        answer = answer.model_copy(update={"tips": tips or None})
    return answer


def _prompt(text: str, default: str) -> str:
    try:
        return typer.prompt(text, default=default, show_default=bool(default))
    except typer.Abort:  # end of input: nobody is there to answer
        raise UnansweredReviewError from None
