"""Structured credit specs: the LLM says which per-agent quantities earn agents credit; we write the code.

A small model writes valid Python most of the time but often wrong Python (measured with the local
1.5B model: 25-71% of its ``agent_weight`` functions were semantically right). Choosing among named
quantities is an easier task than programming, and with a JSON schema whose quantity names are an enum,
llama.cpp's grammar makes every reply well-formed. So in *spec mode* the coder answers with a
:class:`CreditSpec`::

    {"reasoning": "...", "terms": [{"quantity": "nearest_food_distance", "more_credit_to": "lowest",
                                    "strength": "strong"}, ...]}

and :func:`compile_spec` turns it into an ordinary ``agent_weight(s, i)``, which the code template
(:mod:`qllm.agents.template`) assembles into a TFCAF that is validated like any other. The file keeps
the spec in its header too (:func:`spec_file`), so that training computes its weights from the spec
(:class:`SpecWeights`, numpy over whole batches, the compiled file's numbers bit for bit) instead of
running the file in the sandbox; :func:`compiled_spec` recognises a file only if it is byte for byte
what qllm makes of that spec.

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

import math
import re
import textwrap
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, create_model

from qllm.agents.template import NamedState, assemble, is_grid, keep_definitions, read_header
from qllm.envs.schema import StateField

SPEC_TEMPLATE_ID = "credit-spec/v1"
STRENGTHS: dict[str, float] = {"weak": 0.5, "moderate": 1.0, "strong": 2.0}
MIN_TERMS, MAX_TERMS = 2, 4
"""At least two signals: measured, a small model asked for 1-4 often named a single field that is equal
for every agent in most states (e.g. ``agent_level``), which makes the weights equal there."""
MAX_REASONING = 240
"""Characters: the grammar bounds the free text so a rambling reply cannot run out of tokens."""
JOINT_ACTION_FEATURE = re.compile(r"a(\d+)=(\d+)")


# Each measure says how one per-agent quantity is computed, twice: as the Python expression the compiled
# file computes it with (over the named state ``s`` and agent ``i``), and over a whole batch of flat
# states at once (float64 numpy, ``[B, S] -> [B, n_agents]``), with the same operations in the same
# order, so that both give the same numbers bit for bit (a test holds them to that).


@dataclass(frozen=True)
class FieldColumn:
    """Agent ``i``'s entry in a per-agent field, or one column of it when it has several."""

    field: StateField
    column: int | None
    """``None`` for a field with one feature."""

    def expression(self) -> str:
        suffix = "" if self.column is None else f"[{self.column}]"
        return f's["{self.field.name}"][i]{suffix}'

    def columns(self, n_agents: int) -> list[int]:
        """The state's columns this quantity reads."""
        width = len(self.field.features)
        return [self.field.offset + agent * width + (self.column or 0) for agent in range(n_agents)]

    def values(self, states: np.ndarray, n_agents: int) -> np.ndarray:
        return states[:, self.columns(n_agents)]


@dataclass(frozen=True)
class OwnAction:
    """1 if agent ``i`` played one action at the previous step: the sum of the columns of a one-hot over
    joint actions in which it did."""

    field: StateField
    played_in: tuple[tuple[int, ...], ...]
    """Per agent, the joint-action columns (within the field) in which it played the action."""

    def expression(self) -> str:
        return f'sum(s["{self.field.name}"][j] for j in {list(self.played_in)!r}[i])'

    def columns(self, n_agents: int) -> list[int]:
        return sorted({self.field.offset + c for agent in self.played_in[:n_agents] for c in agent})

    def values(self, states: np.ndarray, n_agents: int) -> np.ndarray:
        values = np.zeros((states.shape[0], n_agents))
        for agent in range(n_agents):
            for column in self.played_in[agent]:
                values[:, agent] = values[:, agent] + states[:, self.field.offset + column]
        return values


@dataclass(frozen=True)
class EntityDistance:
    """Distance from agent ``i`` to an entity: the one entity of its field, or the nearest present one
    (on grids, entities at negative cells have left and are skipped; 0 when none is left)."""

    key: str
    """The named state's ``agent_to_<entity>_distance``, which the compiled file reads."""
    agents: StateField
    entities: StateField

    @property
    def grid(self) -> bool:
        return is_grid(self.agents)

    def expression(self) -> str:
        if self.entities.count == 1:
            return f's["{self.key}"][i]'
        present = f' if min(s["{self.entities.name}"][j]) >= 0' if self.grid else ""
        return f'min([s["{self.key}"][i][j] for j in range({self.entities.count}){present}], default=0.0)'

    def columns(self, n_agents: int) -> list[int]:
        agents = self.agents.offset + n_agents * len(self.agents.features)
        return [
            *range(self.agents.offset, agents),
            *range(self.entities.slice.start, self.entities.slice.stop),
        ]

    def values(self, states: np.ndarray, n_agents: int) -> np.ndarray:
        dims = len(self.agents.features)
        agents = states[:, self.agents.slice].reshape(-1, self.agents.count, dims)[:, :n_agents]
        entities = states[:, self.entities.slice].reshape(-1, self.entities.count, dims)
        differences = agents[:, :, None, :] - entities[:, None, :, :]
        # The template's manhattan() and distance(); `x ** 2` is C's pow(), which is not always x * x (it
        # differs in the last bit for about 1 in 1,000 numbers).
        if self.grid:
            distances = _python_sum(np.abs(differences))
        else:
            distances = np.sqrt(_python_sum(_python_squares(differences)))
        if self.entities.count == 1:
            return distances[..., 0]
        if not self.grid:
            return distances.min(axis=-1)
        present = entities.min(axis=-1) >= 0  # [B, m]
        nearest = np.where(present[:, None, :], distances, np.inf).min(axis=-1)
        return np.where(present.any(axis=-1)[:, None], nearest, 0.0)


