"""glibc malloc settings for a training process: keep freed memory for reuse.

By default glibc serves large blocks with fresh ``mmap`` calls (its threshold adapts between 128 KiB
and 32 MiB) and hands freed heap tops back to the OS; a training step that frees and re-allocates
its activations then page-faults them in again on every step. Measured on the demo recipe (2-core
CPU, 200 iterations): 3.8-4.2 M minor page faults and 10-11 s of kernel time with the defaults,
0.24 M and 1.8 s with these settings, ~25 % more images per second. PyTorch's CPU tuning guides
reach the same with jemalloc / tcmalloc.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum: larger blocks are still mmapped and given back
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of freed heap for the next step


def is_malloc_variable(name: str) -> bool:
    """glibc's environment tunables: MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_, ..."""
    return name.startswith("MALLOC_") and name.endswith("_")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; returns whether they were set.

    Does nothing off glibc, or where the environment already sets malloc tunables (the user chose).
    Memory a step frees stays in the process for the next step: its resident size stays near
    the peak of a step instead of falling between steps.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(map(is_malloc_variable, os.environ)) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
