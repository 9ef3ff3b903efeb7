"""parse_python holds where ast.parse fails on Python 3.11.7: one thread's parse interrupted in the middle
of building its tree while another thread parses (in the generation graph, a garbage collection running
a finalizer inside one candidate check's parse lets another check's thread run)."""

from __future__ import annotations

import ast
import threading

import pytest

from qllm.pysource import parse_python

INNER = "x = 1\n"
OTHER = "def f(a):\n    return a + 2\n"
WAIT_S = 0.5


def _at_depth(depth: int, source: str) -> ast.Module:
    # The two threads parse at different stack depths, so the shared counter's mismatch shows.
    return _at_depth(depth - 1, source) if depth else parse_python(source)


def test_a_parse_interrupted_while_building_its_tree_by_another_threads_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Deterministic stand-in for the finalizer: every Constant's `value` is set through this property, and
    # the first thread, on its first Constant, hands over to the second and waits until it has parsed
    # (with the lock, the second cannot start, and the first goes on after WAIT_S).
    interrupted, other_done = threading.Event(), threading.Event()

    def set_value(node: ast.Constant, value: object) -> None:
        node.__dict__["value"] = value
        if threading.current_thread().name == "first" and not interrupted.is_set():
            interrupted.set()
            other_done.wait(WAIT_S)

    monkeypatch.setattr(
        ast.Constant, "value", property(lambda n: n.__dict__["value"], set_value), raising=False
    )
    trees: dict[str, ast.Module] = {}
    errors: list[BaseException] = []

    def parse(name: str, depth: int, source: str) -> None:
        try:
            trees[name] = _at_depth(depth, source)
        except SystemError as exc:  # ast.parse: "AST constructor recursion depth mismatch"
            errors.append(exc)
        finally:
            if name == "second":
                other_done.set()

    first = threading.Thread(target=parse, args=("first", 0, INNER), name="first")
    second = threading.Thread(target=lambda: interrupted.wait(5) and parse("second", 20, OTHER))
    for thread in (first, second):
        thread.start()
    for thread in (first, second):
        thread.join()
    assert errors == []
    assert ast.unparse(trees["first"]) == INNER.strip()
    assert ast.unparse(trees["second"]) == OTHER.strip()


def test_syntax_errors_are_raised_as_ast_parse_raises_them() -> None:
    with pytest.raises(SyntaxError) as raised:
        parse_python("def f(:\n    pass\n", filename="candidate.py")
    assert raised.value.filename == "candidate.py"
    assert raised.value.lineno == 1
