"""Compiled training kernels: a GRU layer's recurrence over whole sequences, forward and backward.

:func:`gru_recurrence` is what :meth:`qllm.rl.agent.RNNAgent.unroll` runs on CPU: the same maths as
``torch.nn.GRU`` (``gru.cpp`` beside this file says which), as one operator each way instead of a dozen
per step. ``benchmarks/gru_kernel.py`` measures it on the learner's batches (51 steps): the GRU's
forward and backward pass 1.68x faster than ``torch.nn.GRU``'s for ``qmix`` (64 sequences of 64 units),
1.25x for ``riit`` (256) and 1.15x for the ``qllm`` preset (128 of 128 units), where the matrix products
outweigh the per-step bookkeeping. The forward pass equals ``torch.nn.GRU``'s bit for bit; gradients
agree to float rounding (the weights' are summed over steps in another order).

The source is compiled once per torch version and source text with the system's C++ compiler (``CXX``,
default ``c++``; about 15 s), into :func:`qllm.cache.cache_dir`, and loaded into torch as the
``torch.ops.qllm`` operators. ``scripts/setup.sh`` builds it (``python -m qllm.rl.kernels``). Where it
cannot be built or loaded, :func:`available` says why once on stderr and the agent falls back to
``torch.nn.GRU``: slower, never different in meaning.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from qllm.cache import cache_dir

SOURCE = Path(__file__).with_name("gru.cpp")
DISABLE_ENV = "QLLM_GRU_KERNEL"
"""Set to ``0`` to use ``torch.nn.GRU`` instead of the compiled kernel (to compare the two)."""


class KernelBuildError(RuntimeError):
    """The kernel's source did not compile or its library did not load."""


def library_path() -> Path:
    """Where the compiled library for this source text and this torch lives in the cache."""
    key = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode()).hexdigest()[:16]
    return cache_dir() / "kernels" / f"qllm-gru-{key}.so"


def compile_command(output: Path) -> list[str]:
    torch_dir = Path(torch.__file__).parent
    abi = int(torch.compiled_with_cxx11_abi())
    return [
        *shlex.split(os.environ.get("CXX", "c++")),
        *("-O3", "-std=c++20", "-shared", "-fPIC", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"),
        f"-I{torch_dir / 'include'}",
        str(SOURCE),
        f"-L{torch_dir / 'lib'}",
        f"-Wl,-rpath,{torch_dir / 'lib'}",
        *("-ltorch_cpu", "-lc10", "-o", str(output)),
    ]


def build() -> Path:
    """Compiles the library into the cache unless it is there; returns its path.

    Processes that build at once (a sweep's first runs) each compile to a file of their own and move it
    into place, which is atomic: none ever loads a half-written library."""
    path = library_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"qllm: compiling the GRU training kernel once, into {path.parent} (about 15 s)", file=sys.stderr)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".so")
    os.close(fd)
    try:
        done = subprocess.run(compile_command(Path(partial)), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise KernelBuildError(f"the compiler failed: {done.stderr.strip()[-2000:]}")
        Path(partial).replace(path)
    except OSError as exc:
        raise KernelBuildError(f"could not run the compiler: {exc}") from exc
    finally:
        Path(partial).unlink(missing_ok=True)
    return path


@functools.cache
def available() -> bool:
    """Whether the compiled kernel is loaded (built first if need be). Says once why when it is not."""
    if os.environ.get(DISABLE_ENV, "").strip() == "0":
        return False
    try:
        torch.ops.load_library(str(build()))
    except (KernelBuildError, OSError, RuntimeError) as exc:
        print(f"qllm: the GRU training kernel is not available, training uses torch.nn.GRU: {exc}",
              file=sys.stderr)  # fmt: skip
        return False
    return True


class GRURecurrence(torch.autograd.Function):
    """``hidden = recurrence(gates_in, w_hh, b_hh)`` through the compiled operators."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, gates_in: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor
    ) -> torch.Tensor:
        hidden, rz, new, hn = torch.ops.qllm.gru_forward(gates_in, w_hh, b_hh)
        ctx.save_for_backward(hidden, rz, new, hn, w_hh)  # type: ignore[attr-defined]
        return hidden

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, grad_hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden, rz, new, hn, w_hh = ctx.saved_tensors  # type: ignore[attr-defined]
        return torch.ops.qllm.gru_backward(grad_hidden, hidden, rz, new, hn, w_hh)


def gru_recurrence(gates_in: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """A GRU layer's hidden states from a zero start: ``gates_in [T, B, 3H]`` (``x W_ih^T + b_ih`` of
    every step, gates in ``torch.nn.GRU``'s order) -> ``[T, B, H]``. CPU only; raises
    :class:`KernelBuildError` where :func:`available` is False."""
    if not available():
        raise KernelBuildError("the GRU kernel is not available here (the line above says why)")
    return GRURecurrence.apply(gates_in, w_hh, b_hh)
