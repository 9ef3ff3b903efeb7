"""Structured credit specs: the LLM says which per-agent quantities earn agents credit; we write the code.

A small model writes valid Python most of the time but often wrong Python (measured with the local
1.5B model: 25-71% of its ``agent_weight`` functions were semantically right). Choosing among named
quantities is an easier task than programming, and with a JSON schema whose quantity names are an enum,
llama.cpp's grammar makes every reply well-formed. So in *spec mode* the coder answers with a
:class:`CreditSpec`::

    {"reasoning": "...", "terms": [{"quantity": "nearest_food_distance", "more_credit_to": "lowest",
                                    "strength": "strong"}, ...]}

and :func:`compile_spec` turns it into an ordinary ``agent_weight(s, i)``, which the code template
(:mod:`qllm.agents.template`) assembles into a TFCAF that is validated like any other.

The quantities come from the state schema, never from a hand-written list per task
(:func:`per_agent_quantities`): every per-agent scalar field (``agent_level``), every column of a
per-agent table (``last_action[LOAD]``, ``agent_carrying[carrying_shelf]``), each agent's own action
decoded from a joint-action one-hot (matrix games), and the distance from each agent to the nearest
entity of every positioned kind (``nearest_food_distance``; on grids, entities at negative cells are
gone and skipped).

The compiled weight is ``exp(sum_k sign_k * strength_k * z_k(i))``, where ``z_k(i)`` places agent
``i``'s value of quantity ``k`` within the team in this state: ``(q_i - mean) / max |q_j - mean|``,
in [-1, 1], and 0 when every agent has the same value. So a term only moves credit between agents that
differ, the units of a quantity never matter, and ``strong`` means the agent with the most of a
quantity gets up to e^2 = 7.4 times the credit of an average one.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, create_model

from qllm.agents.template import NamedState, is_grid

SPEC_TEMPLATE_ID = "credit-spec/v1"
STRENGTHS: dict[str, float] = {"weak": 0.5, "moderate": 1.0, "strong": 2.0}
MIN_TERMS, MAX_TERMS = 2, 4
"""At least two signals: measured, a small model asked for 1-4 often named a single field that is equal
for every agent in most states (e.g. ``agent_level``), which makes the weights equal there."""
MAX_REASONING = 240
"""Characters: the grammar bounds the free text so a rambling reply cannot run out of tokens."""
JOINT_ACTION_FEATURE = re.compile(r"a(\d+)=(\d+)")


@dataclass(frozen=True)
class Quantity:
    """One number per agent per state that a spec may name."""

    name: str
    expression: str
    """Python expression over ``s`` and ``i`` (inside the generated code) giving agent ``i``'s value."""
    meaning: str


def _agent_entity(named: NamedState) -> str:
    """What the team's rows are called in the schema (``agent``; ``predator`` in MPE tag)."""
    return named.schema["agent_position"].entity if "agent_position" in named.schema.names else "agent"


def _field_quantities(named: NamedState) -> list[Quantity]:
    entity = _agent_entity(named)
    quantities = []
    for f in named.schema:
        if f.count != named.info.n_agents or f.entity != entity or f.name.endswith("_position"):
            continue  # not one row per agent, or raw coordinates (the distances below say more)
        if len(f.features) == 1:
            quantities.append(Quantity(f.name, f's["{f.name}"][i]', f"agent i's {f.name}: {f.meaning}"))
            continue
        one_hot = f.low == 0 and f.high == 1
        for k, feature in enumerate(f.features):
            meaning = (
                f"1 if agent i's {f.name} is {feature}, else 0"
                if one_hot
                else f"agent i's {feature} ({f.meaning})"
            )
            quantities.append(Quantity(f"{f.name}[{feature}]", f's["{f.name}"][i][{k}]', meaning))
    return quantities


def _joint_action_quantities(named: NamedState) -> list[Quantity]:
    """Each agent's own last action, decoded from a one-hot over joint actions (``a0=1,a1=2`` columns)."""
    quantities = []
    for f in named.schema:
        parsed = [JOINT_ACTION_FEATURE.findall(feature) for feature in f.features]
        if f.count != 1 or not all(len(p) == named.info.n_agents for p in parsed):
            continue
        actions = sorted({int(a) for p in parsed for _, a in p})
        for action in actions:
            columns = [
                tuple(k for k, p in enumerate(parsed) if int(p[agent][1]) == action)
                for agent in range(named.info.n_agents)
            ]
            name = named.info.action_names[action] if action < len(named.info.action_names) else str(action)
            quantities.append(
                Quantity(
                    f"last_action[{name}]",
                    f'sum(s["{f.name}"][j] for j in {columns!r}[i])',
                    f"1 if agent i played {name} at the previous step, else 0",
                )
            )
    return quantities


def _distance_quantities(named: NamedState) -> list[Quantity]:
    quantities = []
    for v in named.values:
        if v.distance_to is None:
            continue
        # Distances exist only beside agent_position (see template._distance_values).
        grid = is_grid(named.schema["agent_position"])
        positions = named.schema[v.distance_to]
        entity = v.distance_to.removesuffix("_position")
        if positions.count == 1:
            quantities.append(
                Quantity(f"{entity}_distance", f's["{v.key}"][i]', f"distance from agent i to the {entity}")
            )
            continue
        present = (
            f'j in range({positions.count}) if min(s["{v.distance_to}"][j]) >= 0'
            if grid
            else (f"j in range({positions.count})")
        )
        gone = " (entities that have left the grid are skipped; 0 when none is left)" if grid else ""
        quantities.append(
            Quantity(
                f"nearest_{entity}_distance",
                f'min([s["{v.key}"][i][j] for {present}], default=0.0)',
                f"distance from agent i to the nearest {entity}{gone}",
            )
        )
    return quantities


