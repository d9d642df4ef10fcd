"""Keep freed memory in the process for the next training step instead of returning it to the OS.

A training step on CPU frees and re-allocates activations of megabytes every step. glibc's
malloc serves blocks above a (dynamic) threshold with fresh ``mmap`` pages and trims free memory
at the top of the heap back to the OS, so these blocks come back as new pages whose first touch
is a page fault (kernel entry and zeroing of 4 KiB); the meta steps, which allocate most, pay
the most (the page-fault counts with and without this setting are in docs/benchmarks.md).

:func:`keep_freed_memory` is the glibc equivalent of the allocator swap PyTorch's CPU
performance guide recommends (preloading jemalloc or tcmalloc), without a native dependency:
``mallopt`` fixes the mmap threshold at its maximum (32 MiB; larger blocks, such as a data set,
still get their own mapping) and trims the heap only above 1 GiB of free memory at its top.
Freed memory stays with the process, so its resident set stays at its peak. Elsewhere than
glibc (macOS, musl) it does nothing and returns False.

:func:`return_freed_memory` is the opposite, for measuring: every block of 64 KiB or more gets
its own mapping and goes back to the OS when freed, so the resident set follows the live
tensors (the benchmark's peak memory on CPU).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 2**30


def _mallopt(mmap_threshold: int, trim_threshold: int) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl's mallopt accepts and ignores the options
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's malloc to reuse freed blocks (see the module docstring); True if it did.
    Process-wide and idempotent; call it before training."""
    return _mallopt(MMAP_THRESHOLD, TRIM_THRESHOLD)


def return_freed_memory() -> bool:
    """Set glibc's malloc to give every block of 64 KiB or more back to the OS when it is freed
    (for measuring peak memory by the resident set); True if it did. Process-wide."""
    return _mallopt(64 * 2**10, 128 * 2**10)
