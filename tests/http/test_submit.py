"""gearmand's HTTP job submission, against the scenarios its protocol plugin documents, with a real client."""

from __future__ import annotations

import concurrent.futures
import socket
import time

import pytest

from geartrain.protocol import constants as C

from conftest import RunningServer, free_port, start_geard_process, wait_for_port
from http_client import metrics, request, value
from wire import Wire


@pytest.fixture
def pool():
    with concurrent.futures.ThreadPoolExecutor(4) as executor:
        yield executor


def wait_for(predicate, what: str, deadline: float = 30.0):
    end = time.monotonic() + deadline
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_foreground_post_waits_and_returns_the_result(http_server, pool):
    with Wire(http_server.host, http_server.port) as worker:
        worker.register(b"reverse")
        pending = pool.submit(request, http_server, "/reverse", "POST", b"Hello world!")
        job = worker.grab()
        handle, name, unique, data = job.args
        assert (name, unique, data) == (b"reverse", b"", b"Hello world!")
        worker.send(C.WORK_DATA, handle, b"!dlrow")
        worker.send(C.WORK_COMPLETE, handle, b" olleH")
        reply = pending.result(30)
    assert reply.status == 200
    assert reply.body == b"!dlrow olleH"
    assert reply.headers["X-Gearman-Job-Handle"] == handle.decode()
    assert reply.headers["X-Gearman-Command"] == "WORK_COMPLETE"


def test_low_priority_background_job_answers_at_once_with_its_handle(http_server):
    reply = request(http_server, "/reverse", "POST", b"Hello world!",
                    {"X-Gearman-Background": "true", "X-Gearman-Priority": "low"})
    assert (reply.status, reply.body) == (200, b"")
    assert reply.headers["X-Gearman-Command"] == "JOB_CREATED"
    handle = reply.headers["X-Gearman-Job-Handle"]
    job = request(http_server, "/api/jobs/" + handle).json()
    assert (job["priority"], job["background"], job["function"], job["size"]) == ("low", True, "reverse", 12)
    high = request(http_server, "/reverse", "PUT", b"x", {"X-Gearman-Background": "TRUE",
                                                          "X-Gearman-Priority": "high"})
    assert request(http_server, "/api/jobs/" + high.headers["X-Gearman-Job-Handle"]).json()["priority"] == "high"
    with Wire(http_server.host, http_server.port) as worker:
        worker.register(b"reverse")
        assert worker.grab().args[3] == b"x"  # high before low


def test_unique_coalesces_and_the_path_names_the_function(http_server):
    headers = {"X-Gearman-Background": "true", "X-Gearman-Unique": "order-17"}
    first = request(http_server, "/billing/charge", "POST", b"a", headers)
    again = request(http_server, "/billing/charge", "POST", b"b", headers)
    assert first.headers["X-Gearman-Job-Handle"] == again.headers["X-Gearman-Job-Handle"]
    job = request(http_server, "/api/unique/order-17").json()
    assert (job["function"], job["unique"]) == ("billing/charge", "order-17")
    encoded = request(http_server, "/with%20space", "POST", b"", {"X-Gearman-Background": "true"})
    assert request(http_server, "/api/jobs/" + encoded.headers["X-Gearman-Job-Handle"]).json()["function"] == \
        "with space"


def test_work_fail_and_work_exception_are_500_with_gearmands_headers(http_server, pool):
    with Wire(http_server.host, http_server.port) as worker:
        worker.register(b"flaky")
        pending = pool.submit(request, http_server, "/flaky", "POST", b"1")
        handle = worker.grab().args[0]
        worker.send(C.WORK_FAIL, handle)
        fail = pending.result(30)
        assert fail.status == 500
        assert fail.headers["X-Gearman-Command"] == "WORK_FAIL"
        assert fail.headers["X-Gearman-Job-Handle"] == handle.decode()
        pending = pool.submit(request, http_server, "/flaky", "POST", b"2")
        handle = worker.grab().args[0]
        worker.send(C.WORK_EXCEPTION, handle, b"Traceback: boom")
        exception = pending.result(30)
        assert exception.status == 500
        assert exception.headers["X-Gearman-Command"] == "WORK_EXCEPTION"
        assert exception.body == b"Traceback: boom"


def test_missing_function_too_large_body_and_full_queue(http_factory):
    server = http_factory(max_packet_size=1024)
    missing = request(server, "/", "POST", b"x")
    assert missing.status == 404 and b"no function name" in missing.body
    too_large = request(server, "/big", "POST", b"x" * 1022)
    assert too_large.status == 413 and too_large.headers["X-Gearman-Error"] == "ARGUMENT_TOO_LARGE"
    way_too_large = request(server, "/big", "POST", b"x" * 5000)
    assert way_too_large.status == 413
    with Wire(server.host, server.port) as admin:
        assert admin.admin("maxqueue full 1").ok
    background = {"X-Gearman-Background": "true"}
    assert request(server, "/full", "POST", b"1", background).status == 200
    full = request(server, "/full", "POST", b"2", background)
    assert full.status == 503 and full.headers["X-Gearman-Error"] == "QUEUE_ERROR"
    bad = request(server, "/bad%01name", "POST", b"", background)
    assert bad.status == 400 and bad.headers["X-Gearman-Error"] == "INVALID_FUNCTION_NAME"
    long_unique = request(server, "/ok", "POST", b"", {**background, "X-Gearman-Unique": "u" * 100})
    assert long_unique.status == 413
    assert value(metrics(server), "geartrain_submits_rejected_total", reason="queue_full") == 1


