"""The coder-evaluator loop (QLLM's Algorithm 1) as a LangGraph state machine.

::

    START ──Send×K──> candidate ──> trial ──> evaluate ──> review ──Send×K──> candidate ...   (L rounds)
                                                              └──> finish ──> END   (after L, when
                                                                                     satisfied or stopped)

    candidate (a subgraph, one per Send):
        write ──> check ──> done            (passed every sandbox check)
                    └────> write            (failed: a fresh repair prompt, at most `repairs` times)
                    └────> done             (repairs exhausted: handed back as a failed candidate)

``trial`` trains the round's valid candidates, the best so far and equal weights (VDN) briefly
(:mod:`qllm.agents.trial`) when the run trains trials, and passes through otherwise; ``review`` waits for
a person's answer when the run is reviewed (:mod:`qllm.agents.review`), and passes through otherwise.
Nodes are plain functions that return partial updates. Loop bounds live in settings and state, never in
the recursion limit. The only node that writes the artifact is ``finish``, and only from a candidate
that passed the sandbox: a run ends with a validated TFCAF or with status ``failed`` and a reason.
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import RetryPolicy, Send, interrupt

from qllm.agents import artifact
from qllm.agents.context import GenerationContext
from qllm.agents.extract import ExtractionError, extract_json
from qllm.agents.messages import evaluator_messages, evaluator_retry_messages
from qllm.agents.review import ReviewAction, person_decision, read_answer, review_request
from qllm.agents.selection import Selection, consensus, rank_by_trial
from qllm.agents.spec import SpecError
from qllm.agents.state import (
    Attempt,
    Candidate,
    CandidateOutput,
    CandidateState,
    CandidateTask,
    Decision,
    Evaluation,
    GenerationState,
    RunStatus,
)
from qllm.agents.template import TemplateError
from qllm.agents.trace import CallPlace, DecisionEvent, FinishedEvent, ValidationEvent
from qllm.agents.trial import REFERENCE, function_identity
from qllm.sandbox import ErrorKind, ValidationResult

Ctx = Runtime[GenerationContext]


# --- one candidate: write -> check -> (repair | done) ----------------------------------------------


def write(state: CandidateState, runtime: Ctx) -> dict[str, Any]:
    """Ask the coder for a first draft, or for a repair of the last failed attempt."""
    ctx, task = runtime.context, state.task
    mode, contract = ctx.mode, ctx.contract_prompt
    if state.attempts:
        messages = mode.repair(ctx.prompts, ctx.task_prompt, contract, state.attempts[-1])
    else:
        messages = mode.draft(
            ctx.prompts, ctx.task_prompt, contract, task.parent, task.tips, parent_trial=task.parent_trial
        )
    place = CallPlace(round=task.round, slot=task.slot, attempt=len(state.attempts))
    return {"reply": ctx.llm.ask(ctx.coder, place, messages, schema=mode.reply_schema).text}


def check(state: CandidateState, runtime: Ctx) -> dict[str, Any]:
    """Extract the code, assemble the TFCAF and validate it in the sandbox against recorded states."""
    ctx, task = runtime.context, state.task
    number = len(state.attempts)
    code, source = "", ""
    try:
        doc = (
            f"Credit function for {ctx.spec.name}, candidate {task.candidate_id} (attempt {number}) of run "
            f"{ctx.run_id}, written by {ctx.coder.spec}."
        )
        code, source = ctx.mode.to_source(state.reply, ctx.named, doc, ctx.settings.credit_floor)
    except (ExtractionError, SpecError) as exc:
        result = ValidationResult.failure(ErrorKind.CONTRACT, str(exc))
    except TemplateError as exc:
        kind = ErrorKind.SYNTAX if str(exc).startswith("SyntaxError") else ErrorKind.CONTRACT
        result = ValidationResult.failure(kind, str(exc))
    else:
        result = ctx.validate(source)
        artifact.save_candidate(ctx.run_dir, f"{task.candidate_id}-a{number}", source)
    ctx.trace.record(
        ValidationEvent(
            event="validation", candidate=task.candidate_id, round=task.round, slot=task.slot, attempt=number,
            code=code, ok=result.ok, result=result, subject=function_identity(source) if source else "",
        )
    )  # fmt: skip
    return {"attempts": [Attempt(number=number, reply=state.reply, code=code, source=source, result=result)]}


def after_check(state: CandidateState, runtime: Ctx) -> Literal["write", "done"]:
    last = state.attempts[-1]
    if last.result.ok or len(state.attempts) > runtime.context.settings.repairs:
        return "done"
    return "write"


def done(state: CandidateState) -> dict[str, Any]:
    task = state.task
    return {
        "candidates": [
            Candidate(id=task.candidate_id, round=task.round, slot=task.slot, attempts=state.attempts)
        ]
    }


def build_candidate_graph(retry: RetryPolicy, context_schema: type | None = GenerationContext) -> StateGraph:
    builder = StateGraph(
        CandidateState,
        context_schema=context_schema,
        input_schema=CandidateState,
        output_schema=CandidateOutput,
    )
    builder.add_node("write", write, retry_policy=retry)
    builder.add_node("check", check)
    builder.add_node("done", done)
    builder.add_edge(START, "write")
    builder.add_edge("write", "check")
    builder.add_conditional_edges("check", after_check, ["write", "done"])
    builder.add_edge("done", END)
    return builder


# --- the outer loop: fan out, evaluate, repeat, finish ---------------------------------------------


def fan_out(state: GenerationState, runtime: Ctx) -> list[Send]:
    """K candidate branches for the current round, each seeded with the best function and the tips."""
    parent_trial = state.trial_summary(state.best) if state.best is not None else None
    return [
        Send(
            "candidate",
            CandidateState(task=CandidateTask(state.round, slot, state.best, state.tips, parent_trial)),
        )
        for slot in range(runtime.context.settings.candidates)
    ]


def round_contenders(state: GenerationState) -> list[Candidate]:
    """This round's valid candidates and the best so far: what the round chooses among."""
    valid = [c for c in state.of_round(state.round) if c.ok]
    return valid + ([state.best] if state.best is not None else [])


