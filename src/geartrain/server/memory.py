"""Giving freed memory back to the system: large buffers in mappings of their own.

glibc serves a large allocation from its own mapping (returned at free) only above a threshold that it raises
each time such a mapping is freed (up to 32 MiB): after a few 1 MiB payloads come and go, the next ones live in
the heap, whose free space is kept. Fixing the threshold keeps every payload past it in a mapping of its own.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Allocations at least this large get a mapping of their own (job payloads, decoder buffers of large packets).
MMAP_THRESHOLD = 256 * 1024
#: Free heap space past this much at its top goes back to the system at once.
TRIM_THRESHOLD = 1024 * 1024


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018  (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


_libc = _glibc()


def return_large_buffers() -> bool:
    """Fix glibc's thresholds (a no-op elsewhere); True when they were set."""
    if _libc is None:
        return False
    return bool(_libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        _libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

