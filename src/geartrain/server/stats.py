"""Counters the broker, the transport and the store keep where events happen; metrics and the dashboard read them.

Everything here is plain ints, lists and dicts updated in O(1) on the loop thread: no locks, no label lookups,
no formatting. The readers (geartrain.server.http) turn them into Prometheus families and JSON at scrape time.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import Any

#: Upper bounds (seconds) of the queue-wait and run-time histograms; the last bucket is +Inf.
JOB_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
#: Most jobs wait and run less than this (JOB_SECONDS' first bound): their bucket is found without a bisect.
SHORTEST = JOB_SECONDS[0]
#: Upper bounds (seconds) of the durable store's commit latency histogram.
COMMIT_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
#: The results a job can end with (finished counters); "fail" includes jobs failed after too many retries.
RESULTS = ("complete", "fail", "exception")
#: Why a submit was refused: a full maxqueue, the ACL, a limit (unique, name, queued bytes), a bad name.
REJECT_REASONS = ("queue_full", "acl", "limit", "invalid")
#: Function names tracked one by one; further names are counted together (Stats.other).
MAX_TRACKED_FUNCTIONS = 100_000


class Histogram:
    """Bucket counts and a sum: observe() is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs as Prometheus wants them, +Inf last."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class FunctionStats:
    """The counters of one function name; they outlive the broker's Function record (counters never go back)."""

    __slots__ = ("submitted", "finished", "retries", "wait", "run")

    def __init__(self) -> None:
        #: [foreground, background] jobs created.
        self.submitted = [0, 0]
        #: {result: jobs} for RESULTS.
        self.finished = dict.fromkeys(RESULTS, 0)
        self.retries = 0
        self.wait = Histogram(JOB_SECONDS)
        self.run = Histogram(JOB_SECONDS)

    @property
    def finished_total(self) -> int:
        return sum(self.finished.values())


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
                 "admin_peers", "failures")

    def __init__(self, clock: Callable[[], float], max_functions: int = MAX_TRACKED_FUNCTIONS) -> None:
        self.clock = clock
        self.max_functions = max_functions
        self.functions: dict[bytes, FunctionStats] = {}
        self.other = FunctionStats()
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)
        #: {"register"|"invoke"|"cancel": denials}
        self.acl_denials = {"register": 0, "invoke": 0, "cancel": 0}
        self.tls_handshake_failures = 0
        #: Connections that sent an admin command (their kind is "admin" unless they also register).
        self.admin_peers: weakref.WeakSet[Any] = weakref.WeakSet()
        self.failures: deque[Failure] = deque(maxlen=100)

    def of(self, name: bytes) -> FunctionStats:
        """The counters of a function name (the broker keeps them on its Function record: Function.stats)."""
        stats = self.functions.get(name)
        if stats is None:
            if len(self.functions) >= self.max_functions:
                return self.other
            stats = self.functions[name] = FunctionStats()
        return stats

    # ------------------------------------------------------------------ job events (hot path)

    def submitted(self, job: Any) -> None:
        """A new job was created (not a submit that joined an existing one)."""
        job.stamp = self.clock()
        job.function.stats.submitted[job.background] += 1

    # started() and finished() inline Histogram.observe(): they run once per job, and a call costs as much.
    def started(self, job: Any) -> None:
        """A worker took the job: its queue wait ends, its run begins."""
        now = self.clock()
        wait = now - job.stamp
        job.stamp = now
        histogram = job.function.stats.wait
        histogram.counts[0 if wait <= SHORTEST else bisect_left(JOB_SECONDS, wait)] += 1
        histogram.total += wait

    def finished(self, job: Any, result: str, detail: bytes = b"") -> None:
        """A worker ended the job with WORK_COMPLETE, WORK_FAIL or WORK_EXCEPTION."""
        now = self.clock()
        run = now - job.stamp
        stats = job.function.stats
        histogram = stats.run
        histogram.counts[0 if run <= SHORTEST else bisect_left(JOB_SECONDS, run)] += 1
        histogram.total += run
        stats.finished[result] += 1
        if result != "complete":
            self.failures.append(Failure(now, job.handle, job.function.name, result, detail[:200]))

    def requeued(self, job: Any, failed: bool) -> None:
        """A job lost its worker: back in its queue (its wait starts again), or failed past --job-retries."""
        stats = job.function.stats
        stats.retries += 1
        job.stamp = self.clock()
        if failed:
            stats.finished["fail"] += 1
            self.failures.append(Failure(job.stamp, job.handle, job.function.name, "fail", b"too many retries"))

    # ------------------------------------------------------------------ refusals (cold path)

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def deny(self, action: str) -> None:
        self.acl_denials[action] += 1
