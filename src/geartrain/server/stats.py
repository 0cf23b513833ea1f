"""Counters the broker, the transport and the store keep where events happen; metrics and the dashboard read them.

Everything here is plain ints, lists and dicts updated in O(1) on the loop thread: no locks, no label lookups,
no formatting. The readers (geartrain.server.http) turn them into Prometheus families and JSON at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from operator import add
from typing import Any, Final

#: Upper bounds (seconds) of the queue-wait and run-time histograms; the last bucket is +Inf.
JOB_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
#: Most jobs wait and run less than this (JOB_SECONDS' first bound): their bucket is found without a bisect.
SHORTEST: Final = JOB_SECONDS[0]
#: Upper bounds (seconds) of the durable store's commit latency histogram.
COMMIT_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
#: The results a job can end with (finished counters); "fail" includes jobs failed after too many retries.
RESULTS = ("complete", "fail", "exception")
#: Why a submit was refused: a full maxqueue, the ACL, a limit (unique, name, queued bytes), a bad name.
REJECT_REASONS = ("queue_full", "acl", "limit", "invalid")
#: Function names tracked one by one; further names are counted together (Stats.other).
MAX_TRACKED_FUNCTIONS = 100_000


class Histogram:
    """Bucket counts and a sum. Observations up to the first bound are counted apart, in `first`: most jobs wait
    and run less than SHORTEST, and the broker counts those without a bisect (see Stats). Past it, the bucket of
    the last observation is remembered with its edges (`last`, `lo` < value <= `hi`): the waits of a deep backlog
    drained in order fall in the same bucket job after job, and those skip the bisect too."""

    __slots__ = ("bounds", "first", "buckets", "total", "last", "lo", "hi")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.first = 0
        #: Counts per bucket (the last is +Inf) of the observations not in `first`.
        self.buckets = [0] * (len(bounds) + 1)
        self.total = 0.0
        #: The bucket of the last bisect and its edges: a value with lo < value <= hi belongs to it.
        self.last = 0
        self.lo = self.hi = 0.0

    def bucket(self, value: float) -> int:
        """The bucket of a value (Prometheus' le: the first bound at or above it), remembered for the next one."""
        bounds = self.bounds
        i = self.last = bisect_left(bounds, value)
        self.lo = bounds[i - 1] if i else float("-inf")
        self.hi = bounds[i] if i < len(bounds) else float("inf")
        return i

    def observe(self, value: float) -> None:
        self.buckets[self.last if self.lo < value <= self.hi else self.bucket(value)] += 1
        self.total += value

    @property
    def counts(self) -> list[int]:
        """Counts per bucket, +Inf last."""
        counts = list(self.buckets)
        counts[0] += self.first
        return counts

    @property
    def count(self) -> int:
        return self.first + sum(self.buckets)

    def add(self, other: Histogram) -> None:
        """Add another histogram's counts (one with no observation costs no list: a scrape may fold 100,000)."""
        if other.first or any(other.buckets):
            self.first += other.first
            self.buckets = list(map(add, self.buckets, other.buckets))
            self.total += other.total

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs as Prometheus wants them, +Inf last."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class FunctionStats:
    """The counters of one function name; they outlive the broker's Function record (counters never go back)."""

    __slots__ = ("foreground", "background", "fail", "exception", "retries", "wait", "run")

    def __init__(self) -> None:
        #: Jobs created by foreground and by background submits.
        self.foreground = self.background = 0
        #: Jobs failed (WORK_FAIL, or past their retries) and ended by WORK_EXCEPTION; complete is counted by `run`.
        self.fail = self.exception = 0
        self.retries = 0
        self.wait = Histogram(JOB_SECONDS)
        self.run = Histogram(JOB_SECONDS)

    @property
    def submitted(self) -> list[int]:
        """[foreground, background] jobs created."""
        return [self.foreground, self.background]

    @property
    def complete(self) -> int:
        """Jobs ended by WORK_COMPLETE: every finished job's run time is observed once, whatever its result."""
        return self.run.count - self.fail - self.exception

    @property
    def finished(self) -> dict[str, int]:
        """{result: jobs} for RESULTS."""
        return {"complete": self.complete, "fail": self.fail, "exception": self.exception}

    @property
    def finished_total(self) -> int:
        return self.run.count

    def add(self, other: FunctionStats) -> None:
        """Add another name's counters to these (a row that sums many functions)."""
        self.foreground += other.foreground
        self.background += other.background
        self.fail += other.fail
        self.exception += other.exception
        self.retries += other.retries
        self.wait.add(other.wait)
        self.run.add(other.run)


class Failure:
    """One recent failed job, for the dashboard."""

    __slots__ = ("when", "handle", "function", "result", "detail")

    def __init__(self, when: float, handle: bytes, function: bytes, result: str, detail: bytes) -> None:
        self.when = when
        self.handle = handle
        self.function = function
        self.result = result
        self.detail = detail


class Stats:
    """The server's counters. The broker owns one (Broker.stats; None when counting is turned off)."""

    __slots__ = ("clock", "max_functions", "functions", "other", "rejected", "acl_denials", "tls_handshake_failures",
                 "failures")

    def __init__(self, clock: Callable[[], float], max_functions: int = MAX_TRACKED_FUNCTIONS) -> None:
        self.clock = clock
        self.max_functions = max_functions
        self.functions: dict[bytes, FunctionStats] = {}
        self.other = FunctionStats()
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)
        #: {"register"|"invoke"|"cancel": denials}
        self.acl_denials = {"register": 0, "invoke": 0, "cancel": 0}
        self.tls_handshake_failures = 0
        self.failures: deque[Failure] = deque(maxlen=100)

    def of(self, name: bytes) -> FunctionStats:
        """The counters of a function name (the broker keeps them on its Function record: Function.stats)."""
        stats = self.functions.get(name)
        if stats is None:
            if len(self.functions) >= self.max_functions:
                return self.other
            stats = self.functions[name] = FunctionStats()
        return stats

    # ------------------------------------------------------------------ job events
    # The three per-job events (a job created, started, completed) are counted inline where the broker handles
    # them (Broker.submit, _grab, _work_complete), as a call per event would cost as much as the counting: each
    # job carries a `stamp` (when it was queued, then when it started) and the broker adds the wait and the run
    # time to its FunctionStats' histograms, as Histogram.observe does: bucket 0 without a bisect when at most
    # SHORTEST, else the last bucket when the value is within its edges, else Histogram.bucket(). The rarer
    # events go through the methods below.

    def failed(self, job: Any, result: str, detail: bytes = b"") -> None:
        """A worker ended the job with WORK_FAIL ("fail") or WORK_EXCEPTION ("exception")."""
        now = self.clock()
        stats = job.function.stats
        stats.run.observe(now - job.stamp)
        setattr(stats, result, getattr(stats, result) + 1)
        self.failures.append(Failure(now, job.handle, job.function.name, result, detail[:200]))

    def requeued(self, job: Any, failed: bool) -> None:
        """A job lost its worker: back in its queue (its wait starts again), or failed past --job-retries."""
        stats = job.function.stats
        stats.retries += 1
        now = self.clock()
        if failed:
            stats.run.observe(now - job.stamp)  # its last run ended with its worker
            stats.fail += 1
            self.failures.append(Failure(now, job.handle, job.function.name, "fail", b"too many retries"))
        job.stamp = now

    # ------------------------------------------------------------------ refusals (cold path)

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def deny(self, action: str) -> None:
        self.acl_denials[action] += 1
