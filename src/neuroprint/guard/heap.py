"""Keep a long-running scoring process's heap from creeping up (glibc malloc).

Served batches vary in size, so every forward pass frees and allocates activation buffers of new sizes. glibc's
malloc then grows in two ways that never shrink back: each thread that allocates gets its own arena, and after a
large buffer is freed, the mmap threshold rises to its size (up to 32 MiB), so later buffers of that size come from
the arenas, where freed holes of the wrong size pile up. `bound_heap_growth` fixes the number of arenas and the
mmap threshold (`mallopt(3)`: M_ARENA_MAX, M_MMAP_THRESHOLD; a fixed threshold also turns the dynamic rise off), so
large activation buffers are mapped for each batch and returned to the system when freed.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def bound_heap_growth(arenas: int, mmap_threshold_bytes: int = 1 << 20) -> bool:
    """Cap glibc malloc at `arenas` arenas (>= 1) and fix its mmap threshold at `mmap_threshold_bytes` (buffers of
    that size and larger are mapped, so a free returns them to the system). Call it before the worker threads
    start. Returns False (and changes nothing) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, max(1, arenas))) and bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold_bytes))
