"""The results store: every eval run, with what produced it, in one SQLite file.

An eval run records its suite, the models, the prompt version and the SHA-256 of every prompt file,
the qllm version and the git commit; each of its generation runs records its scores and error kinds.
Eval runs can be exported to JSON (the checked-in reference reports are some) and compared by id, file,
or the name of a shipped reference report (package data under ``qllm/evals/reference/``, so a wheel
install can compare against them too).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from qllm import __version__

DEFAULT_STORE = Path("runs/evals/evals.sqlite")
REFERENCE_DIR: Traversable = files("qllm.evals") / "reference"
"""Checked-in eval runs exported to JSON (``smoke-local-v1``, the ``levers/`` series), shipped as package
data: each can be named wherever an eval id or an exported file is accepted."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS eval_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    label TEXT NOT NULL,
    suite TEXT NOT NULL,
    created TEXT NOT NULL,
    coder TEXT NOT NULL,
    evaluator TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    prompt_hashes TEXT NOT NULL,
    qllm_version TEXT NOT NULL,
    git_commit TEXT NOT NULL,
    mode TEXT NOT NULL DEFAULT 'code'
);
CREATE TABLE IF NOT EXISTS case_results (
    eval_id INTEGER NOT NULL REFERENCES eval_runs(id),
    task TEXT NOT NULL,
    seed INTEGER NOT NULL,
    unseen INTEGER NOT NULL,
    status TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    wall_s REAL NOT NULL,
    scores TEXT NOT NULL,
    error_kinds TEXT NOT NULL
);
"""


class StoreError(ValueError):
    """An eval id or export file that does not exist."""


def git_commit() -> str:
    """The checkout's commit (with ``-dirty`` when it has local changes), or ``unknown``.

    Only a checkout of qllm itself counts: a wheel installed in a venv that happens to lie inside some
    other git repository must not record that repository's commit."""
    here = Path(__file__).parent
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        if Path(top).resolve() != here.resolve().parents[1]:  # qllm/evals/ -> the checkout's root
            return "unknown"
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


@dataclass
class CaseResult:
    task: str
    seed: int
    unseen: bool
    status: str
    run_dir: str
    wall_s: float
    scores: dict[str, float | None]
    error_kinds: dict[str, int]


@dataclass
class EvalRun:
    label: str
    suite: str
    coder: str
    evaluator: str
    prompt_version: str
    prompt_hashes: dict[str, str]
    mode: str = "code"
    """What the coder wrote (``code`` or ``spec``); runs stored before modes existed were ``code``."""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    qllm_version: str = __version__
    git_commit: str = field(default_factory=git_commit)
    id: int | None = None
    results: list[CaseResult] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EvalRun:
        data = json.loads(text)
        data["results"] = [CaseResult(**r) for r in data.get("results", [])]
        return cls(**data)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a store written by an older qllm up to date (columns are only ever added, with defaults)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(eval_runs)")}
    if "mode" not in columns:
        db.execute("ALTER TABLE eval_runs ADD COLUMN mode TEXT NOT NULL DEFAULT 'code'")


class ResultsStore:
    """Eval runs in SQLite (created on first use)."""

    def __init__(self, path: Path = DEFAULT_STORE) -> None:
        self.path = path

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path)
        try:
            connection.executescript(SCHEMA)
            _add_missing_columns(connection)
            yield connection
            connection.commit()
        finally:
            connection.close()

    def start(self, run: EvalRun) -> int:
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO eval_runs (label, suite, created, coder, evaluator, prompt_version,"
                " prompt_hashes, qllm_version, git_commit, mode) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run.label, run.suite, run.created, run.coder, run.evaluator, run.prompt_version,
                 json.dumps(run.prompt_hashes, sort_keys=True), run.qllm_version, run.git_commit, run.mode),
            )  # fmt: skip
            run.id = int(cursor.lastrowid or 0)
        return run.id

    def add_result(self, eval_id: int, result: CaseResult) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO case_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (eval_id, result.task, result.seed, int(result.unseen), result.status, result.run_dir,
                 result.wall_s, json.dumps(result.scores, sort_keys=True), json.dumps(result.error_kinds)),
            )  # fmt: skip

    def update_scores(self, eval_id: int, result: CaseResult) -> None:
        """Replace the stored scores of one case result (after rescoring its run folder)."""
        with self._connect() as db:
            db.execute(
                "UPDATE case_results SET scores = ?, error_kinds = ? WHERE eval_id = ? AND run_dir = ?",
                (json.dumps(result.scores, sort_keys=True), json.dumps(result.error_kinds), eval_id,
                 result.run_dir),
            )  # fmt: skip

    def runs(self) -> list[EvalRun]:
        """Every eval run, oldest first, without their case results."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM eval_runs ORDER BY id").fetchall()
        return [self._run(row) for row in rows]

    def get(self, eval_id: int) -> EvalRun:
        with self._connect() as db:
            row = db.execute("SELECT * FROM eval_runs WHERE id = ?", (eval_id,)).fetchone()
            if row is None:
                raise StoreError(f"no eval run {eval_id} in {self.path} (see `qllm evals list`)")
            results = db.execute("SELECT * FROM case_results WHERE eval_id = ?", (eval_id,)).fetchall()
        run = self._run(row)
        run.results = [
            CaseResult(task, seed, bool(unseen), status, run_dir, wall, json.loads(scores), json.loads(kinds))
            for _, task, seed, unseen, status, run_dir, wall, scores, kinds in results
        ]
        return run

    @staticmethod
    def _run(row: tuple[Any, ...]) -> EvalRun:
        run_id, label, suite, created, coder, evaluator, version, hashes, qllm_version, commit, mode = row
        return EvalRun(
            label=label, suite=suite, coder=coder, evaluator=evaluator, prompt_version=version, mode=mode,
            prompt_hashes=json.loads(hashes), created=created, qllm_version=qllm_version, git_commit=commit,
            id=run_id,
        )  # fmt: skip


def available_references() -> list[str]:
    """The names of the shipped reference runs, e.g. ``smoke-local-v1``, ``levers/2-smoke-code``."""
    return sorted(_json_names(REFERENCE_DIR, ""))


def _json_names(folder: Traversable, prefix: str) -> Iterator[str]:
    # Traversable has no rglob: walk the (two-level) folder by hand.
    for entry in folder.iterdir():
        if entry.is_dir():
            yield from _json_names(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(".json"):
            yield prefix + entry.name.removesuffix(".json")


def resolve_run(reference: str, store: ResultsStore) -> EvalRun:
    """An eval run by store id, from an exported JSON file, or a shipped reference run by name."""
    if reference.isdigit():
        return store.get(int(reference))
    source: Path | Traversable = Path(reference)
    if not source.is_file() and reference in available_references():
        source = REFERENCE_DIR.joinpath(*f"{reference}.json".split("/"))
    if not source.is_file():
        raise StoreError(
            f"{reference!r} is neither an eval id in {store.path}, an exported JSON file, nor a shipped "
            f"reference ({', '.join(available_references())})"
        )
    try:
        return EvalRun.from_json(source.read_text(encoding="utf-8"))
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"{reference} is not an exported eval run: {exc}") from None
