"""Kept results: what became of finished jobs, by handle and by (function, unique), for --result-ttl seconds."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JobRecord", "Results"]


@dataclass
class JobRecord:
    """A finished job: how it ended (complete, failed, exception, cancelled), when, after how many runs."""

    handle: bytes
    function: bytes
    unique: bytes
    background: bool
    priority: int
    state: str
    attempts: int
    finished: float
    first_time: float = 0.0
    exception: bytes = b""
    #: WORK_COMPLETE data of a background job, when it fit in --result-max-bytes (else None).
    result: bytes | None = None
    result_size: int = 0


class Results:
    """Records in finishing order; those older than `ttl` seconds are dropped as lookups and inserts pass, and
    the oldest beyond `max_jobs` as inserts pass."""

    def __init__(self, ttl: float = 0.0, max_bytes: int = 64 * 1024, max_jobs: int = 1_000_000) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.max_jobs = max_jobs
        self.by_handle: dict[bytes, JobRecord] = {}
        self.by_unique: dict[tuple[bytes, bytes], JobRecord] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def add(self, record: JobRecord, now: float) -> None:
        self.expire(now)
        while self.max_jobs and len(self.by_handle) >= self.max_jobs:
            self._drop(next(iter(self.by_handle.values())))
        self.by_handle.pop(record.handle, None)
        self.by_handle[record.handle] = record
        if record.unique:
            self.by_unique[(record.function, record.unique)] = record

    def expire(self, now: float) -> None:
        by_handle = self.by_handle
        limit = now - self.ttl
        while by_handle:
            oldest = next(iter(by_handle.values()))
            if oldest.finished > limit:
                break
            self._drop(oldest)

    def _drop(self, record: JobRecord) -> None:
        del self.by_handle[record.handle]
        key = (record.function, record.unique)
        if self.by_unique.get(key) is record:
            del self.by_unique[key]

    def get(self, handle: bytes, now: float) -> JobRecord | None:
        self.expire(now)
        return self.by_handle.get(handle)

    def get_unique(self, function: bytes, unique: bytes, now: float) -> JobRecord | None:
        self.expire(now)
        return self.by_unique.get((function, unique))
