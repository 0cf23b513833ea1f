"""Every example of the gear seed document (shared/seeds/gear.rst), run as written against geartrain's server
and gearmand; only the server's address is put in place of gearman.example.com."""

from __future__ import annotations

import ssl
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest's importlib mode does not put this directory on sys.path
pytest.register_assert_rewrite("gear_support")
from gear_support import WAIT, pool, status_of, wait_until  # noqa: E402, F401

import gear  # noqa: E402

CLIENT_EXAMPLE = """
import gear
client = gear.Client()
client.addServer('gearman.example.com')
client.waitForServer()  # Wait for at least one server to be connected

job = gear.Job("reverse", "test string")
client.submitJob(job)
"""

WORKER_EXAMPLE = """
import gear
worker = gear.Worker('reverser')
worker.addServer('gearman.example.com')
worker.registerFunction("reverse")

while True:
    job = worker.getJob()
    job.sendWorkComplete(job.arguments[::-1])
"""

SSL_EXAMPLE = """
ssl_key = '/path/to/key.pem'
ssl_cert = '/path/to/cert.pem'
ssl_ca = '/path/to/ca.pem'
client.addServer('gearman.example.com', 4730, ssl_key, ssl_cert, ssl_ca)
"""


def _at(source: str, server) -> str:
    return source.replace("'gearman.example.com'", f"'{server.host}', {server.port}")


def test_client_and_worker_examples_reverse_a_string(any_server):
    worker_ns: dict = {}

    def run_worker() -> None:
        try:
            exec(_at(WORKER_EXAMPLE, any_server), worker_ns)
        except gear.InterruptedError:  # the example loops forever: shutdown() ends getJob()
            pass

    thread = threading.Thread(target=run_worker, daemon=True)
    thread.start()
    client_ns: dict = {}
    try:
        wait_until(lambda: "worker" in worker_ns and worker_ns["worker"].active_connections)
        exec(_at(CLIENT_EXAMPLE, any_server), client_ns)
        job = client_ns["job"]
        assert job.handle and job.connection is not None
        assert job.waitForCompletion(WAIT)
        assert job.complete and not job.failure
        assert job.data == [b"gnirts tset"]
    finally:
        if "client" in client_ns:
            client_ns["client"].shutdown()
        wait_until(lambda: "worker" in worker_ns)
        worker_ns["worker"].shutdown()
        thread.join(WAIT)
    assert not thread.is_alive()


def test_client_example_polling_loop_as_gear_users_write_it(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "reverse")
    pool.serve(worker, lambda job: job.sendWorkComplete(job.arguments[::-1]))
    client = pool.client(any_server)
    job = gear.Job("reverse", "test string")
    client.submitJob(job)
    wait_until(lambda: job.complete)
    assert job.data == [b"gnirts tset"]


def test_ssl_example_accepts_the_three_files_without_blocking():
    client = gear.Client()
    try:
        exec(SSL_EXAMPLE, {"client": client})
        (conn,) = client.inactive_connections
        assert conn.use_ssl and (conn.ssl_key, conn.ssl_cert, conn.ssl_ca) == (
            "/path/to/key.pem", "/path/to/cert.pem", "/path/to/ca.pem")
    finally:
        client.shutdown()


def test_ssl_context_verifies_the_server_against_the_ca_without_a_host_name_check(tmp_path):
    import ssl

    from certs import make_pki

    key, cert, ca = make_pki(tmp_path).client_files("my_client")
    conn = gear.Connection("gearman.example.com", 4730, key, cert, ca)
    context = conn._sslContext()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is False


def test_tls_round_trip_with_gear_server(tmp_path, pool):  # noqa: F811
    from certs import make_pki

    pki = make_pki(tmp_path)
    server = gear.Server(0, *pki.server_files(), host="127.0.0.1")
    try:
        worker = gear.Worker("tls-worker")
        pool.objects.append(worker)
        worker.addServer("127.0.0.1", server.port, *pki.client_files("tls-worker"))
        worker.registerFunction("reverse")
        pool.serve(worker, lambda job: job.sendWorkComplete(job.arguments[::-1]))
        client = pool.client()
        client.addServer("127.0.0.1", server.port, *pki.client_files("tls-client"))
        client.waitForServer(WAIT)
        worker.waitForServer(WAIT)
        # A TLS socket. Not version(): the client's loop thread may be inside SSL_read handling the server's
        # post-handshake session tickets, and OpenSSL answers None meanwhile. The server listens only with
        # TLS, so the round trip below also proves the channel.
        assert isinstance(client.getConnection().conn, ssl.SSLSocket)
        job = gear.Job("reverse", "secret")
        client.submitJob(job)
        assert job.waitForCompletion(WAIT) and job.data == [b"terces"]
    finally:
        pool.close()
        server.shutdown()