def test_a_client_that_disconnects_while_waiting_is_a_disconnected_gearman_client(http_server):
    port = http_server.extra["http_port"]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /nobody_runs_this HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nwait")
        wait_for(lambda: request(http_server, "/api/jobs?function=nobody_runs_this").json()["jobs"],
                 "the HTTP submission to be queued")
        assert value(metrics(http_server), "geartrain_connections", kind="http") == 1
    # Queued, and nobody else waits for it: dropped, as for a Gearman client that disconnects.
    wait_for(lambda: not request(http_server, "/api/jobs?function=nobody_runs_this").json()["jobs"],
             "the job of the departed client to be dropped")
    assert value(metrics(http_server), "geartrain_connections", kind="http") == 0
    # A running job finishes; its result goes nowhere and the server carries on.
    with Wire(http_server.host, http_server.port) as worker:
        worker.register(b"runs")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"POST /runs HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nr")
            handle = worker.grab().args[0]
        wait_for(lambda: value(metrics(http_server), "geartrain_connections", kind="http") == 0,
                 "the departed client's peer to go")
        worker.send(C.WORK_COMPLETE, handle, b"nobody reads this")
        wait_for(lambda: request(http_server, "/api/jobs/" + handle.decode()).status == 404, "the job to end")


def test_submit_only_mode_submits_on_every_path_and_method(http_factory, pool):
    server = http_factory(http_submit_only=True)
    reply = request(server, "/metrics", "GET", None, {"X-Gearman-Background": "true"})
    assert reply.status == 200 and reply.headers["X-Gearman-Command"] == "JOB_CREATED"
    with Wire(server.host, server.port) as worker:
        worker.register(b"metrics", b"api/status")
        assert worker.grab().args[1] == b"metrics"
        pending = pool.submit(request, server, "/api/status", "POST", b"q")
        handle = worker.grab().args[0]
        worker.send(C.WORK_COMPLETE, handle, b"answer")
        assert pending.result(30).body == b"answer"


def test_geard_dash_r_http_turns_the_listener_on():
    http_port = free_port()
    running = start_geard_process("-r", "http", "--http-port", str(http_port), "--http-listen", "127.0.0.1")
    try:
        wait_for_port("127.0.0.1", http_port, process=running.process)
        running.extra["http_port"] = http_port
        reply = request(running, "/reverse", "POST", b"abc", {"X-Gearman-Background": "true"})
        assert reply.status == 200 and reply.headers["X-Gearman-Job-Handle"].startswith("H:")
        assert value(metrics(running), "gearman_jobs", function="reverse") == 1
    finally:
        running.stop()


def test_a_job_the_durable_store_fails_to_commit_is_refused_with_500(tmp_path):
    import sqlite3

    from geartrain.server import Server, ServerConfig
    from geartrain.server.store.sqlite import SQLiteStore

    class FailingStore(SQLiteStore):
        def write(self, adds, removes):
            raise sqlite3.OperationalError("database or disk is full")

    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], http_port=0, http_listen="127.0.0.1",
                                 queue_type="sqlite", sqlite_db=str(tmp_path / "q.db")))
    server.store = server.broker.store = FailingStore(tmp_path / "q.db")
    server.start_in_thread()
    try:
        running = RunningServer("geartrain", "127.0.0.1", server.port, server=server)
        running.extra["http_port"] = server.http.port
        reply = request(running, "/stored", "POST", b"x", {"X-Gearman-Background": "true"})
        assert reply.status == 500 and reply.headers["X-Gearman-Error"] == "STORE_FAILED"
        assert b"not stored" in reply.body
    finally:
        server.stop()


def test_geard_command_line_spellings_of_the_http_listener():
    from geartrain.server.cli import build_parser, config_from_args

    def config(*argv: str):
        return config_from_args(build_parser().parse_args(["--queue-type", "memory", *argv]))

    assert config().http_port is None  # off by default
    assert config("-r", "http").http_port == 8080  # gearmand's default port for its HTTP plugin
    assert config("-r", "http", "--http-port", "9000").http_port == 9000
    plain = config("--http-port", "0", "--http-listen", "::1", "--http-submit-only", "--metrics-max-functions", "7",
                   "--no-stats", "--http-token-all")
    assert (plain.http_port, plain.http_listen, plain.http_submit_only, plain.metrics_max_functions, plain.stats,
            plain.http_token_all) == (0, "::1", True, 7, False, True)


def test_background_submissions_go_through_the_durable_store(http_factory, tmp_path):
    server = http_factory(queue_type="sqlite", sqlite_db=str(tmp_path / "q.sqlite3"))
    for i in range(3):
        reply = request(server, "/durable", "POST", b"%d" % i, {"X-Gearman-Background": "true"})
        assert reply.status == 200
        samples = metrics(server)
        assert value(samples, "geartrain_store_pending") == 0
        assert value(samples, "geartrain_store_jobs") == i + 1
