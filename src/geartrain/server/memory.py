"""Giving freed memory back to the system, and reusing it while traffic lasts.

glibc serves an allocation from a mapping of its own (unmapped at free) above a threshold, and gives the free top
of its heap back once it exceeds another; left alone it raises both each time a mapping is freed (up to 32 and 64
MiB). A payload in a fresh mapping costs a page fault per 4 KiB (256 per MiB: about 0.7 ms of system time per 1 MiB
job of benchmarks/run.py's large load, more than the job's socket copies), so both are fixed here: allocations
under 4 MiB (payloads, read in place as they arrive) come from the heap, where the pages a finished job freed serve the
next one; larger ones (big payloads, the tables of a large backlog, which grow by mremap) get mappings of their
own. The heap gives back its free top past 8 MiB at once, and free pages below live allocations (a drained
backlog's payloads, the buffers of peers gone mid-packet) at the next trim(), which the server runs every
TRIM_INTERVAL seconds: malloc_trim() costs about 0.03 ms with nothing to give back, 7 ms for 200 MiB.
"""

from __future__ import annotations

import asyncio
import ctypes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Allocations at least this large get a mapping of their own.
MMAP_THRESHOLD = 4 * 1024 * 1024
#: Free heap space past this much at its top goes back to the system at once.
TRIM_THRESHOLD = 8 * 1024 * 1024
#: Seconds between two returns of the heap's free pages to the system (trim()).
TRIM_INTERVAL = 1.0


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


def trim() -> None:
    """Give the heap's free pages back to the system, wherever they lie (a no-op without glibc)."""
    if _libc is not None:
        _libc.malloc_trim(0)


async def trim_every(interval: float = TRIM_INTERVAL) -> None:
    """trim() every interval seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        trim()