Measure = FieldColumn | OwnAction | EntityDistance


def _python_sum(values: np.ndarray) -> np.ndarray:
    """``sum()`` over the last axis as Python 3.11 adds floats: in order, starting from 0."""
    total = np.zeros(values.shape[:-1])
    for k in range(values.shape[-1]):
        total = total + values[..., k]
    return total


def _python_squares(values: np.ndarray) -> np.ndarray:
    """``v ** 2`` for each value, as Python computes it."""
    return np.array([v**2 for v in values.ravel().tolist()]).reshape(values.shape)


@dataclass(frozen=True)
class Quantity:
    """One number per agent per state that a spec may name."""

    name: str
    measure: Measure
    meaning: str

    @property
    def expression(self) -> str:
        """Python expression over ``s`` and ``i`` (inside the generated code) giving agent ``i``'s value."""
        return self.measure.expression()


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
            quantities.append(Quantity(f.name, FieldColumn(f, None), f"agent i's {f.name}: {f.meaning}"))
            continue
        one_hot = f.low == 0 and f.high == 1
        for k, feature in enumerate(f.features):
            meaning = (
                f"1 if agent i's {f.name} is {feature}, else 0"
                if one_hot
                else f"agent i's {feature} ({f.meaning})"
            )
            quantities.append(Quantity(f"{f.name}[{feature}]", FieldColumn(f, k), meaning))
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
            columns = tuple(
                tuple(k for k, p in enumerate(parsed) if int(p[agent][1]) == action)
                for agent in range(named.info.n_agents)
            )
            name = named.info.action_names[action] if action < len(named.info.action_names) else str(action)
            quantities.append(
                Quantity(
                    f"last_action[{name}]",
                    OwnAction(f, columns),
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
        agents = named.schema["agent_position"]
        positions = named.schema[v.distance_to]
        entity = v.distance_to.removesuffix("_position")
        measure = EntityDistance(v.key, agents, positions)
        if positions.count == 1:
            meaning = f"distance from agent i to the {entity}"
            quantities.append(Quantity(f"{entity}_distance", measure, meaning))
            continue
        gone = " (entities that have left the grid are skipped; 0 when none is left)" if measure.grid else ""
        meaning = f"distance from agent i to the nearest {entity}{gone}"
        quantities.append(Quantity(f"nearest_{entity}_distance", measure, meaning))
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


SPEC_HEADER_KEY = "spec"
"""The header entry that holds the spec a file was compiled from."""


def spec_file(named: NamedState, spec: CreditSpec, *, docstring: str = "", credit_floor: float = 0.0) -> str:
    """The complete TFCAF file of ``spec``: its compiled ``agent_weight`` in the template, with the spec
    itself in the header, so that a trainer can compute the same weights from the spec
    (:func:`compiled_spec`)."""
    code = compile_spec(spec, per_agent_quantities(named))
    return assemble(
        named,
        keep_definitions(code),
        docstring=docstring,
        template_id=SPEC_TEMPLATE_ID,
        credit_floor=float(credit_floor),  # as the file's CREDIT_FLOOR is written: the header says the same
        header={SPEC_HEADER_KEY: spec.model_dump(mode="json")},
    )


@dataclass(frozen=True)
class WeightedTerm:
    """One term of a spec, ready to compute: ``score += signed_strength * relative(quantity)``."""

    quantity: str
    signed_strength: float
    """The term's strength, negative when the agents with the lowest values get more credit."""
    measure: Measure


@dataclass(frozen=True)
class SpecWeights:
    """The weights a compiled spec gives the agents in each state, computed from the spec itself.

    The template's arithmetic (``relative``, ``exp``, the clamp and the normalisation with the credit
    floor) over whole batches of states in float64 numpy, with the same operations in the same order as
    the compiled file run by this Python, so the same float32 weights bit for bit (a test compares them
    with the sandbox's). Sums are sequential, as Python 3.11's ``sum()`` of floats is (3.12 compensates
    its rounding, and qllm requires < 3.12); ``exp`` and ``x ** 2`` are Python's own. Its bias is 0: a
    spec defines no ``state_bias``. This is qllm's own code reading data: nothing the LLM wrote runs.
    """

    terms: tuple[WeightedTerm, ...]
    """In the spec's order."""
    n_agents: int
    credit_floor: float

    @classmethod
    def of(
        cls, spec: CreditSpec, quantities: list[Quantity], n_agents: int, credit_floor: float
    ) -> SpecWeights:
        """:class:`SpecError` where the compiled file could not compute its weights either (an unknown
        quantity, fewer than two agents, fewer agent positions than agents)."""
        by_name = {q.name: q for q in quantities}
        if n_agents < 2:
            raise SpecError(f"a credit spec needs at least two agents, not {n_agents}")
        terms = []
        for t in spec.terms:
            if t.quantity not in by_name:
                raise SpecError(f"unknown quantity {t.quantity!r}")
            measure = by_name[t.quantity].measure
            if isinstance(measure, EntityDistance) and measure.agents.count < n_agents:
                raise SpecError(f"{measure.agents.name} holds {measure.agents.count} of {n_agents} agents")
            strength = STRENGTHS[t.strength]
            signed = strength if t.more_credit_to == "highest" else -strength
            terms.append(WeightedTerm(t.quantity, signed, measure))
        return cls(tuple(terms), n_agents, credit_floor)

    @property
    def columns(self) -> list[int]:
        """The state's columns the weights depend on."""
        return sorted({c for term in self.terms for c in term.measure.columns(self.n_agents)})

    def __call__(self, states: np.ndarray) -> np.ndarray:
        """``states [B, S]`` (float32, finite in :attr:`columns`) -> each state's weights ``[B, n_agents]``
        (float32); ``ValueError`` where a weight is not finite, ``OverflowError`` where Python's ``exp`` or
        ``**`` overflows, as in the compiled file."""
        rows = states.astype(np.float64)
        standings: dict[str, np.ndarray] = {}
        score = np.zeros((rows.shape[0], self.n_agents))
        for term in self.terms:
            if term.quantity not in standings:
                standings[term.quantity] = _standings(term.measure.values(rows, self.n_agents))
            # `score -= s * r` is `score + (-(s * r))` exactly, and -(s * r) is (-s) * r.
            score = score + term.signed_strength * standings[term.quantity]
        if not np.isfinite(score).all():  # the compiled file raises on a weight that is not finite
            bad = int((~np.isfinite(score)).any(axis=1).sum())
            raise ValueError(f"the spec's weights are NaN or infinite in {bad} of {len(rows)} states")
        weights = np.array([math.exp(v) for v in score.ravel().tolist()]).reshape(score.shape)
        total = _python_sum(weights)
        floor, positive = self.credit_floor, (total > 0)[:, None]
        normalised = floor + (1.0 - floor) * weights * self.n_agents / np.where(positive, total[:, None], 1.0)
        return np.where(positive, normalised, 1.0).astype(np.float32)


def _standings(values: np.ndarray) -> np.ndarray:
    """``relative()`` of every agent at once: ``(v - mean) / max |v - mean|``, 0 where all are equal."""
    deviations = values - (_python_sum(values) / values.shape[1])[:, None]
    spread = np.abs(deviations).max(axis=1, keepdims=True)
    return np.where(spread == 0, 0.0, deviations / np.where(spread == 0, 1.0, spread))


def compiled_spec(source: str, named: NamedState) -> SpecWeights | None:
    """The weights of the credit spec that ``source`` is the compilation of, or None.

    The spec is read from the file's header and compiled again, and only a file that is byte for byte
    what qllm makes of it is recognised: an edited file, one whose header names another spec, and one
    compiled by an earlier template are not. So the weights are those of the code in the file.
    """
    try:
        header = read_header(source)
        if header.get("template") != SPEC_TEMPLATE_ID or SPEC_HEADER_KEY not in header:
            return None
        spec = CreditSpec.model_validate(header[SPEC_HEADER_KEY])
        floor = float(header.get("credit_floor", 0.0))
        rebuilt = spec_file(named, spec, docstring=_written_docstring(source), credit_floor=floor)
        if rebuilt != source:
            return None
        return SpecWeights.of(spec, per_agent_quantities(named), named.info.n_agents, floor)
    except (ValueError, TypeError):  # ValidationError, SpecError, TemplateError, HeaderError
        return None


def _written_docstring(source: str) -> str:
    """The text between the triple quotes that open the file after its header, where ``assemble`` writes
    the docstring as given; "" without. Cut as text, not parsed: the whole file is compared anyway."""
    after_header = source.partition("\n")[2]
    if not after_header.startswith('"""'):
        return ""
    end = after_header.find('"""', 3)
    return after_header[3:end] if end >= 0 else ""


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
