"""The code template: the LLM writes ``agent_weight(s, i)`` on named Python values; we write the rest.

Small models fail at tensor index arithmetic far more often than at plain Python (the "one agent at a
time" design was the best measured for the local 1.5B model). So the LLM never sees the flat
state. It sees ``s``, a dict built from the task's :class:`~qllm.envs.schema.StateSchema` (one key per
field, plus derived agent-to-entity distances), and writes a function of one state and one agent. This
module generates, from the schema, everything around that function:

- ``named_state(row)``: the flat state row -> the dict, with every slice spelled out;
- helpers (``distance``, ``manhattan``, ``argmax``);
- ``credit_assignment(agents_q, state)``: the sandbox/trainer contract. It calls ``agent_weight`` for
  every row and agent, clamps negatives to 0, rescales the weights to sum to ``n_agents`` (VDN's scale;
  equal weights when all are 0) with each agent's weight at least ``CREDIT_FLOOR`` (a fraction of the
  equal share 1: a function that gives one agent almost nothing starves its Q-values of gradient, the
  "lazy agent" problem), adds the optional ``state_bias(s)``, and returns
  ``Q_tot = sum_i w_i Q_i + b`` of shape ``[B, 1]``. Monotonic by construction.

The assembled file is a complete TFCAF: it is validated in the sandbox and loaded by the trainer like
any hand-written one (except a compiled credit spec, whose credit the trainer computes from the spec in
its header: :mod:`qllm.agents.spec`). :func:`named_state_values` is the host-side twin of the generated
``named_state`` (used to show example states in prompts); a test keeps the two equal.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qllm.envs.contract import EnvInfo
from qllm.envs.schema import StateField, StateSchema
from qllm.pysource import parse_python
from qllm.sandbox.restricted import FUNCTION_NAME

TEMPLATE_ID = "agent-weight/v1"
"""Recorded in every artifact: which template turned the LLM's functions into a TFCAF."""
FUNCTION_TEMPLATE_ID = "function/v1"
"""Recorded for a TFCAF the coder wrote whole (mode ``function``): no template around it."""
HEADER = "# qllm-tfcaf:"
"""Starts a TFCAF file's first line, followed by a JSON object: what the file was written for."""
WRITTEN_FUNCTION = "agent_weight"
OPTIONAL_FUNCTION = "state_bias"
RESERVED_NAMES = frozenset({
    "named_state", FUNCTION_NAME, "N_AGENTS", "CREDIT_FLOOR", "checked_weight", "normalised_weights",
    "checked_bias",
})  # fmt: skip
"""Names the template owns: an LLM definition of one of these is dropped."""
POSITION_FEATURES = (("row", "col"), ("x", "y"))


@dataclass(frozen=True)
class NamedValue:
    """One key of ``s``: how it is built from a state row, and how it is explained to the LLM."""

    key: str
    expression: str
    """Python expression over ``row`` (and earlier keys of ``s``) that builds the value."""
    description: str
    """Type and meaning, one line, for the prompt."""
    slice: tuple[int, int] | None
    """The flat-state slice it reads, or ``None`` for a derived value."""
    distance_to: str | None = None
    """For a derived ``agent_to_<entity>_distance``: the positions field of the other entity."""


def is_grid(f: StateField) -> bool:
    """Whether a field holds grid cells (bounded), where distances are counted in steps."""
    return math.isfinite(f.low) and math.isfinite(f.high)


def _field_value(f: StateField) -> NamedValue:
    o, k = f.offset, len(f.features)
    features = ", ".join(f.features)
    if f.count == 1 and k == 1:
        expression, kind = f"row[{o}]", "a number"
    elif f.count == 1:
        expression, kind = f"tuple(row[{o}:{o + k}])", f"a tuple of {k} numbers ({features})"
    elif k == 1:
        expression, kind = f"list(row[{o}:{o + f.count}])", f"a list of {f.count} numbers, one per {f.entity}"
    else:
        expression = f"[tuple(row[{o} + j * {k}:{o} + (j + 1) * {k}]) for j in range({f.count})]"
        kind = f"a list of {f.count} tuples ({features}), one per {f.entity}"
    return NamedValue(f.name, expression, f"{kind}. {f.meaning}", (f.slice.start, f.slice.stop))


