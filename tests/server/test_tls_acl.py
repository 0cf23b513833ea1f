"""TLS with verified client certificates and ACLs, end to end on geartrain's server."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import sys

import pytest

from geartrain.protocol import constants as C
from geartrain.server import Server, ServerConfig
from geartrain.server.acl import ACL, ACLEntry
from geartrain.server.tls import client_context

from certs import make_pki
from conftest import free_port, stop_process, stopping_all, wait_for_port
from wire import Wire


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path)


@pytest.fixture
def tls_server(pki):
    def start(acl: ACL | None = None, **options) -> Server:
        key, cert, ca = pki.server_files()
        server = Server(ServerConfig(listen=[("127.0.0.1", 0)], ssl_key=key, ssl_cert=cert, ssl_ca=ca, acl=acl,
                                     **options))
        server.start_in_thread()
        return server

    with stopping_all(start) as make:
        yield make


def connect(server: Server, pki, cn: str, **kwargs) -> Wire:
    return Wire("127.0.0.1", server.port, ssl_context=client_context(*pki.client_files(cn)), **kwargs)


def refused(server: Server, context: ssl.SSLContext) -> bool:
    """True when the server ends the connection during or right after the handshake."""
    try:
        with Wire("127.0.0.1", server.port, ssl_context=context) as w:
            w.send(C.ECHO_REQ, b"let me in")
            w.next_event(timeout=10)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    return False


def test_worker_and_client_with_valid_certificates_exchange_a_job(tls_server, pki):
    server = tls_server()
    with connect(server, pki, "worker") as worker, connect(server, pki, "client") as client:
        worker.register(b"rev")
        worker.admin("version")
        handle = client.submit(b"rev", b"abc")
        job = worker.grab()
        worker.send(C.WORK_COMPLETE, handle, job.args[3][::-1])
        assert client.expect(C.WORK_COMPLETE).args == (handle, b"cba")
    subjects = {peer.subject for peer in server.broker.peers.values()}
    assert subjects <= {"worker", "client"}


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_are_served(tls_server, pki, version):
    server = tls_server()
    context = client_context(*pki.client_files("client"))
    context.minimum_version = context.maximum_version = version
    with Wire("127.0.0.1", server.port, ssl_context=context) as w:
        w.send(C.ECHO_REQ, b"x")
        assert w.expect(C.ECHO_RES).args == (b"x",)
        assert w.sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]


def test_clients_without_a_valid_certificate_are_refused_with_a_log_line(tls_server, pki, caplog):
    server = tls_server()
    caplog.set_level(logging.WARNING, logger="geartrain")
    no_cert = client_context(None, None, pki.server_files()[2])
    self_signed = client_context(*pki.self_signed_client_files("client")[:2], pki.server_files()[2])
    foreign = client_context(*pki.foreign_client_files("client")[:2], pki.server_files()[2])
    for context in (no_cert, self_signed, foreign):
        assert refused(server, context)
    messages = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(messages) == 3 and all("127.0.0.1" in m for m in messages)
    with connect(server, pki, "client") as ok:
        ok.send(C.ECHO_REQ, b"fine")
        assert ok.expect(C.ECHO_RES).args == (b"fine",)


def test_a_silent_tcp_peer_does_not_delay_a_tls_client_and_times_out(tls_server, pki):
    server = tls_server(handshake_timeout=60.0)
    silent = socket.create_connection(("127.0.0.1", server.port))
    try:
        with connect(server, pki, "client", timeout=20) as w:
            w.send(C.ECHO_REQ, b"not held up")
            assert w.expect(C.ECHO_RES).args == (b"not held up",)
    finally:
        silent.close()
    quick = tls_server(handshake_timeout=0.3)
    with socket.create_connection(("127.0.0.1", quick.port), timeout=20) as sock:
        assert sock.recv(1) == b""  # closed by the server when the handshake timed out


def test_plain_and_tls_listeners_side_by_side(pki):
    key, cert, ca = pki.server_files()
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], ssl_listen=[("127.0.0.1", 0)], tls_on_main=False,
                                 ssl_key=key, ssl_cert=cert, ssl_ca=ca))
    server.start_in_thread()
    try:
        plain_port, tls_port = server.ports
        with Wire("127.0.0.1", plain_port) as plain, \
                Wire("127.0.0.1", tls_port, ssl_context=client_context(*pki.client_files("w"))) as secure:
            secure.register(b"f")
            secure.admin("version")
            assert plain.admin("status").lines == (b"f\t0\t0\t1",)
    finally:
        server.stop()


def test_geard_ssl_port_serves_tls_beside_the_plain_port(pki):
    key, cert, ca = pki.server_files()
    port, ssl_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "geartrain.server.cli", "-d", "--listen-address", "127.0.0.1", "-p", str(port),
         "--queue-type", "memory", "--ssl-port", str(ssl_port), "--ssl-key", key, "--ssl-cert", cert,
         "--ssl-ca", ca], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port("127.0.0.1", port, process=process)
        wait_for_port("127.0.0.1", ssl_port, process=process)
        with Wire("127.0.0.1", ssl_port, ssl_context=client_context(*pki.client_files("x"))) as w:
            assert w.admin("version").ok
        with Wire("127.0.0.1", port) as w:
            assert w.admin("version").ok
    finally:
        stop_process(process)


# ---------------------------------------------------------------------- ACL

def make_acl() -> ACL:
    acl = ACL()
    acl.add(ACLEntry("worker", register="a.*"))
    acl.add(ACLEntry("client", invoke="a.*"))
    acl.add(ACLEntry("manager", grant=True))
    return acl


def test_acl_invoke_and_register_are_enforced(tls_server, pki):
    server = tls_server(make_acl())
    with connect(server, pki, "client") as client, connect(server, pki, "worker") as worker, \
            connect(server, pki, "stranger") as stranger:
        client.submit(b"abc", b"x")
        for ptype in (C.SUBMIT_JOB, C.SUBMIT_JOB_BG, C.SUBMIT_JOB_HIGH, C.SUBMIT_JOB_LOW_BG):
            client.send(ptype, b"xyz", b"", b"x")
            error = client.expect(C.ERROR)
            assert error.args[0] == b"PERMISSION_DENIED" and b"xyz" in error.args[1]
        client.send(C.SUBMIT_JOB_EPOCH, b"xyz", b"", b"0", b"x")
        assert client.expect(C.ERROR).args[0] == b"PERMISSION_DENIED"
        worker.register(b"abc")
        worker.send(C.CAN_DO, b"xyz")
        assert worker.expect(C.ERROR).args[0] == b"PERMISSION_DENIED"
        worker.send(C.CAN_DO_TIMEOUT, b"xyz", b"5000")
        assert worker.expect(C.ERROR).args[0] == b"PERMISSION_DENIED"
        stranger.send(C.SUBMIT_JOB, b"abc", b"", b"x")  # deny by default
        assert stranger.expect(C.ERROR).args[0] == b"PERMISSION_DENIED"
        assert stranger.admin("status").lines == (b"abc\t1\t0\t1",)


def test_acl_cancel_job_needs_invoke_permission(tls_server, pki):
    server = tls_server(make_acl())
    with connect(server, pki, "client") as client, connect(server, pki, "stranger") as stranger:
        handle = client.submit(b"abc", b"x", ptype=C.SUBMIT_JOB_BG)
        assert stranger.admin(b"cancel job " + handle).lines[0].startswith(b"ERR PERMISSION_DENIED")
        assert client.admin(b"cancel job " + handle).lines == (b"OK",)


def test_acl_admin_commands_change_a_live_connection(tls_server, pki):
    server = tls_server(make_acl())
    with connect(server, pki, "client") as client, connect(server, pki, "manager") as manager:
        assert manager.admin("acl list").raw == (
            b"client\tregister=None\tinvoke=a.*\tgrant=False\n"
            b"manager\tregister=None\tinvoke=None\tgrant=True\n"
            b"worker\tregister=a.*\tinvoke=None\tgrant=False\n.\n"
        )
        assert client.admin("acl grant invoke client .*").lines[0].startswith(b"ERR PERMISSION_DENIED")
        assert manager.admin("acl grant invoke client x.*").lines == (b"OK",)
        client.submit(b"xyz", b"now allowed")
        assert manager.admin("acl revoke invoke client").lines == (b"OK",)
        client.send(C.SUBMIT_JOB, b"xyz", b"", b"x")
        assert client.expect(C.ERROR).args[0] == b"PERMISSION_DENIED"
        assert manager.admin("acl grant invoke client a.*").lines == (b"OK",)
        client.submit(b"abc", b"x")
        assert client.admin("acl self-revoke invoke").lines == (b"OK",)
        client.send(C.SUBMIT_JOB, b"abc", b"", b"x")
        assert client.expect(C.ERROR).args[0] == b"PERMISSION_DENIED"


def test_geard_acl_file_of_the_seed(pki, tmp_path):
    acl_file = tmp_path / "acl.ini"
    acl_file.write_text("[my_worker]\nregister=.*\n\n[my_client]\ninvoke=.*\n\n[my_node_manager]\ngrant=True\n")
    key, cert, ca = pki.server_files()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "geartrain.server.cli", "-d", "--listen-address", "127.0.0.1", "-p", str(port),
         "--queue-type", "memory", "--ssl-key", key, "--ssl-cert", cert, "--ssl-ca", ca, "--acl", str(acl_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port("127.0.0.1", port, process=process)
        ctx = client_context(*pki.client_files("my_node_manager"))
        with Wire("127.0.0.1", port, ssl_context=ctx) as w:
            assert w.admin("acl list").raw == (
                b"my_client\tregister=None\tinvoke=.*\tgrant=False\n"
                b"my_node_manager\tregister=None\tinvoke=None\tgrant=True\n"
                b"my_worker\tregister=.*\tinvoke=None\tgrant=False\n.\n"
            )
        with Wire("127.0.0.1", port, ssl_context=client_context(*pki.client_files("my_worker"))) as w:
            w.register(b"anything")
            w.send(C.SUBMIT_JOB, b"anything", b"", b"x")
            assert w.expect(C.ERROR).args[0] == b"PERMISSION_DENIED"
    finally:
        stop_process(process)