def per_agent_quantities(named: NamedState) -> list[Quantity]:
    """Every quantity a credit spec may name for this task, derived from its state schema."""
    # Relations first (distances to the things agents act on), then each agent's own fields: small models
    # lean towards the first items of a list, and where an agent is matters in most tasks.
    return [*_distance_quantities(named), *_field_quantities(named), *_joint_action_quantities(named)]


class SpecError(ValueError):
    """A spec that cannot be compiled (unknown quantity, no terms, ...)."""


class CreditTerm(BaseModel):
    quantity: str
    more_credit_to: Literal["highest", "lowest"]
    """Which agents get more credit: those with the highest value of the quantity, or the lowest. (Asked as
    "raises"/"lowers", the local model wrote "closer agents deserve more credit" in its reasoning and then
    "distance raises credit" in all 18 candidates of two runs: naming the agents avoids the flip.)"""
    strength: Literal["weak", "moderate", "strong"]


class CreditSpec(BaseModel):
    """What the coder answers in spec mode."""

    reasoning: str = Field(
        max_length=MAX_REASONING,
        description="One or two sentences: which agents matter in this task, and when.",
    )
    terms: list[CreditTerm] = Field(min_length=1, max_length=MAX_TERMS)
    """At least one term in general; the schema given to the coder asks for at least ``MIN_TERMS``."""


def spec_model(quantities: list[Quantity]) -> type[CreditSpec]:
    """:class:`CreditSpec` with the quantity names as an enum, so a grammar can only produce known names."""
    names = tuple(q.name for q in quantities)
    term = create_model(
        "CreditTerm",
        __base__=CreditTerm,
        quantity=(Literal[names], Field(description="One of the listed per-agent quantities.")),  # type: ignore[valid-type]
    )
    return create_model(
        "CreditSpec",
        __base__=CreditSpec,
        terms=(list[term], Field(min_length=min(MIN_TERMS, len(names)), max_length=MAX_TERMS)),  # type: ignore[valid-type]
    )


RELATIVE_HELPER = '''def relative(s, i, quantity):
    """Where agent i stands in the team on one quantity: in [-1, 1], 0 when all agents are equal. The
    whole team's standings are worked out once per state (kept in s, under a key no field has)."""
    key = ("standings", quantity)
    if key not in s:
        values = [quantity(s, j) for j in range(N_AGENTS)]
        mean = sum(values) / len(values)
        spread = max(abs(v - mean) for v in values)
        s[key] = [0.0 if spread == 0 else (v - mean) / spread for v in values]
    return s[key][i]

'''
"""Each agent's weight asks where it stands on each quantity, and so every agent's value of it: kept per
state, each quantity is computed once per agent instead of once per agent per agent."""


def _python_name(k: int) -> str:
    return f"quantity_{k}"


def compile_spec(spec: CreditSpec, quantities: list[Quantity]) -> str:
    """``agent_weight(s, i)`` (and its helpers) implementing ``spec``: plain Python for the template."""
    by_name = {q.name: q for q in quantities}
    unknown = [t.quantity for t in spec.terms if t.quantity not in by_name]
    if unknown:
        raise SpecError(f"unknown quantities {unknown}; choose from: {', '.join(by_name)}")
    used = list(dict.fromkeys(t.quantity for t in spec.terms))
    lines: list[str] = []
    for k, name in enumerate(used):
        q = by_name[name]
        lines += [
            f"def {_python_name(k)}(s, i):",
            f"    # {q.name}: {q.meaning}",
            f"    return {q.expression}",
            "",
            "",
        ]
    lines += [RELATIVE_HELPER, "def agent_weight(s, i):", *_docstring(spec), "    score = 0.0"]
    for t in spec.terms:
        sign = "+" if t.more_credit_to == "highest" else "-"
        helper = _python_name(used.index(t.quantity))
        lines.append(f"    score {sign}= {STRENGTHS[t.strength]} * relative(s, i, {helper})")
    lines.append("    return math.exp(score)")
    return "\n".join(lines) + "\n"


def _docstring(spec: CreditSpec) -> list[str]:
    """The spec itself, as ``agent_weight``'s docstring (it stays with the function in the TFCAF file)."""
    reasoning = " ".join(spec.reasoning.replace("\\", "/").replace('"', "'").split())
    return [
        f'    """Credit spec written by the coder LLM, compiled by qllm template {SPEC_TEMPLATE_ID}:',
        "",
        *[
            f"    more credit to agents with the {t.more_credit_to} {t.quantity} ({t.strength})"
            for t in spec.terms
        ],
        "",
        *textwrap.wrap(f"Reasoning: {reasoning}", width=100, initial_indent="    ", subsequent_indent="    "),
        '    """',
    ]


def quantity_table(quantities: list[Quantity]) -> str:
    """The quantities as a prompt list."""
    return "\n".join(f"- `{q.name}`: {q.meaning}" for q in quantities)
