"""The messages each LLM call sends, rendered from the prompt files and the task's state schema.

Every prompt is single-turn and self-contained: measured with the local 1.5B model, it repeats
its previous answer when an error is appended as another chat turn, so a repair is a fresh prompt
with the task, the contract, the failed code and the error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from qllm.agents.llm import Messages
from qllm.agents.state import Candidate
from qllm.agents.template import NamedState, render_state
from qllm.agents.trial import TrialSummary
from qllm.envs.tasks import TaskSpec
from qllm.prompts import PromptLibrary
from qllm.sandbox import ValidationInputs, WeightReport

EXAMPLE_STATES = 3
"""States shown to the evaluator, with each candidate's weights on them."""


def telling_states(contenders: Sequence[Candidate], count: int = EXAMPLE_STATES) -> list[int]:
    """Indices of the reported states where the contenders' weights differ most (or, for one
    contender, where its weights are most uneven): those show the evaluator what tells them apart."""
    reports = [c.final.result.weights for c in contenders if c.final.result.weights is not None]
    if not reports:
        return []
    rows = [torch.tensor(r.example_weights) for r in reports]
    n_states = min(len(r) for r in rows)
    stacked = torch.stack([r[:n_states] for r in rows])  # [contenders, states, agents]
    spread = stacked.std(dim=0).sum(dim=1) if len(rows) > 1 else stacked[0].std(dim=1)
    order = torch.argsort(spread, descending=True, stable=True)[:count]
    return sorted(int(k) for k in order)


def task_prompt(prompts: PromptLibrary, spec: TaskSpec, named: NamedState, notes: str = "") -> str:
    """The task description, generated from the spec and the schema (never written per task)."""
    info = named.info
    return prompts.render(
        "task",
        task=spec.name,
        description=spec.description,
        team=f"{spec.team} ({info.n_agents} agents, numbered 0..{info.n_agents - 1})",
        reward=spec.reward,
        actions=", ".join(f"{i} {a}" for i, a in enumerate(info.action_names)),
        episode_limit=info.episode_limit,
        notes=f"\n## Notes on this task\n\n{notes.strip()}\n" if notes.strip() else "",
    )


def example_row(inputs: ValidationInputs) -> list[float]:
    """A representative state for the prompt: the one with the most non-zero entries."""
    nonzero = (inputs.states != 0).sum(dim=1)
    return inputs.states[int(nonzero.argmax())].tolist()


def contract_prompt(prompts: PromptLibrary, named: NamedState, inputs: ValidationInputs) -> str:
    return prompts.render(
        "contract",
        last_agent=named.info.n_agents - 1,
        fields=named.prompt_fields(),
        example=render_state(named, example_row(inputs)),
    )


def weights_summary(report: WeightReport | None) -> str:
    if report is None:
        return "not measured"
    means = ", ".join(
        f"agent {a.agent}: {a.mean:.2f} (min {a.min:.2f}, max {a.max:.2f})" for a in report.agents
    )
    return f"mean weight {means}; how much weights change with the state: {report.weight_state_variation:.3f}"


def trial_text(summary: TrialSummary | None) -> str:
    """A trial's result in a few numbers a small model can read ("" when there was no trial)."""
    if summary is None:
        return ""
    if summary.fitness is None:
        return f"Trial training did not finish ({summary.problem[:200]})."
    returns = ", ".join(f"{r:.3g}" for r in summary.returns)
    text = (
        f"Trial training ({_seeds(summary)}): greedy team return at 25/50/75/100% of the trial "
        f"{returns}; mean over the trial {summary.fitness:.3g}"
    )
    d = summary.vs_reference
    if d is None:
        return text + "."
    return f"{text}, {d.mean:+.3g} ± {d.noise:.2g} against equal weights (VDN): {d.verdict()}."


def _seeds(summary: TrialSummary) -> str:
    done = f"{summary.finished} seed{'' if summary.finished == 1 else 's'}"
    return done if summary.finished == summary.seeds else f"{done} of {summary.seeds} finished"


def improve_trial(summary: TrialSummary | None) -> str:
    """The ``trial`` field of the improve prompts: how the best function so far trained, if it did."""
    text = trial_text(summary)
    return f"How it trained: {text}\n\n" if text else ""


def coder_messages(
    prompts: PromptLibrary,
    task: str,
    contract: str,
    parent: Candidate | None,
    tips: str,
    *,
    parent_trial: TrialSummary | None = None,
    system: str = "coder_system",
    improve: str = "improve",
) -> Messages:
    """A first draft: the task and contract, plus the best function so far, how it trained on trial, and
    the evaluator's tips (``system`` and ``improve`` name the prompts of the coder's mode)."""
    parts = [task, contract]
    if parent is not None:
        parts.append(
            prompts.render(
                improve,
                code=parent.final.code,
                measurements=weights_summary(parent.final.result.weights),
                trial=improve_trial(parent_trial),
                tips=tips.strip() or "make the weights reflect which agents matter in each state",
            )
        )
    return [("system", prompts.render(system)), ("human", "\n".join(parts))]


def repair_messages(prompts: PromptLibrary, task: str, contract: str, code: str, error: str) -> Messages:
    human = prompts.render(
        "repair", task=task, contract=contract, code=code or "# (no code found)", error=error
    )
    return [("system", prompts.render("coder_system")), ("human", human)]


TrialOf = Callable[[Candidate], TrialSummary | None]


def evaluator_messages(
    prompts: PromptLibrary,
    task: str,
    named: NamedState,
    inputs: ValidationInputs,
    contenders: Sequence[Candidate],
    *,
    trial_of: TrialOf | None = None,
    reference: TrialSummary | None = None,
) -> Messages:
    """The contenders with their code, measured weights and (when they were trained) trial results."""
    shown = telling_states(contenders)
    examples = "\n\n".join(
        f"State {n}:\n```python\n{render_state(named, inputs.states[k].tolist())}\n```"
        for n, k in enumerate(shown, start=1)
    )
    blocks = []
    for number, candidate in enumerate(contenders, start=1):
        report = candidate.final.result.weights
        per_state = ""
        if report is not None:
            per_state = "\n".join(
                f"- state {n}: " + ", ".join(f"{w:.2f}" for w in report.example_weights[k])
                for n, k in enumerate(shown, start=1)
            )
        trial = trial_text(trial_of(candidate)) if trial_of is not None else ""
        blocks.append(
            f"### Candidate {number}\n\n```python\n{candidate.final.code}\n```\n\n"
            f"Measured: {weights_summary(report)}.\nWeights per agent on the example states:\n{per_state}"
            + (f"\n{trial}" if trial else "")
        )
    trials = ""
    if reference is not None and reference.fitness is not None:
        trials = (
            "\nEach candidate was also trained briefly on trial, beside equal weights (VDN), with the same "
            f"seeds and initial networks. Equal weights: {trial_text(reference)} Prefer, among sensible "
            "weights, the candidate that helped the team learn: a higher return than equal weights means "
            "it did.\n"
        )
    human = prompts.render(
        "evaluator", task=task, examples=examples, trials=trials, candidates="\n\n".join(blocks)
    )
    return [("system", prompts.render("evaluator_system")), ("human", human)]


def evaluator_retry_messages(messages: Messages, problem: str) -> Messages:
    """The evaluator prompt again, with why the last reply could not be used (single turn)."""
    system, human = messages[0], messages[-1]
    note = f"\n\nYour previous reply could not be used: {problem}. Reply with the JSON object only."
    return [system, (human[0], human[1] + note)]
