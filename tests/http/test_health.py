"""/healthz and /readyz: liveness, and readiness that ends when a graceful shutdown begins."""

from __future__ import annotations

import subprocess
import sys
import time

from geartrain.protocol import constants as C

from conftest import RunningServer, free_port, stop_process, wait_for_port
from http_client import metrics, request, value
from wire import Wire


def test_healthz_and_readyz_answer_once_the_server_listens(http_server):
    assert request(http_server, "/healthz").body == b"ok\n"
    ready = request(http_server, "/readyz")
    assert (ready.status, ready.body) == (200, b"ready\n")
    assert value(metrics(http_server), "geartrain_ready") == 1


def test_readyz_is_503_during_a_graceful_shutdown_while_healthz_stays_200(http_server):
    with Wire(http_server.host, http_server.port) as client, Wire(http_server.host, http_server.port) as worker:
        client.submit(b"slow", b"x", ptype=C.SUBMIT_JOB_BG)
        worker.register(b"slow")
        handle = worker.grab().args[0]
        with Wire(http_server.host, http_server.port) as admin:
            assert admin.admin("shutdown graceful").ok
        deadline = time.monotonic() + 30
        while request(http_server, "/readyz").status != 503:
            assert time.monotonic() < deadline, "readyz never turned 503 during the graceful shutdown"
            time.sleep(0.02)
        reply = request(http_server, "/readyz")
        assert reply.status == 503 and b"stopping" in reply.body
        assert request(http_server, "/healthz").status == 200
        assert value(metrics(http_server), "geartrain_ready") == 0
        worker.send(C.WORK_COMPLETE, handle, b"done")


def test_readyz_is_503_while_the_durable_queue_replays(http_factory, tmp_path):
    db = str(tmp_path / "queue.sqlite3")
    first = http_factory(queue_type="sqlite", sqlite_db=db)
    jobs = 150_000
    with Wire(first.host, first.port) as client:
        for start in range(0, jobs, 5000):
            for i in range(start, start + 5000):
                client.send(C.SUBMIT_JOB_BG, b"replayed", b"", b"%d" % i)
            for _ in range(5000):
                client.expect(C.JOB_CREATED)
    first.stop()
    http_port, gearman_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "geartrain.server.cli", "-d", "-L", "127.0.0.1", "-p", str(gearman_port),
         "--queue-type", "sqlite", "--sqlite-db", db, "--http-port", str(http_port), "--http-listen", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # The HTTP port opens before the replay, the Gearman port after it: meanwhile /readyz says 503.
        wait_for_port("127.0.0.1", http_port, process=process)
        running = RunningServer("geard", "127.0.0.1", gearman_port, extra={"http_port": http_port})
        first_answer = request(running, "/readyz")
        assert first_answer.status == 503, "the replay of 150,000 jobs ended before the first /readyz"
        assert request(running, "/healthz").status == 200
        wait_for_port("127.0.0.1", gearman_port, deadline=120, process=process)
        deadline = time.monotonic() + 60
        while request(running, "/readyz").status != 200:
            assert time.monotonic() < deadline, "readyz stayed 503 after the Gearman port opened"
            time.sleep(0.02)
        assert value(metrics(running), "geartrain_store_replayed_jobs") == jobs
    finally:
        stop_process(process)
