"""A credit-spec function's credit, as qllm's templates compile it now and as they compiled it before.

Before: the spec template's ``relative()`` computed every agent's value of a quantity again for each
agent's weight (n^2 quantity calls per state), and the geometry helpers paired coordinates with ``zip``
and tuple unpacking, which the sandbox checks element by element. This script compiles one credit spec
(vs_epymarl.py's) for each task, puts the earlier helpers back by text for "before" (and only the
earlier geometry for "relative", the first change alone), checks that all three give the same credit
bit for bit, and times ``compute_credit`` (what a sandbox credit call runs, under the restricted loader,
in this process) on a recording's states, the three alternating over 15 rounds, each leading in turn;
medians are printed.

Run:  .venv/bin/python reports/training-speed/template_credit.py lbf-8x8-2p-2f lbf-2s-10x10-3p-3f \\
          lbf-15x15-4p-3f
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from qllm.agents.spec import RELATIVE_HELPER, SPEC_TEMPLATE_ID, CreditSpec, compile_spec, per_agent_quantities
from qllm.agents.template import NamedState, assemble, keep_definitions
from qllm.envs import make_env
from qllm.envs.recording import record
from qllm.sandbox import ValidationInputs
from qllm.sandbox.checks import compute_credit
from qllm.sandbox.restricted import load_credit_function

OLD_RELATIVE = '''def relative(s, i, quantity):
    """Where agent i stands in the team on one quantity: in [-1, 1], 0 when all agents are equal."""
    values = [quantity(s, j) for j in range(N_AGENTS)]
    mean = sum(values) / len(values)
    spread = max(abs(v - mean) for v in values)
    return 0.0 if spread == 0 else (values[i] - mean) / spread

'''
GEOMETRY_NOW_AND_BEFORE = [
    (
        "math.sqrt(sum((a[k] - b[k]) ** 2 for k in range(min(len(a), len(b)))))",
        "math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))",
    ),
    ("sum(abs(a[k] - b[k]) for k in range(min(len(a), len(b))))", "sum(abs(x - y) for x, y in zip(a, b))"),
]
SPEC = {
    "reasoning": "agents next to food that load matter",
    "terms": [
        {"quantity": "nearest_food_distance", "more_credit_to": "lowest", "strength": "strong"},
        {"quantity": "last_action[LOAD]", "more_credit_to": "highest", "strength": "moderate"},
    ],
}
ROUNDS, CALLS = 15, 3


def sources(task: str) -> dict[str, str]:
    """The credit function compiled now, with only the earlier geometry ("relative"), and as before."""
    named = NamedState.for_task(make_env(task).info)
    written = compile_spec(CreditSpec.model_validate(SPEC), per_agent_quantities(named))
    now = assemble(named, keep_definitions(written), template_id=SPEC_TEMPLATE_ID)
    relative_only = now
    for current, earlier in GEOMETRY_NOW_AND_BEFORE:
        assert current in relative_only, "the template's geometry helpers changed: update this script"
        relative_only = relative_only.replace(current, earlier)
    assert RELATIVE_HELPER in relative_only
    return {
        "before": relative_only.replace(RELATIVE_HELPER, OLD_RELATIVE),
        "relative": relative_only,
        "now": now,
    }


def timed(task: str) -> str:
    """One line: the task's three ways, their median milliseconds per call, the ratio."""
    n_agents = make_env(task).info.n_agents
    states = ValidationInputs.from_recording(record(task, 12, seed=0)).states.contiguous()
    functions = {name: load_credit_function(src).function for name, src in sources(task).items()}

    def credit(name: str) -> torch.Tensor:
        return compute_credit(functions[name], states, n_agents, True, lambda exc: "")

    reference = credit("before")
    assert all(torch.equal(credit(name), reference) for name in functions), "the credit differs"
    spent: dict[str, list[float]] = {name: [] for name in functions}
    names = list(functions)
    for round_ in range(ROUNDS):
        for name in names[round_ % 3 :] + names[: round_ % 3]:  # each way leads in turn
            began = time.perf_counter()
            for _ in range(CALLS):
                credit(name)
            spent[name].append((time.perf_counter() - began) / CALLS * 1e3)
    medians = {name: statistics.median(times) for name, times in spent.items()}
    return (
        f"{task}: {n_agents} agents, {states.shape[0]} states, ms per call (medians of {ROUNDS} rounds, "
        "alternating): "
        + ", ".join(f"{name} {ms:.1f}" for name, ms in medians.items())
        + f"; before / now {medians['before'] / medians['now']:.2f}; the same credit bit for bit"
    )


def main() -> None:
    torch.set_num_threads(1)
    for task in sys.argv[1:] or ["lbf-8x8-2p-2f"]:
        print(timed(task), flush=True)


if __name__ == "__main__":
    main()