def fit_to_train(state: GenerationState, contenders: list[Candidate]) -> list[Candidate]:
    """The contenders whose trial training did not fail (a run without trials keeps them all)."""

    def failed_in_training(candidate: Candidate) -> bool:
        summary = state.trial_summary(candidate)
        return summary is not None and summary.failed > 0

    return [c for c in contenders if not failed_in_training(c)]


def trial(state: GenerationState, runtime: Ctx) -> dict[str, Any]:
    """Train the contenders and equal weights briefly, each function once per seed (none repeated)."""
    bench = runtime.context.trials
    contenders = round_contenders(state)
    if bench is None or not contenders:
        return {}
    subjects: dict[str, str | None] = {REFERENCE: None}
    subjects |= {c.subject: c.final.source for c in contenders}
    return {"trials": bench.run(subjects, done=state.trials)}


def evaluate(state: GenerationState, runtime: Ctx) -> dict[str, Any]:
    """Pick the best of this round's valid candidates (and the best so far) whose trial training, if
    any, did not fail, and get tips for the next round."""
    ctx = runtime.context
    valid = round_contenders(state)
    contenders = fit_to_train(state, valid)
    advance = {"round": state.round + 1}
    if not contenders:
        unfit = [state.trial_summary(c) for c in valid]
        problem = next((s.problem for s in unfit if s is not None and s.failed), "")
        note = f"every valid candidate failed its trial training, e.g. {problem}" if valid else ""
        decision = Decision(
            round=state.round,
            chosen=None,
            contenders=[],
            source="no-valid-candidate",
            note=note or state.failure_summary(),
        )
        ctx.trace.record(DecisionEvent(event="decision", **decision.model_dump()))
        return {**advance, "decisions": [decision]}
    if ctx.selection == Selection.TRIAL:
        decision, tips = _choose_by_trial(ctx, state, contenders)
    else:
        decision, tips = _judge(ctx, state, contenders, ctx.selection)
    chosen = next(c for c in contenders if c.id == decision.chosen)
    decision = _with_trial_verdict(state, decision, chosen)
    ctx.trace.record(DecisionEvent(event="decision", **decision.model_dump()))
    return {**advance, "decisions": [decision], "best": chosen, "tips": tips}


def _with_trial_verdict(state: GenerationState, decision: Decision, chosen: Candidate) -> Decision:
    """``decision`` saying whether ``chosen`` beat equal weights on trial (unchanged without trials)."""
    if not state.trials:
        return decision
    summary = state.trial_summary(chosen)
    return decision.model_copy(update={"beats_reference": bool(summary and summary.beats_reference)})