def _distance_values(schema: StateSchema) -> list[NamedValue]:
    """``agent_to_<entity>_distance[i][j]`` for every other entity positioned like the agents."""
    if "agent_position" not in schema.names:
        return []
    agents = schema["agent_position"]
    if agents.features not in POSITION_FEATURES:
        return []
    metric = "manhattan" if is_grid(agents) else "distance"
    metric_text = "grid steps (manhattan)" if metric == "manhattan" else "straight-line distance"
    values = []
    for f in schema:
        if f is agents or f.features != agents.features or f.count < 1 or not f.name.endswith("_position"):
            continue
        entity = f.name.removesuffix("_position")
        key = f"agent_to_{entity}_distance"
        if f.count == 1:  # a single entity's position is one tuple, not a list of them
            expression = f'[{metric}(a, s["{f.name}"]) for a in s["agent_position"]]'
            text = (
                f"derived: {key}[i] is the {metric_text} from agent i to the {entity} (one number per agent)."
            )
        else:
            expression = f'[[{metric}(a, b) for b in s["{f.name}"]] for a in s["agent_position"]]'
            text = (
                f"derived: {key}[i][j] is the {metric_text} from agent i to {entity} j "
                f"({agents.count} lists of {f.count} numbers)."
            )
        values.append(NamedValue(key, expression, text, None, distance_to=f.name))
    return values


@dataclass(frozen=True)
class NamedState:
    """The named view of one task's global state, as generated code and as prompt text."""

    info: EnvInfo
    values: tuple[NamedValue, ...]

    @classmethod
    def for_task(cls, info: EnvInfo) -> NamedState:
        fields = [_field_value(f) for f in info.schema]
        return cls(info, (*fields, *_distance_values(info.schema)))

    @property
    def schema(self) -> StateSchema:
        return self.info.schema

    def prompt_fields(self) -> str:
        return "\n".join(f'- `s["{v.key}"]`: {v.description}' for v in self.values)

    def slices(self) -> dict[str, list[int] | None]:
        """How each key maps to the flat state (recorded in the artifact's metadata)."""
        return {v.key: list(v.slice) if v.slice else None for v in self.values}

    def function_source(self) -> str:
        lines = [
            "def named_state(row):",
            f'    """One global state (a list of {self.schema.size} numbers) as named Python values."""',
            "    s = {}",
        ]
        lines += [f'    s["{v.key}"] = {v.expression}' for v in self.values]
        lines.append("    return s")
        return "\n".join(lines)


# The coordinates are indexed rather than zipped and unpacked: the sandbox checks each unpacking of a
# pair element by element, which made manhattan() 2.6 us a call against 1.6 (restricted, 2-D cells),
# and named_state() calls it for every agent and entity pair of every state. The same sums in the same
# order: the same numbers.
HELPERS = '''
def distance(a, b):
    """Straight-line distance between two points given as tuples."""
    return math.sqrt(sum((a[k] - b[k]) ** 2 for k in range(min(len(a), len(b)))))


def manhattan(a, b):
    """Grid steps between two cells given as tuples."""
    return sum(abs(a[k] - b[k]) for k in range(min(len(a), len(b))))


def argmax(values):
    """Index of the largest value."""
    best = 0
    for j in range(len(values)):
        if values[j] > values[best]:
            best = j
    return best
'''

CONTRACT_TEMPLATE = '''
def checked_weight(s, i):
    w = agent_weight(s, i)
    if isinstance(w, bool) or not isinstance(w, (int, float)):
        raise TypeError("agent_weight(s, %d) must return one number, got %r" % (i, w))
    if not math.isfinite(w):
        raise ValueError("agent_weight(s, %d) returned %r: it must be a finite number" % (i, w))
    return max(0.0, float(w))


def normalised_weights(s):
    w = [checked_weight(s, i) for i in range(N_AGENTS)]
    total = sum(w)
    if total <= 0.0:
        return [1.0] * N_AGENTS
    # Every agent keeps at least CREDIT_FLOOR of the equal share (1), so that none is starved of gradient.
    return [CREDIT_FLOOR + (1.0 - CREDIT_FLOOR) * x * N_AGENTS / total for x in w]


def checked_bias(s):
    b = state_bias(s)
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
        raise ValueError("state_bias(s) must return one finite number, got %r" % (b,))
    return float(b)


def credit_assignment(agents_q, state):
    """Q_tot = sum_i w_i(s) Q_i + b(s), with w_i from agent_weight (clamped >= 0, summing to N_AGENTS)."""
    weights = []
    biases = []
    for row in state.tolist():
        s = named_state(row)
        weights.append(normalised_weights(s))
        biases.append(checked_bias(s))
    w = torch.tensor(weights, dtype=agents_q.dtype, device=agents_q.device)
    b = torch.tensor(biases, dtype=agents_q.dtype, device=agents_q.device)
    return (w * agents_q).sum(dim=1, keepdim=True) + b.unsqueeze(1)
'''
"""The fixed end of every TFCAF. (RestrictedPython refuses names that start with ``_``, so the template's
private helpers are reserved names instead.)"""


