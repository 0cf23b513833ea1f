"""/healthz and /readyz: liveness, and readiness that ends when a graceful shutdown begins."""

from __future__ import annotations

import time

from geartrain.protocol import constants as C

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