def _judge(
    ctx: GenerationContext, state: GenerationState, contenders: list[Candidate], judge: Selection
) -> tuple[Decision, str]:
    """The evaluator's or consensus's choice among ``contenders``, and the tips for the next round."""
    ids = [c.id for c in contenders]
    if judge == Selection.CONSENSUS:  # no LLM call; the tips stay as they were
        agreed = consensus(contenders)
        decision = Decision(
            round=state.round, chosen=agreed.chosen.id, contenders=ids, source="consensus",
            note=agreed.note(), satisfied=agreed.unanimous,
        )  # fmt: skip
        return decision, state.tips
    messages = evaluator_messages(
        ctx.prompts, ctx.task_prompt, ctx.named, ctx.inputs, contenders,
        trial_of=state.trial_summary, reference=state.reference_summary(),
    )  # fmt: skip
    evaluation, problem = _ask_evaluator(ctx, state.round, messages, len(contenders))
    if evaluation is None:
        chosen = max(contenders, key=_state_dependence)
        decision = Decision(
            round=state.round, chosen=chosen.id, contenders=ids, source="fallback",
            note=f"evaluator reply unusable twice ({problem}); chose the most state-dependent weights",
        )  # fmt: skip
        return decision, state.tips
    decision = Decision(
        round=state.round, chosen=contenders[evaluation.choice - 1].id, contenders=ids, source="evaluator",
        evaluation=evaluation, satisfied=evaluation.satisfied,
    )  # fmt: skip
    return decision, evaluation.tips


def _choose_by_trial(
    ctx: GenerationContext, state: GenerationState, contenders: list[Candidate]
) -> tuple[Decision, str]:
    """The contender that trained best; the judge breaks a tie within the noise, and only then."""
    ranking = rank_by_trial(contenders, state.trials)
    ids = [c.id for c in contenders]
    if ranking.best is None:  # no trial finished: the judge decides alone, and the decision says why
        decision, tips = _judge(ctx, state, contenders, ctx.judge)
        return decision.model_copy(update={"note": f"{ranking.note}; {decision.note}".strip("; ")}), tips
    # A clear winner gets no tips: the last ones were about another function (the coder still sees
    # how the winner trained).
    chosen, tips, evaluation, how = ranking.best, "", None, "a clear winner"
    if len({c.subject for c in ranking.tied}) > 1:  # a tie of one function written twice needs no judge
        judged, tips = _judge(ctx, state, ranking.tied, ctx.judge)
        chosen, evaluation = state.by_id(judged.chosen or ranking.best.id), judged.evaluation
        tied = ", ".join(c.id for c in ranking.tied)
        how = f"{tied} tied within the noise; {judged.source} chose {chosen.id}"
    summary = state.trial_summary(chosen)
    decision = Decision(
        round=state.round, chosen=chosen.id, contenders=ids, source="trial", evaluation=evaluation,
        note=f"{ranking.note}; {how}", satisfied=bool(summary and summary.beats_reference),
    )  # fmt: skip
    return decision, tips


def _state_dependence(candidate: Candidate) -> float:
    report = candidate.final.result.weights
    return report.weight_state_variation if report is not None else 0.0


def _ask_evaluator(
    ctx: GenerationContext, round_: int, messages: Any, n_contenders: int
) -> tuple[Evaluation | None, str]:
    """The evaluator's reply as an :class:`Evaluation`, asking once more if the first is unusable."""
    problem = ""
    for attempt in range(2):
        prompt = messages if attempt == 0 else evaluator_retry_messages(messages, problem)
        place = CallPlace(round=round_, attempt=attempt)
        reply = ctx.llm.ask(ctx.evaluator, place, prompt, schema=Evaluation)
        try:
            evaluation = (
                Evaluation.model_validate(reply.parsed)
                if reply.parsed
                else extract_json(reply.text, Evaluation)
            )
        except (ExtractionError, ValueError) as exc:
            problem = str(exc)
            continue
        if 1 <= evaluation.choice <= n_contenders:
            return evaluation, ""
        problem = f"choice {evaluation.choice} is not a candidate number (1..{n_contenders})"
    return None, problem


STATE_DEPENDENCE = 1e-3
"""Weights that vary less than this across states are VDN in disguise: no reason to stop early."""


