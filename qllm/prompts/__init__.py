"""Prompt templates as versioned files, loaded by name.

Each version is a folder (``v1/``, ...) of Markdown templates with ``${placeholder}`` fields (the
``string.Template`` syntax, so Python code in a prompt needs no brace escaping). The loader fails
loudly on a missing template, a missing value, or a value nobody asked for, and every run records the
version and the SHA-256 of each template it used, so evals can compare prompt versions exactly.

The templates are package data, read through :mod:`importlib.resources`, so they are found wherever
qllm is installed (a checkout, a wheel in site-packages) and never through the working directory.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass, field
from functools import cached_property
from importlib.resources import files
from importlib.resources.abc import Traversable

PROMPTS_DIR: Traversable = files(__name__)
DEFAULT_VERSION = "v1"


class PromptError(KeyError):
    """A prompt that does not exist, or values that do not match its placeholders."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def available_versions() -> list[str]:
    return sorted(p.name for p in PROMPTS_DIR.iterdir() if p.is_dir() and p.name.startswith("v"))


@dataclass(frozen=True)
class PromptLibrary:
    """The templates of one prompt version."""

    version: str = DEFAULT_VERSION
    root: Traversable = field(default=PROMPTS_DIR, repr=False)
    """Where the version folders are: the shipped ones, or any folder (a :class:`~pathlib.Path`)."""

    def __post_init__(self) -> None:
        if not (self.root / self.version).is_dir():
            raise PromptError(
                f"no prompt version {self.version!r} under {self.root} "
                f"(available: {', '.join(available_versions()) or 'none'})"
            )

    @cached_property
    def templates(self) -> dict[str, str]:
        # iterdir, not glob: a Traversable (package data) has no glob.
        found = [p for p in (self.root / self.version).iterdir() if p.is_file() and p.name.endswith(".md")]
        return {
            p.name.removesuffix(".md"): p.read_text(encoding="utf-8")
            for p in sorted(found, key=lambda p: p.name)
        }

    def hashes(self) -> dict[str, str]:
        """SHA-256 of every template in this version, by name."""
        return {name: hashlib.sha256(text.encode()).hexdigest() for name, text in self.templates.items()}

    def placeholders(self, name: str) -> set[str]:
        return {
            m.group("named") or m.group("braced")
            for m in string.Template.pattern.finditer(self._template(name))
            if m.group("named") or m.group("braced")
        }

    def render(self, name: str, /, **values: object) -> str:
        """The template ``name`` with every placeholder filled; :class:`PromptError` on any mismatch."""
        wanted = self.placeholders(name)
        missing, unused = wanted - values.keys(), values.keys() - wanted
        if missing or unused:
            raise PromptError(
                f"prompt {self.version}/{name}.md: missing values {sorted(missing)}, "
                f"unused values {sorted(unused)}"
            )
        text = string.Template(self._template(name)).substitute({k: str(v) for k, v in values.items()})
        return text.strip() + "\n"

    def _template(self, name: str) -> str:
        try:
            return self.templates[name]
        except KeyError:
            raise PromptError(
                f"no prompt {name!r} in version {self.version} (have: {', '.join(self.templates)})"
            ) from None
