"""Process-wide settings that make training fast on CPU: torch's threads and numpy's BLAS threads, the C
allocator's habit of handing freed memory back to the system, and the compiled GRU kernel (built now if
need be, so that the compiler's wait and its message come before training starts, not at the first
update).

All are set once, at the start of :func:`qllm.rl.train.train`, and hold for the whole process (a
forked collector inherits them).
"""

from __future__ import annotations

import ctypes
import ctypes.util

import torch
from threadpoolctl import threadpool_limits

from qllm.rl import kernels

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameters (``malloc.h``)."""
HOLD_UP_TO = (1 << 30, 32 << 20)
"""Blocks up to this size come from the heap, not their own ``mmap`` (the first that glibc accepts:
older versions cap the threshold at 32 MiB on 64-bit)."""
NEVER_TRIM = (1 << 31) - 1


def tune_process(threads: int, device: torch.device) -> None:
    """``threads`` threads for each torch operation and each of numpy's matrix products, freed memory
    kept for reuse, and on CPU the GRU kernel loaded (or the one line saying why not).

    numpy's BLAS (OpenBLAS in its wheels) otherwise uses every core for products as small as acting's
    (16 x 128 by 128 x 384: 105 µs on two threads against 34 on one, here), and its threads spin on
    the cores the collector and the learner need."""
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads, user_api="blas")
    keep_freed_memory()
    if device.type == "cpu":
        kernels.available()


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for the next allocation instead of returning it to the system.

    Each update allocates the same large tensors again (a GRU's gates over every step of the batch:
    megabytes each). By default glibc gives blocks that large their own ``mmap`` and unmaps them when
    freed, and trims the heap's free top, so the next update touches fresh pages, and every first touch
    of a page is a fault the kernel must zero: 800 to 7500 faults per update on the q learner's presets,
    10-17% of its time. Kept, the memory is reused; the process's peak holds what its peak held anyway.
    Returns False where the C library is not glibc (nothing is changed there).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    if not mallopt(M_TRIM_THRESHOLD, NEVER_TRIM):
        return False
    return any(mallopt(M_MMAP_THRESHOLD, size) for size in HOLD_UP_TO)