def review(state: GenerationState, runtime: Ctx) -> dict[str, Any]:
    """With ``review`` on, wait for a person's answer to the round's pick (:mod:`qllm.agents.review`);
    a round that chose nothing has nothing to review. A refused answer is asked for again, saying why."""
    ctx = runtime.context
    chooser = state.decisions[-1] if state.decisions else None
    if not ctx.settings.review or chooser is None or chooser.chosen is None:
        return {}
    contenders = [state.by_id(candidate_id) for candidate_id in chooser.contenders]
    request = review_request(state, contenders)
    answer, problem = read_answer(interrupt(request.model_dump(mode="json")), request)
    while answer is None:  # each refused answer is another interrupt, asked with the reason
        retry = review_request(state, contenders, problem=problem)
        answer, problem = read_answer(interrupt(retry.model_dump(mode="json")), request)
    best = state.by_id(answer.candidate) if answer.action == ReviewAction.PICK else state.best
    decision = _with_trial_verdict(state, person_decision(request, answer, chooser), best)
    ctx.trace.record(DecisionEvent(event="decision", **decision.model_dump()))
    update: dict[str, Any] = {"decisions": [decision], "best": best}
    if answer.action == ReviewAction.PICK:
        update["tips"] = ""  # the chooser's tips were about another function
    if answer.tips is not None and answer.action != ReviewAction.STOP:
        update["tips"] = answer.tips
    return update | {"stopped": answer.action == ReviewAction.STOP}


def after_review(state: GenerationState, runtime: Ctx) -> list[Send] | Literal["finish"]:
    """Another round, or finish after L rounds, when a person stopped the run, or when the chooser is
    satisfied (the evaluator says so, consensus is unanimous, or under trial selection the choice beat
    equal weights beyond the noise) with a function whose weights actually depend on the state (a weak
    evaluator is often satisfied with less)."""
    settings = runtime.context.settings
    last = state.decisions[-1] if state.decisions else None
    satisfied = bool(
        last is not None
        and last.satisfied
        and state.best is not None
        and _state_dependence(state.best) > STATE_DEPENDENCE
    )
    if state.stopped or state.round > settings.rounds or (settings.early_stop and satisfied):
        return "finish"
    return fan_out(state, runtime)


def finish(state: GenerationState, runtime: Ctx) -> dict[str, Any]:
    """Write the artifact from the best validated candidate, or end with a clear failure."""
    ctx = runtime.context
    if state.best is None or not state.best.ok:
        last = state.decisions[-1] if state.decisions else None
        reason = last.note if last is not None and last.note else state.failure_summary()
        update = {"status": RunStatus.FAILED, "reason": reason}
    else:
        path = artifact.write_artifact(ctx, state, state.best)
        rounds_run = state.round - 1
        update = {
            "status": RunStatus.SUCCEEDED,
            "reason": f"candidate {state.best.id} chosen after {rounds_run} round(s); written to {path}"
            + _trial_verdict(state, state.best),
        }
    ctx.trace.record(FinishedEvent(event="finished", status=str(update["status"]), reason=update["reason"]))
    return update


def _trial_verdict(state: GenerationState, best: Candidate) -> str:
    """How the chosen function did on trial against equal weights, said plainly ("" without trials)."""
    summary = state.trial_summary(best)
    if summary is None:
        return ""
    d = summary.vs_reference
    if d is None:
        return f"; its trial training did not finish ({summary.problem[:160]})"
    if summary.beats_reference:
        return f"; on trial it beat equal weights (VDN) by {d.mean:+.3g} ± {d.noise:.2g}"
    return (
        f"; on trial it did NOT beat equal weights (VDN) beyond the noise ({d.mean:+.3g} ± {d.noise:.2g}): "
        "on this evidence, training with --mixer vdn is as good"
    )


def build_graph(retry: RetryPolicy, context_schema: type | None = GenerationContext) -> StateGraph:
    """The uncompiled graph; compile it with a checkpointer (see :mod:`qllm.agents.run`).

    The nodes run with a :class:`GenerationContext`, which ``context_schema`` declares; the LangGraph
    server's graph declares none (:mod:`qllm.agents.server`): no request can carry that context, and
    Studio asks for the declared schema as JSON, which models and sandboxes have not."""
    candidate = build_candidate_graph(retry, context_schema).compile()
    builder = StateGraph(GenerationState, context_schema=context_schema)
    builder.add_node("candidate", candidate)
    builder.add_node("trial", trial)
    builder.add_node("evaluate", evaluate, retry_policy=retry)
    builder.add_node("review", review)
    builder.add_node("finish", finish)
    builder.add_conditional_edges(START, fan_out, ["candidate"])
    builder.add_edge("candidate", "trial")
    builder.add_edge("trial", "evaluate")
    builder.add_edge("evaluate", "review")
    builder.add_conditional_edges("review", after_review, ["candidate", "finish"])
    builder.add_edge("finish", END)
    return builder
