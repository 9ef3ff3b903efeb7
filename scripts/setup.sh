#!/usr/bin/env bash
# Install everything qllm needs, from a clean clone, with no prompts. Safe to rerun: a second run only
# checks that nothing changed.
#   - system: bubblewrap (the sandbox's isolation backend), through apt-get when run as root
#   - Python: a virtual environment in ./.venv with the pinned packages of requirements/lock.txt
#     and qllm itself (editable), so `.venv/bin/qllm` and `.venv/bin/python -m pytest` work
# Slow downloads are cached outside the checkout in $QLLM_CACHE (default ~/.cache/qllm); nothing relies
# on that cache existing.
set -euo pipefail
cd "$(dirname "$0")/.."

QLLM_CACHE=${QLLM_CACHE:-$HOME/.cache/qllm}
mkdir -p "$QLLM_CACHE"
log() { printf '[setup] %s\n' "$*"; }

# --- system packages ------------------------------------------------------------------------------
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing bubblewrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null >/dev/null
    apt-get install -y -qq --no-install-recommends bubblewrap </dev/null >/dev/null
  else
    log "bubblewrap not installed and cannot apt-get it (not root): the sandbox will use its fallback"
  fi
fi

# --- Python environment ---------------------------------------------------------------------------
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON=$candidate; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "[setup] error: qllm needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi

stamp=$(cat requirements/lock.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.qllm-installed 2>/dev/null || true)" != "$stamp" ]; then
  log "installing pinned packages (torch is large; a few minutes on a fresh machine)"
  export PIP_CACHE_DIR="$QLLM_CACHE/pip" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
  .venv/bin/python -m pip install -q -r requirements/lock.txt 2>&1 | grep -v "is ignored: it is neither" || true
  .venv/bin/python -m pip install -q --no-deps -e . 2>&1 | grep -v "is ignored: it is neither" || true
  .venv/bin/python -m pip check
  echo "$stamp" > .venv/.qllm-installed
fi
.venv/bin/qllm --version >/dev/null
log "ready: .venv/bin/qllm"
