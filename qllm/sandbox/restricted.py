"""Language-level containment: static checks, RestrictedPython, and allow-listed modules.

This is the inner layer of the sandbox, and the *only* way generated code is ever loaded, both in the
isolated worker and, once a candidate has passed there, in the trainer's process (autograd needs the
function in-process). It guarantees that the code can reach nothing but:

- the builtins in :data:`BUILTINS` (no ``open``, ``eval``, ``exec``, ``getattr``, ``type``, ``setattr``...);
- ``import torch`` / ``import torch.nn.functional as F`` / ``import math``, which yield *proxies* exposing
  only the attributes in :data:`TORCH_ALLOWED` / :data:`FUNCTIONAL_ALLOWED` / the public ``math`` names,
  so ``torch.load``, ``torch.os``, ``torch.hub``, ``torch.ops``, ``torch.jit`` and the like do not exist;
- attributes that do not start with ``_`` and are not frame/code internals (RestrictedPython's policy),
  minus tensor methods that reach memory, files or the autograd graph (:data:`TENSOR_DENIED`);
- writes to anything except modules, proxies, classes and functions (no monkeypatching).

It does not stop infinite loops or memory bombs: the process layer does (see ``worker.py``); in the
trainer's process, :func:`time_limited` bounds each call's time.
"""

from __future__ import annotations

import ast
import builtins
import math
import operator
import sys
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional
from RestrictedPython import compile_restricted_exec, safe_builtins
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence, safer_getattr

from qllm.pysource import parse_python
from qllm.sandbox.result import ErrorKind

FUNCTION_NAME = "credit_assignment"
CANDIDATE_FILENAME = "<candidate>"
ALLOWED_IMPORTS = ("torch", "torch.nn", "torch.nn.functional", "math")

TORCH_ALLOWED = frozenset(
    """
    abs absolute acos acosh add addcdiv addcmul all allclose amax amin any arange arccos arcsin arctan
    arctan2 argmax argmin argsort argwhere as_tensor asin asinh atan atan2 atanh atleast_1d atleast_2d
    baddbmm bmm bool broadcast_tensors broadcast_to bucketize cat cdist ceil chunk clamp clamp_max
    clamp_min clip clone column_stack concat concatenate cos cosh count_nonzero cross cummax cummin cumprod
    cumsum deg2rad diag diag_embed diagonal diff dist div divide dot dstack einsum eq
    equal erf exp exp2 expm1 eye finfo flatten flip float16 float32 float64 floor floor_divide fmax fmin
    fmod frac full full_like gather ge gt heaviside hstack hypot iinfo index_select inner int16 int32 int64
    int8 is_tensor isclose isfinite isin isinf isnan kron kthvalue le lerp linspace log log10 log1p log2
    logaddexp logcumsumexp logical_and logical_not logical_or logical_xor logit logspace logsumexp long lt
    masked_fill masked_select matmul max maximum mean median min minimum mm moveaxis movedim mul multiply
    mv nan_to_num nanmean nansum narrow ne neg negative nonzero norm numel ones ones_like outer permute pow
    prod quantile rad2deg reciprocal relu remainder repeat_interleave reshape round rsqrt scatter
    scatter_add searchsorted select sigmoid sign signbit sin sinh softmax sort split sqrt square squeeze
    stack std std_mean sub subtract sum swapaxes swapdims t take take_along_dim tan tanh tensor
    tensor_split tile topk transpose trapezoid tril triu true_divide trunc uint8 unbind unique
    unique_consecutive unsqueeze var var_mean vstack where zeros zeros_like float double int half pi e inf
    nan
    """.split()
)
"""Pure tensor maths. Nothing that reads or writes files, changes global state (seeds, threads, default
dtype), compiles code, loads operators, or reaches another module."""

FUNCTIONAL_ALLOWED = frozenset(
    """
    softmax log_softmax softmin relu relu6 leaky_relu elu selu celu gelu silu mish sigmoid tanh softplus
    softsign hardtanh hardsigmoid hardswish logsigmoid normalize one_hot pad cosine_similarity
    pairwise_distance
    """.split()
)

TENSOR_DENIED = frozenset(
    """
    numpy storage untyped_storage data_ptr const_data_ptr share_memory_ is_shared pin_memory is_pinned cuda
    to_sparse to_mkldnn set_ resize_ resize_as_ as_strided as_strided_ as_strided_scatter apply_ map_ map2_
    record_stream register_hook register_post_accumulate_grad_hook backward retain_grad retains_grad grad
    grad_fn module_load as_subclass storage_offset untyped_storage
    """.split()
)
"""Tensor attributes that reach raw memory, files (via numpy), devices, Python callbacks or the autograd
graph. Every other public tensor method is allowed."""

