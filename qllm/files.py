"""Reading the small TOML files users hand to qllm (settings, eval suites), with one-line errors."""

from __future__ import annotations

import tomllib
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any


def read_toml(path: Path | Traversable, what: str, error: type[ValueError]) -> dict[str, Any]:
    """The parsed file (a path, or package data such as a shipped suite), or ``error`` saying which
    ``what`` could not be read or parsed, and why."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path} is not valid TOML: {exc}") from None
