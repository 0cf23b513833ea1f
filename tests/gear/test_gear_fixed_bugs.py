"""The client-side bugs of the original gear (shared/reference/gear-api.md), each shown to be gone."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest's importlib mode does not put this directory on sys.path
pytest.register_assert_rewrite("gear_support")
from gear_support import WAIT, FakeServer, pool, reverse, wait_until  # noqa: E402, F401

import gear  # noqa: E402
from gear import constants  # noqa: E402
from geartrain.protocol import AdminLine  # noqa: E402


def test_client_and_worker_sockets_use_tcp_nodelay(any_server, pool):  # noqa: F811
    # Without it the original managed about 23 jobs/s in lock-step: each small write waited for a delayed ACK.
    client = pool.client(any_server)
    worker = pool.worker(any_server, "f")
    for obj in (client, worker):
        sock = obj.active_connections[0].conn
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    conn = gear.Connection(any_server.host, any_server.port)
    conn.connect()
    try:
        assert conn.conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        conn.disconnect()


def test_echo_returns_the_data_and_times_out_when_unanswered(any_server, pool):  # noqa: F811
    client = pool.client(any_server)
    assert client.getConnection().echo(b"hello", timeout=WAIT) == b"hello"

    def silent(peer):
        peer.expect_packet(constants.ECHO_REQ)
        time.sleep(1.0)

    server = FakeServer(silent)
    quiet = gear.Client()
    try:
        quiet.addServer(server.host, server.port)
        quiet.waitForServer(WAIT)
        with pytest.raises(gear.TimeoutError):
            quiet.getConnection().echo(b"anyone?", timeout=0.2)
        assert quiet.getConnection().echo_conditions == {}
    finally:
        quiet.shutdown()
        server.close()


def test_job_with_str_arguments_as_in_the_seed_example(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "reverse")
    pool.serve(worker, reverse)
    client = pool.client(any_server)
    job = gear.Job("reverse", "test string")
    client.submitJob(job)
    assert job.waitForCompletion(WAIT) and job.data == [b"gnirts tset"]
    unicode_job = gear.Job("reverse", "\u00e9t\u00e9")
    client.submitJob(unicode_job)
    assert unicode_job.waitForCompletion(WAIT)
    assert unicode_job.data == ["\u00e9t\u00e9".encode()[::-1]]


def test_register_function_with_int_timeout_sends_can_do_timeout():
    packets = []

    def script(peer):
        peer.expect_packet(constants.SET_CLIENT_ID)
        packets.append(peer.expect_packet())

    server = FakeServer(script)
    worker = gear.Worker("timeouts")
    try:
        worker.addServer(server.host, server.port)
        worker.waitForServer(WAIT)
        worker.registerFunction("slow", timeout=5)  # the original raised TypeError (bytes + int)
        server.thread.join(WAIT)
    finally:
        worker.shutdown()
        server.close()
    assert server.error is None
    assert packets[0].ptype == constants.CAN_DO_TIMEOUT
    assert packets[0].args == (b"slow", b"5000")  # seconds in gear's API, milliseconds on the wire


def test_worker_id_keyword_works():
    worker = gear.Worker(worker_id="legacy")  # the original always raised
    try:
        assert worker.client_id == b"legacy"
    finally:
        worker.shutdown()


def test_timed_out_admin_request_does_not_shift_later_answers():
    release = threading.Event()

    def script(peer):
        assert peer.expect_line() == b"status"
        release.wait(WAIT)  # the client gives up on "status" meanwhile
        assert peer.expect_line() == b"version"
        peer.send(b"late-function\t1\t0\t0\n.\n")  # the answer to "status", late
        peer.send(b"OK 9.9.9\n")  # the answer to "version"
        assert peer.expect_line() == b"workers"
        peer.send(b"1 127.0.0.1 - :\n.\n")

    server = FakeServer(script)
    client = gear.Client()
    try:
        client.addServer(server.host, server.port)
        client.waitForServer(WAIT)
        conn = client.getConnection()
        status = gear.StatusAdminRequest()
        with pytest.raises(gear.TimeoutError):
            conn.sendAdminRequest(status, timeout=0.2)
        release.set()
        version = gear.VersionAdminRequest()
        conn.sendAdminRequest(version, timeout=WAIT)
        assert version.response == b"OK 9.9.9\n"
        workers = gear.WorkersAdminRequest()
        conn.sendAdminRequest(workers, timeout=WAIT)
        assert workers.response == b"1 127.0.0.1 - :\n.\n"
        assert conn.admin_requests == []
    finally:
        client.shutdown()
        server.close()
    assert server.error is None


def test_timed_out_admin_request_on_a_real_server_leaves_the_connection_usable(any_server, pool):  # noqa: F811
    client = pool.client(any_server)
    conn = client.getConnection()
    timed_out = 0
    for _ in range(20):  # most give up before the (fast) answer arrives; whichever did, nothing shifts
        try:
            conn.sendAdminRequest(gear.StatusAdminRequest(), timeout=0)
        except gear.TimeoutError:
            timed_out += 1
    assert timed_out > 0
    version = gear.VersionAdminRequest()
    conn.sendAdminRequest(version, timeout=WAIT)
    assert version.response.startswith(b"OK")
    status = gear.StatusAdminRequest()
    conn.sendAdminRequest(status, timeout=WAIT)
    assert status.response.endswith(b".\n")


def test_submit_timeout_drops_the_connection_instead_of_misattributing_the_late_answer():
    def script(peer):
        peer.expect_packet(constants.SUBMIT_JOB)
        time.sleep(0.5)

    server = FakeServer(script)
    client = gear.Client()
    try:
        client.addServer(server.host, server.port)
        client.waitForServer(WAIT)
        job = gear.Job("f", b"")
        with pytest.raises((gear.GearmanError, gear.NoConnectedServersError)):  # no server left: as gear
            client.submitJob(job, timeout=0.2)
        assert job.handle is None
        wait_until(lambda: not client.active_connections)
    finally:
        client.shutdown()
        server.close()


def test_send_timeout_bounds_a_send_to_a_server_that_stopped_reading():
    stop = threading.Event()

    def script(peer):
        stop.wait(WAIT)  # read nothing: the client's socket buffer fills up

    class ImpatientClient(gear.Client):
        send_timeout = 0.5

    server = FakeServer(script)
    client = ImpatientClient()
    try:
        client.addServer(server.host, server.port)
        client.waitForServer(WAIT)
        assert client.getConnection().send_timeout == 0.5
        started = time.monotonic()
        with pytest.raises((gear.GearmanError, gear.NoConnectedServersError)):
            client.submitJob(gear.Job("big", b"x" * (64 << 20)))
        assert time.monotonic() - started < 5
        assert not client.active_connections
    finally:
        stop.set()
        client.shutdown()
        server.close()


def test_unsolicited_admin_text_is_ignored():
    def script(peer):
        peer.send(b"hello there\n")
        peer.expect_packet(constants.ECHO_REQ)
        peer.send(b"\x00RES" + (17).to_bytes(4, "big") + (2).to_bytes(4, "big") + b"ok")

    server = FakeServer(script)
    client = gear.Client()
    try:
        client.addServer(server.host, server.port)
        client.waitForServer(WAIT)
        assert client.getConnection().echo(b"ok", timeout=WAIT) == b"ok"
    finally:
        client.shutdown()
        server.close()
    assert server.error is None
    assert not any(isinstance(event, AdminLine) for event in server.peers[0].received)
