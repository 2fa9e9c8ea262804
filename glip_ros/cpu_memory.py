"""Keep freed memory in the process for reuse (glibc malloc), so CPU inference stops re-faulting its buffers.

Why: a CPU frame allocates and frees the same large tensors every time (GLIP-T's deformable-convolution
columns are 9 x 256 values per location: 44 MB at 480x640, 155 MB at 800x1333). glibc serves every
allocation above its mmap threshold (at most 32 MB, adjusted dynamically) with a fresh ``mmap`` and returns
it with ``munmap`` at free, and a thread's own arena cannot hold a block over 64 MB at all, so each frame
page-faults those buffers in again: on this project's 2-core machine a 42 MB element-wise product took 11 ms,
of which 8 went to 10k page faults; torch's CPU allocator does not cache. Raising the mmap and trim thresholds
and using one arena lets freed blocks be reused after the first frames (measured in docs/BENCHMARKS.md).

The cost: the process keeps the memory of its largest frame (its peak) instead of giving it back between
frames. Process-wide, so it is applied by the entry points (node, CLIs, glip-bench), not by the library on
import; library users call :func:`keep_freed_memory` themselves. glibc only: elsewhere nothing is changed and
the returned message says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["keep_freed_memory"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap, where freed ones are reused
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: keep up to 2 GiB of free heap top mapped
ARENA_MAX = 1  # threads share the main arena: a thread arena maps blocks over 64 MB afresh every time

_applied: str | None = None


def keep_freed_memory() -> tuple[bool, str]:
    """Ask glibc's malloc to keep large freed blocks for reuse. Returns (applied, what was done or why not).

    Idempotent; safe to call from any thread (mallopt takes malloc's lock)."""
    global _applied
    if _applied is not None:
        return True, _applied
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        return False, f"not changed: the C library is {libc_name or 'unknown'}, not glibc"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as e:
        return False, f"not changed: glibc's mallopt is not reachable ({e})"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    refused = [
        name
        for name, param, value in (
            ("M_MMAP_THRESHOLD", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            ("M_ARENA_MAX", _M_ARENA_MAX, ARENA_MAX),
        )
        if mallopt(param, value) != 1
    ]
    if refused:
        return False, "glibc refused " + ", ".join(refused) + ": large freed blocks may still be unmapped"
    _applied = "freed memory kept for reuse (glibc: mmap threshold 1 GiB, trim threshold 2 GiB, one arena)"
    return True, _applied