class TemplateError(ValueError):
    """The LLM's answer cannot be turned into a TFCAF (no ``agent_weight``, not Python, ...)."""


@dataclass(frozen=True)
class WrittenCode:
    """The top-level definitions kept from the LLM's answer."""

    source: str
    """Imports, constants and functions, in the LLM's order and formatting."""
    defines_bias: bool


def keep_definitions(code: str) -> WrittenCode:
    """The imports, constants and function definitions of ``code``; :class:`TemplateError` if unusable.

    Example calls, prints and ``if __name__ == "__main__"`` blocks are dropped, and so are definitions
    of names the template owns. ``agent_weight`` must be defined with two parameters.
    """
    tree = _parsed(code)
    kept: list[str] = []
    functions: dict[str, ast.FunctionDef] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            if node.name in RESERVED_NAMES:
                continue
            functions[node.name] = node
        elif not isinstance(node, ast.Import | ast.ImportFrom | ast.Assign | ast.AnnAssign):
            continue  # example calls, prints, `if __name__ == ...` blocks
        elif not isinstance(node, ast.Import | ast.ImportFrom) and _assigns_reserved(node):
            continue
        kept.append(_source_with_decorators(code, node))
    weight = functions.get(WRITTEN_FUNCTION)
    if weight is None:
        raise TemplateError(f"the answer must define `def {WRITTEN_FUNCTION}(s, i):`")
    if len(weight.args.args) != 2 or weight.args.vararg or weight.args.kwonlyargs:
        raise TemplateError(f"`{WRITTEN_FUNCTION}` must take exactly two parameters: (s, i)")
    bias = functions.get(OPTIONAL_FUNCTION)
    if bias is not None and len(bias.args.args) != 1:
        raise TemplateError(f"`{OPTIONAL_FUNCTION}` must take exactly one parameter: (s)")
    return WrittenCode("\n\n\n".join(kept), defines_bias=bias is not None)


def _parsed(code: str) -> ast.Module:
    """``code`` parsed, or :class:`TemplateError` naming the line of its syntax error."""
    try:
        return parse_python(code)
    except SyntaxError as exc:
        lines = code.splitlines()
        line = lines[exc.lineno - 1].strip() if exc.lineno and exc.lineno <= len(lines) else ""
        raise TemplateError(f"SyntaxError on line {exc.lineno}: {exc.msg}: {line}") from None


def _source_with_decorators(code: str, node: ast.stmt) -> str:
    decorators = getattr(node, "decorator_list", [])
    start = decorators[0].lineno if decorators else node.lineno
    end = node.end_lineno or node.lineno
    return "\n".join(code.splitlines()[start - 1 : end])


def _assigns_reserved(node: ast.Assign | ast.AnnAssign) -> bool:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return any(isinstance(t, ast.Name) and t.id in RESERVED_NAMES for t in targets)


class HeaderError(ValueError):
    """A ``# qllm-tfcaf:`` header that is not a JSON object."""


def tfcaf_header(info: EnvInfo, **extra: Any) -> str:
    header = {
        "task": info.task,
        "state_dim": info.state_dim,
        "n_agents": info.n_agents,
        "template": TEMPLATE_ID,
    }
    return f"{HEADER} " + json.dumps({**header, **extra}, sort_keys=False)


def read_header(source: str) -> dict[str, Any]:
    """What a TFCAF file's first-line header says it was written for (``{}`` without one); a malformed
    header is a :class:`HeaderError`. A header is a claim, not a fact: nothing trusts it unchecked."""
    first = source.lstrip().splitlines()[0] if source.strip() else ""
    if not first.startswith(HEADER):
        return {}
    try:
        header = json.loads(first.removeprefix(HEADER))
    except ValueError as exc:
        raise HeaderError(f"malformed {HEADER} header: {exc}") from None
    return header if isinstance(header, dict) else {}


