"""Parsing Python source text, safely from several threads at once.

CPython 3.11 before 3.11.8 keeps the AST constructor's recursion counter in interpreter-wide state: each
``ast.parse`` resets it on entry and checks it on exit, so when a thread switch (a garbage collection
running a finalizer, say) lets a second thread's parse start in the middle of the first, the first fails
with ``SystemError: AST constructor recursion depth mismatch`` (python/cpython#106905, fixed in 3.11.8;
the machines qllm is set up on run 3.11.7). The generation graph checks its K candidates on K threads,
and each check parses, so every parse of source text in qllm goes through :func:`parse_python`, which
holds one lock around it. A credit function parses in well under a millisecond, so the lock costs
nothing that shows.
"""

from __future__ import annotations

import ast
import threading

_AST_LOCK = threading.Lock()


def parse_python(source: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse(source, filename)``, one thread at a time; raises ``SyntaxError`` as it does."""
    with _AST_LOCK:
        return ast.parse(source, filename=filename)
