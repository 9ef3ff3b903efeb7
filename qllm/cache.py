"""Where qllm keeps slow-to-rebuild artifacts: outside the checkout, never relied on to exist.

``QLLM_CACHE`` names the folder (default ``~/.cache/qllm``); ``scripts/setup.sh`` reads the same variable.
It holds the local model, its server's state and log, the compiled training kernels and the saved
gVisor sandbox worker (``qllm.sandbox.snapshots``). Deleting it costs time, never correctness:
everything in it is downloaded or rebuilt on demand.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder (``QLLM_CACHE``, default ``~/.cache/qllm``); it may not exist yet."""
    return Path(os.environ.get("QLLM_CACHE", Path.home() / ".cache" / "qllm"))