def assemble(
    named: NamedState,
    written: WrittenCode,
    docstring: str = "",
    template_id: str = TEMPLATE_ID,
    credit_floor: float = 0.0,
    *,
    header: dict[str, Any] | None = None,
) -> str:
    """The complete TFCAF file: header (with ``header``'s entries too), the LLM's definitions, then the
    generated template. Each agent's weight is at least ``credit_floor`` times the equal share (0: none;
    1: equal weights)."""
    if not 0.0 <= credit_floor <= 1.0:
        raise ValueError(f"credit_floor must be between 0 and 1, got {credit_floor}")
    info = named.info
    doc = docstring or f"Training-free credit assignment function for {info.task}."
    bias = "" if written.defines_bias else "\n\ndef state_bias(s):\n    return 0.0\n"
    return (
        f"{tfcaf_header(info, template=template_id, credit_floor=credit_floor, **(header or {}))}\n"
        f'"""{doc}"""\n\n'
        "import math\n\nimport torch\n\n"
        f"N_AGENTS = {info.n_agents}\nCREDIT_FLOOR = {float(credit_floor)!r}\n\n"
        "# --- written by the coder LLM -------------------------------------------------------------\n\n"
        f"{written.source}\n"
        f"{bias}\n"
        "# --- generated from the task's state schema (qllm template " + TEMPLATE_ID + ") ------------\n\n"
        f"{named.function_source()}\n\n{HELPERS}\n{CONTRACT_TEMPLATE.lstrip()}"
    )


def written_function(named: NamedState, code: str, docstring: str = "") -> str:
    """The TFCAF file for a ``credit_assignment`` the coder wrote whole: header, docstring, the imports it
    may use, and its code as written; :class:`TemplateError` if the code is not Python."""
    _parsed(code)
    info = named.info
    doc = docstring or f"Training-free credit assignment function for {info.task}."
    return (
        f"{tfcaf_header(info, template=FUNCTION_TEMPLATE_ID)}\n"
        f'"""{doc}"""\n\n'
        "import math\n\nimport torch\n\n"
        "# --- written by the coder LLM -------------------------------------------------------------\n\n"
        f"{code.strip()}\n"
    )


def column_slices(schema: StateSchema) -> str:
    """Each state field as the columns of a batched state tensor, for a prompt: where it is, its shape
    once reshaped, and what it means."""
    lines = []
    for f in schema:
        start, stop = f.slice.start, f.slice.stop
        features = ", ".join(f.features)
        if f.count == 1:
            code, shape = f"{f.name} = state[:, {start}:{stop}]", f"one {f.entity}: ({features})"
        else:
            code = f"{f.name} = state[:, {start}:{stop}].reshape(-1, {f.count}, {len(f.features)})"
            shape = f"{f.count} {f.entity}s, ({features}) each"
        bounds = "" if math.isinf(f.low) and math.isinf(f.high) else f" Range {f.range_text()}."
        lines.append(f"- `{code}`: {shape}. {f.meaning[0].upper()}{f.meaning[1:]}.{bounds}")
    return "\n".join(lines)


def _rounded(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return type(value)(_rounded(v) for v in value)
    return int(value) if float(value).is_integer() else round(float(value), 3)


def named_state_values(named: NamedState, row: Sequence[float]) -> dict[str, Any]:
    """The host-side twin of the generated ``named_state``: the same dict, values rounded for display."""
    s: dict[str, Any] = {}
    for f in named.schema:
        values = [float(v) for v in row[f.slice]]
        k = len(f.features)
        rows = [tuple(values[j * k : (j + 1) * k]) for j in range(f.count)]
        if f.count == 1:
            s[f.name] = values[0] if k == 1 else rows[0]
        else:
            s[f.name] = values if k == 1 else rows
    for v in named.values:
        if v.distance_to is not None:
            other = s[v.distance_to]
            metric = _manhattan if is_grid(named.schema["agent_position"]) else _euclid
            agents = s["agent_position"]
            if isinstance(other, tuple):  # a single entity
                s[v.key] = [metric(a, other) for a in agents]
            else:
                s[v.key] = [[metric(a, b) for b in other] for a in agents]
    return {key: _rounded(value) for key, value in s.items()}


def _manhattan(a: Sequence[float], b: Sequence[float]) -> float:
    return float(sum(abs(x - y) for x, y in zip(a, b, strict=True)))


def _euclid(a: Sequence[float], b: Sequence[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def render_state(named: NamedState, row: Sequence[float]) -> str:
    """One state as a Python dict literal, one key per line (for prompts)."""
    s = named_state_values(named, row)
    body = ",\n".join(f"    {json.dumps(k)}: {v!r}" for k, v in s.items())
    return "{\n" + body + ",\n}"