@pytest.mark.parametrize(
    "request_class",
    [gear.StatusAdminRequest, gear.ShowJobsAdminRequest, gear.ShowUniqueJobsAdminRequest,
     gear.WorkersAdminRequest, gear.VersionAdminRequest],
)
def test_admin_requests_get_their_whole_answer(any_server, pool, request_class):  # noqa: F811
    worker = pool.worker(any_server, "reverse", client_id="admin-test-worker")
    client = pool.client(any_server)
    wait_until(lambda: status_of(client, "reverse"))
    job = gear.Job("nobody-does-this", b"x", unique="u-admin")
    client.submitJob(job, background=True)
    request = request_class()
    client.getConnection().sendAdminRequest(request, timeout=WAIT)
    response = request.response
    if request_class is gear.VersionAdminRequest:
        assert response.startswith(b"OK") and response.endswith(b"\n") and response.count(b"\n") == 1
        return
    assert response.endswith(b".\n")
    if request_class is gear.StatusAdminRequest:
        assert b"reverse\t0\t0\t1\n" in response and b"nobody-does-this\t1\t0\t0\n" in response
    elif request_class is gear.WorkersAdminRequest:
        assert b"admin-test-worker : reverse" in response
    elif request_class is gear.ShowJobsAdminRequest:
        assert job.handle in response
    elif request_class is gear.ShowUniqueJobsAdminRequest:
        assert b"u-admin" in response
    assert worker.running


def test_cancel_job_admin_request_of_a_queued_background_job(any_server, pool):  # noqa: F811
    client = pool.client(any_server)
    job = gear.Job("cancel-me", b"cancelled")
    client.submitJob(job, background=True)
    assert status_of(client, "cancel-me") == (1, 0, 0)
    request = gear.CancelJobAdminRequest(job.handle)
    job.connection.sendAdminRequest(request, timeout=WAIT)
    assert request.response.startswith(b"OK")
    # The cancelled job is never handed out (gearmand still counts it in "status"; geartrain drops it).
    marker = gear.Job("cancel-me", b"marker")
    client.submitJob(marker, background=True)
    worker = pool.worker(any_server, "cancel-me")
    got = worker.getJob()
    assert got.arguments == b"marker"
    got.sendWorkComplete()


def test_gear_server_serves_on_construction_with_port_zero(pool):  # noqa: F811
    server = gear.Server(port=0)
    try:
        assert server.port > 0
        client = pool.client()
        client.addServer("127.0.0.1", server.port)
        client.waitForServer(WAIT)
        job = gear.Job("queued-only", b"data")
        client.submitJob(job, background=True)
        assert job.handle in server.jobs
        assert [j.handle for j in server.normal_queue] == [job.handle]
        assert server.getQueue()[0].handle == job.handle
        worker = pool.worker(None, "queued-only")
        worker.addServer("localhost", server.port)
        got = worker.getJob()
        assert got.handle == job.handle and got.arguments == b"data"
        got.sendWorkComplete()
        wait_until(lambda: job.handle not in server.jobs)
    finally:
        pool.close()
        server.shutdown()
        server.shutdown()


def test_acl_server_example_denies_what_was_not_granted(tmp_path, pool):  # noqa: F811
    # The seed's ACL example: my_worker may register, my_client may invoke (subjects are certificate CNs).
    from certs import make_pki

    pki = make_pki(tmp_path)
    acl = gear.ACL()
    acl.add(gear.ACLEntry("my_worker", register=".*"))
    acl.add(gear.ACLEntry("my_client", invoke=".*"))
    server = gear.Server(0, *pki.server_files(), acl=acl, host="127.0.0.1")
    try:
        worker = gear.Worker("my_worker")
        pool.objects.append(worker)
        worker.addServer("127.0.0.1", server.port, *pki.client_files("my_worker"))
        worker.registerFunction("reverse")
        pool.serve(worker, lambda job: job.sendWorkComplete(job.arguments[::-1]))
        allowed = pool.client()
        allowed.addServer("127.0.0.1", server.port, *pki.client_files("my_client"))
        denied = pool.client()
        denied.addServer("127.0.0.1", server.port, *pki.client_files("stranger"))
        for obj in (worker, allowed, denied):
            obj.waitForServer(WAIT)
        job = gear.Job("reverse", "granted")
        allowed.submitJob(job)
        assert job.waitForCompletion(WAIT) and job.data == [b"detnarg"]
        with pytest.raises(gear.GearmanError):
            denied.submitJob(gear.Job("reverse", "not granted"))
    finally:
        pool.close()
        server.shutdown()
