"""GET /metrics after a scripted scenario, parsed with prometheus_client's own parser; the series cap."""

from __future__ import annotations

import time

from geartrain import __version__
from geartrain.protocol import constants as C

from http_client import metrics, request, value
from wire import Wire


def wait_for(predicate, what: str, deadline: float = 30.0):
    end = time.monotonic() + deadline
    while True:
        result = predicate()
        if result:
            return result
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_every_metric_after_a_scripted_scenario(http_factory, tmp_path):
    server = http_factory(queue_type="sqlite", sqlite_db=str(tmp_path / "queue.sqlite3"))
    host, port = server.host, server.port
    with Wire(host, port) as client, Wire(host, port) as worker, Wire(host, port) as flaky_worker, \
            Wire(host, port) as admin, Wire(host, port) as leaving:
        # Jobs at three priorities; the worker takes the high one, which stays running.
        client.submit(b"scen", b"h", ptype=C.SUBMIT_JOB_HIGH_BG)
        client.submit(b"scen", b"n1", ptype=C.SUBMIT_JOB_BG)
        client.submit(b"scen", b"n2", ptype=C.SUBMIT_JOB_BG)
        client.submit(b"scen", b"l", ptype=C.SUBMIT_JOB_LOW_BG)
        worker.register(b"scen")
        assert worker.grab().args[3] == b"h"
        # One foreground job fails.
        handle = client.submit(b"flaky", b"boom")
        flaky_worker.register(b"flaky")
        assert flaky_worker.grab().args[0] == handle
        flaky_worker.send(C.WORK_FAIL, handle)
        client.expect(C.WORK_FAIL)
        # One submit is refused by maxqueue.
        assert admin.admin("maxqueue capped 1").ok
        client.submit(b"capped", b"1", ptype=C.SUBMIT_JOB_BG)
        client.send(C.SUBMIT_JOB_BG, b"capped", b"", b"2")
        error = client.expect(C.ERROR)
        assert error.args[0] == b"QUEUE_ERROR"
        # One job loses its worker and goes back to its queue (a retry).
        client.submit(b"retry", b"r", ptype=C.SUBMIT_JOB_BG)
        leaving.register(b"retry")
        leaving.grab()
    # Every connection closed: the scen job that ran is back in its queue, retry's too.
    with Wire(host, port) as client, Wire(host, port) as worker:
        worker.register(b"scen")
        job = worker.grab()
        assert job.args[1] == b"scen"

        def settled():
            samples = metrics(server)
            ok = value(samples, "geartrain_store_pending") == 0 and value(samples, "gearman_jobs_running",
                                                                          function="scen") == 1
            return samples if ok else None

        samples = wait_for(settled, "the store to commit and the scenario to settle")

    assert value(samples, "gearman_up") == 1
    assert value(samples, "gearman_version_info", version=__version__) == 1
    # The community exporter's four per-function gauges, with its meaning (jobs = queued + running).
    assert value(samples, "gearman_jobs", function="scen") == 4
    assert value(samples, "gearman_jobs_running", function="scen") == 1
    assert value(samples, "gearman_jobs_waiting", function="scen") == 3
    assert value(samples, "gearman_workers", function="scen") == 1
    assert value(samples, "gearman_jobs", function="capped") == 1
    assert value(samples, "gearman_workers", function="retry") == 0
    # By priority: the first worker took "h" (high); the second took it again after the first left.
    assert value(samples, "geartrain_jobs_waiting", function="scen", priority="high") == 0
    assert value(samples, "geartrain_jobs_waiting", function="scen", priority="normal") == 2
    assert value(samples, "geartrain_jobs_waiting", function="scen", priority="low") == 1
    assert 0 < value(samples, "geartrain_oldest_waiting_seconds", function="scen") < 600
    assert value(samples, "geartrain_oldest_waiting_seconds", function="flaky") == 0
    # Counters.
    assert value(samples, "geartrain_jobs_submitted_total", function="scen", mode="background") == 4
    assert value(samples, "geartrain_jobs_submitted_total", function="scen", mode="foreground") == 0
    assert value(samples, "geartrain_jobs_submitted_total", function="flaky", mode="foreground") == 1
    assert value(samples, "geartrain_jobs_finished_total", function="flaky", result="fail") == 1
    assert value(samples, "geartrain_jobs_finished_total", function="flaky", result="complete") == 0
    assert value(samples, "geartrain_job_retries_total", function="scen") == 1
    assert value(samples, "geartrain_job_retries_total", function="retry") == 1
    assert value(samples, "geartrain_submits_rejected_total", reason="queue_full") == 1
    assert value(samples, "geartrain_submits_rejected_total", reason="acl") == 0
    # Histograms: scen was taken twice (the wait restarts on a retry), flaky ran once.
    assert value(samples, "geartrain_job_wait_seconds_count", function="scen") == 2
    assert value(samples, "geartrain_job_wait_seconds_bucket", function="scen", le="+Inf") == 2
    assert value(samples, "geartrain_job_run_seconds_count", function="flaky") == 1
    assert value(samples, "geartrain_job_run_seconds_count", function="scen") == 0
    # Connections by kind (the scrape's own HTTP request is not a broker peer).
    assert value(samples, "geartrain_connections", kind="worker") == 1
    assert value(samples, "geartrain_connections", kind="client") == 1
    assert value(samples, "geartrain_connections", kind="admin") == 0
    assert value(samples, "geartrain_connections_tls") == 0
    assert value(samples, "geartrain_tls_handshake_failures_total") == 0
    assert value(samples, "geartrain_acl_denials_total", action="invoke") == 0
    # The durable store: 4 scen + 1 capped + 1 retry background jobs are stored.
    assert value(samples, "geartrain_store_jobs") == 6
    assert value(samples, "geartrain_store_replayed_jobs") == 0
    assert value(samples, "geartrain_store_commits_total") >= 1
    assert value(samples, "geartrain_store_commit_seconds_count") >= 1
    # Process metrics.
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_resident_memory_bytes") > 0


