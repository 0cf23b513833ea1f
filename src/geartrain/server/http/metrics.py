"""GET /metrics: a prometheus_client Collector that reads the broker's state and counters at scrape time.

The community exporter's names (gearman_up, gearman_version_info, gearman_jobs, gearman_jobs_running,
gearman_jobs_waiting, gearman_workers) keep their labels and meaning, so its Grafana dashboard (11423) and alerts
work unchanged; everything else is named geartrain_*. Per-function series are capped: the busiest functions get
their own label value, the rest are summed under function="__other__".
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from operator import add
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ... import __version__
from ..broker import Function
from ..stats import RESULTS, FunctionStats, Histogram
from .views import PRIORITY_NAMES, connection_kind, label, oldest_waiting

#: The label value of the functions past the series cap.
OTHER_LABEL = "__other__"


class FunctionRow:
    """One function's gauges and counters, or the sum of several (the __other__ row)."""

    __slots__ = ("waiting", "running", "workers", "oldest", "stats")

    def __init__(self) -> None:
        self.waiting = [0, 0, 0]
        self.running = 0
        self.workers = 0
        self.oldest = 0.0
        self.stats: FunctionStats | None = None


class BrokerCollector(Collector):
    """Everything geard knows, as Prometheus families, read from `server` when scraped."""

    def __init__(self, server: Any, max_functions: int = 1000) -> None:
        self.server = server
        self.max_functions = max_functions

    def rows(self) -> dict[str, FunctionRow]:
        """Per-function rows, at most max_functions of them plus __other__ (the sum of the rest)."""
        broker = self.server.broker
        stats = broker.stats
        functions = broker.functions
        counters = stats.functions if stats is not None else {}
        names = functions.keys() | counters.keys()
        if len(names) > self.max_functions:
            # The busiest keep their own series: ranked by jobs ever submitted, then jobs and workers now.
            def activity(name: bytes) -> tuple[int, int, bytes]:
                fstats, function = counters.get(name), functions.get(name)
                submitted = fstats.submitted[0] + fstats.submitted[1] if fstats is not None else 0
                live = function.jobs + len(function.workers) if function is not None else 0
                return (-submitted, -live, name)

            kept = heapq.nsmallest(self.max_functions, names, key=activity)
            rest = names - set(kept)
        else:
            kept, rest = sorted(names), set()
        now = broker.clock()
        out = {label(name): self._row(functions.get(name), counters.get(name), now) for name in kept}
        folded = stats.other if stats is not None and stats.other.submitted != [0, 0] else None
        if rest or folded is not None:
            out[OTHER_LABEL] = self._sum([functions[n] for n in rest if n in functions],
                                         [counters[n] for n in rest if n in counters] + ([folded] if folded else []),
                                         now, stats is not None)
        return out

    def _row(self, function: Function | None, fstats: FunctionStats | None, now: float) -> FunctionRow:
        row = FunctionRow()
        if function is not None:
            row.waiting = [function.waiting(p) for p in range(3)]  # spilled jobs too
            row.running = function.running
            row.workers = len(function.workers)
            if fstats is not None:
                row.oldest = oldest_waiting(function, now)
        row.stats = fstats
        return row

    @staticmethod
    def _sum(functions: list[Function], counters: list[FunctionStats], now: float, counting: bool) -> FunctionRow:
        """One row summing many functions (a scrape may fold 100,000 of them: one pass, C-level additions)."""
        row = FunctionRow()
        waiting, running, workers, oldest = [0, 0, 0], 0, 0, 0.0
        for function in functions:
            waiting = list(map(add, waiting, function.counts if function.spill is None
                               else [function.waiting(p) for p in range(3)]))
            running += function.running
            workers += len(function.workers)
            if counting and function.queued:
                oldest = max(oldest, oldest_waiting(function, now))
        row.waiting, row.running, row.workers, row.oldest = waiting, running, workers, oldest
        if counting:
            total = row.stats = FunctionStats()
            for fstats in counters:
                total.add(fstats)
        return row

    def collect(self) -> Iterator[Metric]:
        server = self.server
        broker = server.broker
        stats = broker.stats
        yield GaugeMetricFamily("gearman_up", "Whether the Gearman server answers (always 1 when scraped)", 1)
        info = GaugeMetricFamily("gearman_version_info", "The server's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        ready = GaugeMetricFamily("geartrain_ready", "1 once every listener is up and the durable queue replayed",
                                  1 if getattr(server, "ready", False) else 0)
        yield ready
        rows = self.rows()
        jobs = GaugeMetricFamily("gearman_jobs", "Jobs of the function, queued or running", labels=["function"])
        running = GaugeMetricFamily("gearman_jobs_running", "Jobs of the function running on a worker",
                                    labels=["function"])
        waiting = GaugeMetricFamily("gearman_jobs_waiting", "Jobs of the function waiting for a worker",
                                    labels=["function"])
        workers = GaugeMetricFamily("gearman_workers", "Workers that registered the function", labels=["function"])
        by_priority = GaugeMetricFamily("geartrain_jobs_waiting", "Jobs waiting for a worker, by priority",
                                        labels=["function", "priority"])
        for name, row in rows.items():
            queued = sum(row.waiting)
            jobs.add_metric([name], queued + row.running)
            running.add_metric([name], row.running)
            waiting.add_metric([name], queued)
            workers.add_metric([name], row.workers)
            for priority, count in zip(PRIORITY_NAMES, row.waiting, strict=True):
                by_priority.add_metric([name, priority], count)
        yield from (jobs, running, waiting, workers, by_priority)
        yield from self._connections()
        if stats is not None:
            yield from self._counters(stats, rows)
        yield from self._store()

    def _connections(self) -> Iterator[Metric]:
        broker = self.server.broker
        counts = {"client": 0, "worker": 0, "admin": 0, "http": 0}
        tls = 0
        for peer in list(broker.peers.values()):
            counts[connection_kind(peer)] += 1
            if getattr(peer.conn, "tls", None) is not None:
                tls += 1
        family = GaugeMetricFamily("geartrain_connections", "Open connections by kind (what they last did: "
                                   "registered functions, sent admin commands, submitted over HTTP, else client)",
                                   labels=["kind"])
        for kind, count in counts.items():
            family.add_metric([kind], count)
        yield family
        yield GaugeMetricFamily("geartrain_connections_tls", "Open Gearman connections that speak TLS", tls)

    def _counters(self, stats: Any, rows: dict[str, FunctionRow]) -> Iterator[Metric]:
        oldest = GaugeMetricFamily("geartrain_oldest_waiting_seconds",
                                   "Age of the oldest job waiting for a worker", labels=["function"])
        submitted = CounterMetricFamily("geartrain_jobs_submitted", "Jobs created by submits",
                                        labels=["function", "mode"])
        finished = CounterMetricFamily("geartrain_jobs_finished", "Jobs ended by their worker, by result",
                                       labels=["function", "result"])
        retries = CounterMetricFamily("geartrain_job_retries", "Jobs put back in their queue after losing "
                                      "their worker (disconnect or CAN_DO_TIMEOUT)", labels=["function"])
        wait = HistogramMetricFamily("geartrain_job_wait_seconds", "Time from queued to taken by a worker",
                                     labels=["function"])
        run = HistogramMetricFamily("geartrain_job_run_seconds", "Time from taken by a worker to its result",
                                    labels=["function"])
        for name, row in rows.items():
            oldest.add_metric([name], row.oldest)
            fstats = row.stats
            if fstats is None:
                continue
            submitted.add_metric([name, "foreground"], fstats.submitted[0])
            submitted.add_metric([name, "background"], fstats.submitted[1])
            for result in RESULTS:
                finished.add_metric([name, result], fstats.finished[result])
            retries.add_metric([name], fstats.retries)
            _histogram(wait, name, fstats.wait)
            _histogram(run, name, fstats.run)
        yield from (oldest, submitted, finished, retries, wait, run)
        rejected = CounterMetricFamily("geartrain_submits_rejected", "Submits refused, by reason",
                                       labels=["reason"])
        for reason, count in stats.rejected.items():
            rejected.add_metric([reason], count)
        yield rejected
        denials = CounterMetricFamily("geartrain_acl_denials", "Requests the ACL refused, by action",
                                      labels=["action"])
        for action, count in stats.acl_denials.items():
            denials.add_metric([action], count)
        yield denials
        yield CounterMetricFamily("geartrain_tls_handshake_failures", "TLS handshakes that failed or timed out",
                                  stats.tls_handshake_failures)

    def _store(self) -> Iterator[Metric]:
        store = self.server.store
        if store is None or not hasattr(store, "commit_seconds"):
            return
        yield GaugeMetricFamily("geartrain_store_jobs", "Background jobs held in the durable store", store.stored)
        yield GaugeMetricFamily("geartrain_store_pending", "Store changes not yet committed",
                                store.pending_changes)
        yield GaugeMetricFamily("geartrain_store_replayed_jobs", "Jobs replayed from the store at start",
                                store.replayed)
        yield CounterMetricFamily("geartrain_store_commits", "Batches committed to the store", store.commits)
        commit = HistogramMetricFamily("geartrain_store_commit_seconds", "Time one group commit took")
        _histogram(commit, None, store.commit_seconds)
        yield commit


def _histogram(family: HistogramMetricFamily, name: str | None, histogram: Histogram) -> None:
    family.add_metric([name] if name is not None else [], histogram.cumulative(), sum_value=histogram.total)


class Snapshot(Collector):
    """Families read on the loop, handed to a thread to be formatted."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


class Exposition:
    """/metrics in two steps: read the broker on the loop (collect), format the text off it (render), so that a
    scrape of a thousand functions' series does not hold the loop while it is formatted."""

    def __init__(self, server: Any, max_functions: int) -> None:
        self.broker_collector = BrokerCollector(server, max_functions)
        self.process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.process)
        PlatformCollector(registry=self.process)

    def collect(self) -> list[Metric]:
        """On the loop thread: the broker's families, as values."""
        return list(self.broker_collector.collect())

    def render(self, families: list[Metric]) -> bytes:
        """On any thread: the text format of those families and the process metrics."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Snapshot(families))
        return generate_latest(registry) + generate_latest(self.process)
