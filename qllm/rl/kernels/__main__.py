"""``python -m qllm.rl.kernels``: build the training kernels now (scripts/setup.sh does), so that the first
training run does not wait for the compiler; exits 1 when they cannot be built or loaded."""

import sys

from qllm.rl.kernels import available, library_path

if not available():
    sys.exit(1)
print(f"qllm: the GRU training kernel is ready: {library_path()}", file=sys.stderr)