def test_admin_connections_and_replayed_jobs_are_counted(http_factory, tmp_path):
    db = str(tmp_path / "queue.sqlite3")
    first = http_factory(queue_type="sqlite", sqlite_db=db)
    with Wire(first.host, first.port) as client:
        for i in range(3):
            client.submit(b"kept", b"%d" % i, ptype=C.SUBMIT_JOB_BG)
    first.stop()
    second = http_factory(queue_type="sqlite", sqlite_db=db)
    with Wire(second.host, second.port) as admin:
        assert admin.admin("status").ok
        samples = metrics(second)
        assert value(samples, "geartrain_connections", kind="admin") == 1
    assert value(samples, "geartrain_store_replayed_jobs") == 3
    assert value(samples, "geartrain_store_jobs") == 3
    assert value(samples, "gearman_jobs", function="kept") == 3


def test_series_cap_holds_with_5000_functions(http_factory):
    server = http_factory()
    names = [b"fn%05d" % i for i in range(5000)]
    with Wire(server.host, server.port) as client:
        for name in names:
            client.send(C.SUBMIT_JOB_BG, name, b"", b"x")
        # Ten busy functions: more jobs each, so they rank first.
        for i in range(10):
            for _ in range(3):
                client.send(C.SUBMIT_JOB_BG, b"busy%d" % i, b"", b"x")
        for _ in range(5000 + 30):
            client.expect(C.JOB_CREATED)
    samples = metrics(server)
    jobs = samples["gearman_jobs"]
    labels = {dict(key)["function"] for key in jobs}
    assert len(labels) == 1001, len(labels)
    assert "__other__" in labels
    assert {f"busy{i}" for i in range(10)} <= labels
    assert sum(jobs.values()) == 5030
    assert value(samples, "gearman_jobs", function="__other__") == 5010 - 1000
    submitted = samples["geartrain_jobs_submitted_total"]
    assert len({dict(key)["function"] for key in submitted}) == 1001
    assert sum(submitted.values()) == 5030
    assert len(samples["geartrain_job_wait_seconds_count"]) == 1001
    # The cap is a setting.
    small = http_factory(metrics_max_functions=2)
    with Wire(small.host, small.port) as client:
        for name in (b"a", b"b", b"c"):
            client.submit(name, b"x", ptype=C.SUBMIT_JOB_BG)
    assert len(metrics(small)["gearman_jobs"]) == 3


def test_metrics_without_counters_keep_the_queue_gauges(http_factory):
    server = http_factory(stats=False)
    with Wire(server.host, server.port) as client:
        client.submit(b"plain", b"x", ptype=C.SUBMIT_JOB_BG)
    samples = metrics(server)
    assert value(samples, "gearman_jobs", function="plain") == 1
    assert "geartrain_jobs_submitted_total" not in samples
    assert request(server, "/api/status").json()["server"]["counting"] is False
