"""GET /metrics: a prometheus_client Collector that reads the broker's state and counters at scrape time.

The community exporter's names (gearman_up, gearman_version_info, gearman_jobs, gearman_jobs_running,
gearman_jobs_waiting, gearman_workers) keep their labels and meaning, so its Grafana dashboard (11423) and alerts
work unchanged; everything else is named geartrain_*. Per-function series are capped: the busiest functions get
their own label value, the rest are summed under function="__other__".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ... import __version__
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

    def add(self, other: FunctionRow) -> None:
        for i in range(3):
            self.waiting[i] += other.waiting[i]
        self.running += other.running
        self.workers += other.workers
        self.oldest = max(self.oldest, other.oldest)
        if other.stats is not None:
            if self.stats is None:
                self.stats = FunctionStats()
            self.stats.add(other.stats)


class BrokerCollector(Collector):
    """Everything geard knows, as Prometheus families, read from `server` when scraped."""

    def __init__(self, server: Any, max_functions: int = 1000) -> None:
        self.server = server
        self.max_functions = max_functions

    def rows(self) -> dict[str, FunctionRow]:
        """Per-function rows, at most max_functions of them plus __other__."""
        broker = self.server.broker
        stats = broker.stats
        now = broker.clock()
        rows: dict[bytes, FunctionRow] = {}
        for name, function in broker.functions.items():
            row = rows[name] = FunctionRow()
            row.waiting = list(function.counts)
            row.running = function.running
            row.workers = len(function.workers)
            if stats is not None:
                row.oldest = oldest_waiting(function, now)
        if stats is not None:
            for name, fstats in stats.functions.items():
                row = rows.get(name)
                if row is None:
                    row = rows[name] = FunctionRow()
                row.stats = fstats
        out: dict[str, FunctionRow] = {}
        if len(rows) <= self.max_functions:
            kept, rest = list(rows.items()), []
        else:
            # The busiest keep their own series: ranked by jobs ever submitted, then jobs and workers now.
            def activity(item: tuple[bytes, FunctionRow]) -> tuple[int, int, bytes]:
                name, row = item
                submitted = sum(row.stats.submitted) if row.stats is not None else 0
                return (-submitted, -(sum(row.waiting) + row.running + row.workers), name)

            ranked = sorted(rows.items(), key=activity)
            kept, rest = ranked[:self.max_functions], ranked[self.max_functions:]
        for name, row in kept:
            out[label(name)] = row
        if rest or (stats is not None and stats.other.submitted != [0, 0]):
            other = FunctionRow()
            for _, row in rest:
                other.add(row)
            if stats is not None:
                folded = FunctionRow()
                folded.stats = stats.other
                other.add(folded)
            out[OTHER_LABEL] = other
        return out

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
            counts[connection_kind(broker, peer)] += 1
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


def metrics_registry(server: Any, max_functions: int) -> CollectorRegistry:
    """A registry of its own (never the global one): the broker collector plus process and platform metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(server, max_functions))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