FORBIDDEN_CALLS = frozenset(
    """
    eval exec compile open input breakpoint globals locals vars dir getattr setattr delattr type super
    memoryview help exit quit __import__
    """.split()
)

EXTRA_BUILTINS = "all any dict enumerate filter frozenset list map max min reversed set sorted sum tuple zip"
"""Pure builtins that RestrictedPython's safe set leaves out and credit functions commonly need."""

BUILTINS: dict[str, Any] = {
    **{k: v for k, v in safe_builtins.items() if k not in {"setattr", "delattr"}},
    **{name: getattr(builtins, name) for name in EXTRA_BUILTINS.split()},
}


class CandidateError(Exception):
    """The candidate was refused before or while loading; carries the :class:`ErrorKind`."""

    def __init__(self, kind: ErrorKind, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.traceback = traceback


class ForbiddenError(Exception):
    """Raised by the guards when a candidate reaches for something it may not; reported as FORBIDDEN."""


class ForbiddenAttributeError(ForbiddenError, AttributeError):
    """An attribute outside the allow-lists (``torch.load``, ``tensor.numpy``...)."""


class ForbiddenWriteError(ForbiddenError, TypeError):
    """An assignment to a module, class or function (monkeypatching)."""


class ModuleProxy:
    """A read-only stand-in for a module that exposes only allow-listed attributes."""

    __slots__ = ("_attributes", "_name")

    def __init__(self, name: str, attributes: dict[str, Any]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_attributes", attributes)

    def __getattr__(self, attribute: str) -> Any:
        try:
            return self._attributes[attribute]
        except KeyError:
            raise ForbiddenAttributeError(
                f"{self._name}.{attribute} is not available in credit functions (pure tensor maths only)"
            ) from None

    def __setattr__(self, attribute: str, value: Any) -> None:
        raise ForbiddenWriteError(f"{self._name} is read-only")

    def __repr__(self) -> str:
        return f"<restricted module {self._name}>"


def _proxy(name: str, module: Any, allowed: Iterable[str], **children: ModuleProxy) -> ModuleProxy:
    attributes = {attr: getattr(module, attr) for attr in allowed if hasattr(module, attr)}
    return ModuleProxy(name, {**attributes, **children})


FUNCTIONAL = _proxy("torch.nn.functional", torch.nn.functional, FUNCTIONAL_ALLOWED)
NN = ModuleProxy("torch.nn", {"functional": FUNCTIONAL})
TORCH = _proxy("torch", torch, TORCH_ALLOWED, nn=NN)
MATH = _proxy("math", math, (n for n in dir(math) if not n.startswith("_")))
_MODULES = {"torch": TORCH, "torch.nn": NN, "torch.nn.functional": FUNCTIONAL, "math": MATH}
_UNWRITABLE = (
    ModuleProxy,
    types.ModuleType,
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
)


def _guarded_import(
    name: str, globals_: Any = None, locals_: Any = None, fromlist: Any = (), level: int = 0
) -> Any:
    if isinstance(fromlist, list) and not fromlist and name.startswith("torch"):
        # CPython's PyImport_Import (torch's C code, e.g. `torch.tensor(..., dtype=...)` looking up
        # `torch.storage`) calls the frame's __import__ with an empty *list*, ignores the result and reads
        # sys.modules itself. Candidate code passes None or a tuple, so it never gets here; nothing leaks.
        return None
    if level != 0 or name not in _MODULES:
        raise ImportError(
            f"import of {name!r} is not allowed; credit functions may import only torch and math"
        )
    # `import torch.nn.functional` binds the top package; `from torch.nn import functional` the module.
    return _MODULES[name] if fromlist else _MODULES[name.split(".", maxsplit=1)[0]]


def _guarded_getattr(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, torch.Tensor) and name in TENSOR_DENIED:
        raise ForbiddenAttributeError(f"tensor.{name} is not available in credit functions")
    if isinstance(obj, ModuleProxy):
        return getattr(obj, name)
    try:
        return safer_getattr(obj, name, default)
    except NotImplementedError as exc:  # str.format and string.Formatter: known escape routes
        raise ForbiddenAttributeError(str(exc)) from None


def _guarded_write(obj: Any) -> Any:
    if isinstance(obj, _UNWRITABLE):
        raise ForbiddenWriteError(f"credit functions may not modify {obj!r}")
    return obj


_AUGMENTED_ASSIGNMENTS: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.add, "-=": operator.sub, "*=": operator.mul, "/=": operator.truediv,
    "//=": operator.floordiv, "%=": operator.mod, "**=": operator.pow, "@=": operator.matmul,
}  # fmt: skip
"""What ``a op= b`` computes in a candidate: a new value, ``a op b``, never ``a`` changed in place (a
tensor it was given would change under its caller)."""


def _inplace(op: str, left: Any, right: Any) -> Any:
    operation = _AUGMENTED_ASSIGNMENTS.get(op)
    if operation is None:
        raise TypeError(f"augmented assignment {op} is not allowed")
    return operation(left, right)


class OutputLimitExceeded(BaseException):
    """The candidate printed more than its output budget."""


class PrintSink:
    """Collects what a candidate prints, up to ``limit`` characters."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.overflowed = False

    def write(self, text: str) -> None:
        if self.size + len(text) > self.limit:
            self.overflowed = True
            raise OutputLimitExceeded(f"printed more than {self.limit} characters")
        self.parts.append(text)
        self.size += len(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def reset(self) -> None:
        """Start counting again: a function loaded once and called many times gets the limit per call."""
        self.parts.clear()
        self.size = 0
        self.overflowed = False


def _printer(sink: PrintSink) -> Callable[..., Any]:
    """RestrictedPython's ``_print_`` hook: every ``print`` in the candidate writes into ``sink``."""

    class Printer:
        def __init__(self, _getattr_: Any = None) -> None:
            pass

        def _call_print(self, *objects: Any, **kwargs: Any) -> None:
            kwargs.pop("file", None)
            print(*objects, **kwargs, file=sink)

        def __call__(self) -> str:
            return sink.text

    return Printer


def restricted_globals(sink: PrintSink) -> dict[str, Any]:
    """Fresh globals for executing one candidate module; its prints go to ``sink``."""
    return {
        "__builtins__": {**BUILTINS, "__import__": _guarded_import},
        "__name__": "credit_function",
        "__metaclass__": type,
        "_getattr_": _guarded_getattr,
        "_getitem_": operator.getitem,  # obj[key] itself, with no Python frame per subscript
        "_getiter_": iter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_write_": _guarded_write,
        "_inplacevar_": _inplace,
        "_print_": _printer(sink),
        "_apply_": lambda f, *args, **kwargs: f(*args, **kwargs),
    }


# --- static checks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Finding:
    kind: ErrorKind
    line: int
    message: str


def _static_findings(tree: ast.Module) -> list[_Finding]:
    findings = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level:
                modules = ["." * node.level + (node.module or "")]
            for module in modules:
                if module not in ALLOWED_IMPORTS:
                    findings.append(_Finding(ErrorKind.IMPORT, line, f"import of {module!r} is not allowed"))
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_CALLS:
            findings.append(_Finding(ErrorKind.FORBIDDEN, line, f"{node.id!r} is not allowed"))
        elif isinstance(node, ast.Global | ast.Nonlocal):
            findings.append(_Finding(ErrorKind.FORBIDDEN, line, "global/nonlocal statements are not allowed"))
    return findings


def _contract_problem(tree: ast.Module) -> str | None:
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    fn = functions.get(FUNCTION_NAME)
    if fn is None:
        return f"the file must define a top-level function `def {FUNCTION_NAME}(agents_q, state):`"
    positional = [*fn.args.posonlyargs, *fn.args.args]
    required = len(positional) - len(fn.args.defaults)
    if (len(positional) < 2 and fn.args.vararg is None) or required > 2:
        return f"`{FUNCTION_NAME}` must accept exactly two positional arguments (agents_q, state)"
    return None


def compile_candidate(source: str) -> types.CodeType:
    """Statically check and compile ``source``; :class:`CandidateError` with the reason if refused."""
    try:
        tree = parse_python(source, filename=CANDIDATE_FILENAME)
    except SyntaxError as exc:
        where = f"line {exc.lineno}: " if exc.lineno else ""
        raise CandidateError(ErrorKind.SYNTAX, f"{where}{exc.msg}", _syntax_excerpt(source, exc)) from None
    findings = _static_findings(tree)
    if findings:
        first = min(findings, key=lambda f: (f.kind != ErrorKind.IMPORT, f.line))
        raise CandidateError(
            first.kind, f"line {first.line}: {first.message}", _source_line(source, first.line)
        )
    problem = _contract_problem(tree)
    if problem:
        raise CandidateError(ErrorKind.CONTRACT, problem)
    # The tree parsed above, not the source: RestrictedPython would parse it again, outside the lock.
    result = compile_restricted_exec(tree, filename=CANDIDATE_FILENAME)
    if result.errors or result.code is None:
        raise CandidateError(ErrorKind.FORBIDDEN, "; ".join(result.errors) or "refused by RestrictedPython")
    return result.code


def _source_line(source: str, line: int) -> str:
    lines = source.splitlines()
    return f"  line {line}: {lines[line - 1].strip()}" if 0 < line <= len(lines) else ""


def _syntax_excerpt(source: str, exc: SyntaxError) -> str:
    return _source_line(source, exc.lineno or 0)


@dataclass(frozen=True)
class LoadedCandidate:
    """A candidate module executed under the restricted globals."""

    function: Callable[..., Any]
    """Its ``credit_assignment``."""
    output: PrintSink
    """Everything it prints, now and on every later call."""


def load_credit_function(source: str, print_limit: int = 64 * 1024) -> LoadedCandidate:
    """Compile and execute a candidate module under the restricted globals.

    Raises :class:`CandidateError` for anything refused, including exceptions at import time.
    """
    code = compile_candidate(source)
    sink = PrintSink(print_limit)
    module_globals = restricted_globals(sink)
    try:
        exec(code, module_globals)
    except OutputLimitExceeded as exc:
        raise CandidateError(ErrorKind.OUTPUT_LIMIT, str(exc)) from None
    except ImportError as exc:
        raise CandidateError(ErrorKind.IMPORT, str(exc), candidate_traceback(exc, source)) from None
    except ForbiddenError as exc:
        raise CandidateError(ErrorKind.FORBIDDEN, str(exc), candidate_traceback(exc, source)) from None
    except Exception as exc:
        raise CandidateError(
            ErrorKind.RUNTIME, f"{type(exc).__name__} while loading: {exc}", candidate_traceback(exc, source)
        ) from None
    fn = module_globals.get(FUNCTION_NAME)
    if not callable(fn):
        raise CandidateError(ErrorKind.CONTRACT, f"`{FUNCTION_NAME}` is not a function")
    return LoadedCandidate(function=fn, output=sink)


class CallBudgetExceededError(Exception):
    """A credit function called in this process ran past its per-call time budget."""


def time_limited(function: Callable[..., Any], budget_s: float) -> Callable[..., Any]:
    """``function`` (a loaded candidate's) wrapped so that a call running longer than ``budget_s`` seconds
    raises :class:`CallBudgetExceededError`.

    In this process there is no child to kill, so the deadline is checked on every line that the
    candidate's own code executes (a trace function on its frames only: torch's kernels and every other
    frame run untraced). One tensor operation that takes longer is interrupted only when it returns.
    """

    def within_budget(*args: Any) -> Any:
        deadline = time.monotonic() + budget_s

        def on_line(frame: types.FrameType, event: str, arg: Any) -> Any:
            if time.monotonic() > deadline:
                raise CallBudgetExceededError(f"still running after {budget_s:g}s (per-call budget)")
            return on_line

        def on_call(frame: types.FrameType, event: str, arg: Any) -> Any:
            return on_line if frame.f_code.co_filename == CANDIDATE_FILENAME else None

        previous = sys.gettrace()
        sys.settrace(on_call)
        try:
            return function(*args)
        finally:
            sys.settrace(previous)

    return within_budget


def candidate_traceback(exc: BaseException, source: str, limit: int = 6) -> str:
    """The exception's frames inside the candidate only (innermost last), with their source lines, and
    the values of the innermost frame's variables: a small model repairs far better when it sees that
    ``b`` was a float, or a tensor of shape [64, 3], than from the message alone."""
    frames, innermost = [], None
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename == CANDIDATE_FILENAME:
            frames.append(f"  in {code.co_name}, " + _source_line(source, tb.tb_lineno).strip())
            innermost = tb.tb_frame
        tb = tb.tb_next
    lines = frames[-limit:]
    if innermost is not None and (values := _local_values(innermost.f_locals)):
        lines.append(f"  values there: {values}")
    lines.append(f"{type(exc).__name__}: {exc}")
    return "\n".join(lines)


def _local_values(names: dict[str, Any], most: int = 8, width: int = 60) -> str:
    """``name = value`` for a frame's plain variables: tensors by shape, long values cut short."""
    shown = []
    for name, value in names.items():
        if callable(value) or isinstance(value, types.ModuleType) or name.startswith("_"):
            continue
        if isinstance(value, torch.Tensor):
            text = f"tensor of shape {list(value.shape)}"
        else:
            try:
                text = repr(value)
            except Exception:  # an object of the candidate's own making may fail even to print
                text = "?"
            text = text if len(text) <= width else text[: width - 3] + "..."
        shown.append(f"{name} = {text} ({type(value).__name__})")
    return "; ".join(shown[:most])
