"""Keep a long-running scoring process's heap from creeping up (glibc malloc).

Served batches vary in size, so every forward pass frees and allocates activation buffers of new sizes. With
several threads allocating, glibc's malloc gives each its own arena and keeps the freed holes of the wrong size
in them: the resident size rises in steps and does not come back. Two remedies, both from `mallopt(3)` /
`malloc_trim(3)`: `cap_arenas` bounds the number of arenas (M_ARENA_MAX), and a `HeapTrimmer` called after each
batch hands the arenas' free pages back to the system (`malloc_trim(0)`) at most once per interval.
(A fixed, low M_MMAP_THRESHOLD would also return large buffers, but mapping every activation buffer afresh costs
the service about 40% of its throughput.)
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from typing import Any

M_ARENA_MAX = -8


def _glibc() -> Any | None:
    """The C library when it is glibc (it has `mallopt` and `malloc_trim`), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def cap_arenas(arenas: int) -> bool:
    """Let glibc malloc create at most `arenas` (>= 1) arenas; call it before the worker threads start. Returns
    False (and changes nothing) where the C library is not glibc."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_ARENA_MAX, max(1, arenas)))


class HeapTrimmer:
    """Callable from any thread: returns the free pages of every malloc arena to the system, at most once every
    `interval_s` seconds (each call after that is a clock read). Does nothing where the C library is not glibc."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._libc = _glibc()
        self._lock = threading.Lock()
        self._last = time.monotonic()

    @property
    def active(self) -> bool:
        """False where the C library is not glibc: calls then do nothing."""
        return self._libc is not None

    def __call__(self) -> None:
        if self._libc is None or time.monotonic() - self._last < self.interval_s:
            return
        if not self._lock.acquire(blocking=False):  # another thread is trimming
            return
        try:
            self._last = time.monotonic()
            self._libc.malloc_trim(0)
        finally:
            self._lock.release()
