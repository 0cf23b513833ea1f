"""Flag: threading.Event's set/clear/is_set/wait on one raw lock, for the per-job and per-request waits.

threading.Event builds a Condition (an RLock and a waiter list) per instance and allocates a lock per wait;
gear makes one for every job and every submit, so that cost was paid on every job. A Flag's lock is held
while the flag is clear: set() releases it, and each waiter takes it and hands it straight back.
"""

from __future__ import annotations

from _thread import allocate_lock

__all__ = ["Flag"]


class Flag:
    """A thread-safe boolean to wait on, as threading.Event (set, clear, is_set, wait) but lighter."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._lock.acquire()
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._release()

    def clear(self) -> None:
        if self._set:
            self._set = False
            self._lock.acquire()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or ``timeout`` seconds pass; True if it is set."""
        if self._set:
            return True
        if timeout is None:
            woken = self._lock.acquire()
        elif timeout > 0:
            woken = self._lock.acquire(True, timeout)
        else:
            woken = self._lock.acquire(False)
        if woken:
            self._release()
        return woken or self._set

    def _release(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:
            pass  # two racing set() calls: the other one already released it, which is all that was wanted

    def __repr__(self) -> str:
        return f"<gear.Flag {'set' if self._set else 'clear'}>"
