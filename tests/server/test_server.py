"""geartrain's server over real sockets: transport, admin on the same port, limits, start/stop, geard."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from geartrain.protocol import constants as C
from geartrain.server import Server, ServerConfig

from conftest import free_port, stop_process, wait_for_port
from wire import Wire


def test_round_trip_and_admin_lines_mixed_on_one_connection(geartrain_server):
    s = geartrain_server
    with Wire(s.host, s.port) as client, Wire(s.host, s.port) as worker:
        worker.register(b"rev")
        worker.admin("version")  # the registration has been handled
        client.send_raw(client.conn.send_admin("status"))
        status = client.next_event()
        assert status.lines == (b"rev\t0\t0\t1",)
        handle = client.submit(b"rev", b"abc")
        assert client.admin("status").lines == (b"rev\t1\t0\t1",)
        job = worker.grab()
        assert job.args[0] == handle and job.args[3] == b"abc"
        worker.send(C.WORK_COMPLETE, handle, job.args[3][::-1])
        assert client.expect(C.WORK_COMPLETE).args == (handle, b"cba")


def test_the_server_sets_tcp_nodelay_on_its_sockets(geartrain_server):
    s = geartrain_server
    server = s.server
    with Wire(s.host, s.port) as w:
        w.admin("version")
        conns = list(server.connections)
        assert conns
        for conn in conns:
            sock = conn.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_pipelined_submits_are_answered_in_order(geartrain_server):
    s = geartrain_server
    with Wire(s.host, s.port) as client:
        payload = b"".join(client.conn.send_packet(C.SUBMIT_JOB_BG, b"f", b"u%d" % i, b"") for i in range(200))
        client.send_raw(payload)
        handles = [client.expect(C.JOB_CREATED).args[0] for _ in range(200)]
        lines = client.admin("show unique jobs").lines
        assert len(set(handles)) == 200 and sorted(lines) == sorted(b"u%d" % i for i in range(200))


def test_large_payloads_sent_in_uneven_parts_arrive_whole_both_ways(geartrain_server):
    # The bodies are read straight into the decoder's pieces once their packets are under way: each payload
    # differs from the last, so a piece reused without being filled again would show.
    s = geartrain_server
    with Wire(s.host, s.port) as client, Wire(s.host, s.port) as worker:
        worker.register(b"big")
        for round_ in range(3):
            data = bytes((i * 7 + round_) % 251 for i in range(256)) * (9 * 1024 + round_ * 1000)
            packet = client.conn.send_packet(C.SUBMIT_JOB, b"big", b"", data)
            cuts = [0, 7, 40_000, 1_500_000, len(packet)]
            for a, b in itertools.pairwise(cuts):
                client.send_raw(packet[a:b])
                time.sleep(0.02)
            handle = client.expect(C.JOB_CREATED).args[0]
            job = worker.grab()
            assert job.args[0] == handle and job.args[3] == data
            answer = data[::-1]
            worker.send_raw(worker.conn.send_packet(C.WORK_COMPLETE, handle, answer)
                            + worker.conn.send_packet(C.ECHO_REQ, b"after"))
            assert worker.expect(C.ECHO_RES).args == (b"after",)
            assert client.expect(C.WORK_COMPLETE).args == (handle, answer)


def test_oversized_packet_gets_an_error_and_close_other_peers_unaffected():
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], max_packet_size=1024))
    server.start_in_thread()
    try:
        with Wire("127.0.0.1", server.port) as bystander, Wire("127.0.0.1", server.port) as bad:
            bystander.register(b"f")
            bad.send_raw(struct.pack(">4sII", C.REQ, C.SUBMIT_JOB, 10_000_000))
            error = bad.expect(C.ERROR)
            assert error.args[0] == b"ARGUMENT_TOO_LARGE"
            assert bad.closed_by_server()
            assert bystander.admin("status").lines == (b"f\t0\t0\t1",)
    finally:
        server.stop()


def test_unknown_type_and_wrong_magic_get_errors_and_the_connection_goes_on(geartrain_server):
    s = geartrain_server
    with Wire(s.host, s.port) as w:
        w.send_raw(struct.pack(">4sII", C.REQ, 99, 0))
        assert w.expect(C.ERROR).args[0] == b"INVALID_COMMAND"
        w.send_raw(struct.pack(">4sII", C.RES, C.ECHO_REQ, 1) + b"x")
        assert w.expect(C.ERROR).args[0] == b"INVALID_MAGIC"
        w.send(C.ECHO_REQ, b"still here")
        assert w.expect(C.ECHO_RES).args == (b"still here",)


def test_handler_failure_is_contained(geartrain_server, monkeypatch):
    s = geartrain_server
    broker = s.server.broker

    def broken(peer, args):
        raise RuntimeError("injected fault")

    monkeypatch.setitem(broker.handlers, C.ECHO_REQ, broken)
    with Wire(s.host, s.port) as w:
        w.send(C.ECHO_REQ, b"x")
        assert w.expect(C.ERROR).args[0] == b"SERVER_ERROR"
        w.send(C.GET_STATUS, b"H:none")
        assert w.expect(C.STATUS_RES).args[1] == b"0"


def test_worker_disconnect_requeues_for_another_worker(geartrain_server):
    s = geartrain_server
    with Wire(s.host, s.port) as client, Wire(s.host, s.port) as w2:
        handle = client.submit(b"f", b"data")
        w1 = Wire(s.host, s.port)
        w1.register(b"f")
        assert w1.grab().args[0] == handle
        w2.register(b"f")
        w1.close()
        job = w2.grab()
        assert job.args[0] == handle
        w2.send(C.WORK_COMPLETE, handle, b"ok")
        assert client.expect(C.WORK_COMPLETE).args == (handle, b"ok")


def test_epoch_job_runs_when_its_time_comes(geartrain_server):
    s = geartrain_server
    with Wire(s.host, s.port) as client, Wire(s.host, s.port) as worker:
        worker.register(b"later")
        when = int(time.time()) + 2
        client.send(C.SUBMIT_JOB_EPOCH, b"later", b"", str(when).encode(), b"x")
        client.expect(C.JOB_CREATED)
        job = worker.grab(timeout=15)
        assert job.args[3] == b"x" and time.time() >= when - 0.01


def test_listens_on_ipv6_and_several_addresses():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 on this machine")
    server = Server(ServerConfig(listen=[("127.0.0.1", 0), ("::1", 0)]))
    server.start_in_thread()
    try:
        v4, v6 = server.ports
        with Wire("127.0.0.1", v4) as a, Wire("::1", v6) as b:
            b.register(b"f")
            b.admin("version")
            assert a.admin("status").lines == (b"f\t0\t0\t1",)
    finally:
        server.stop()


def test_graceful_shutdown_lets_running_jobs_finish(geartrain_server):
    s = geartrain_server
    with Wire(s.host, s.port) as client, Wire(s.host, s.port) as worker, Wire(s.host, s.port) as admin:
        worker.register(b"f")
        handle = client.submit(b"f", b"x")
        worker.grab()
        assert admin.admin("shutdown graceful").lines == (b"OK",)
        with pytest.raises(OSError):
            socket.create_connection((s.host, s.port), timeout=2).close()
        worker.send(C.WORK_COMPLETE, handle, b"done")
        assert client.expect(C.WORK_COMPLETE).args == (handle, b"done")
        assert client.closed_by_server(timeout=10)


def test_idle_timeout_closes_silent_connections_but_not_workers():
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], idle_timeout=0.3))
    server.start_in_thread()
    try:
        with Wire("127.0.0.1", server.port) as idle, Wire("127.0.0.1", server.port) as worker:
            worker.register(b"f")
            assert idle.closed_by_server(timeout=10)
            worker.send(C.ECHO_REQ, b"alive")
            assert worker.expect(C.ECHO_RES).args == (b"alive",)
    finally:
        server.stop()


def test_idle_timeout_spares_a_client_still_sending_a_large_packet():
    # Its body is read straight into its payload, each read of it counts as activity.
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], idle_timeout=1.0))
    server.start_in_thread()
    try:
        with Wire("127.0.0.1", server.port) as client:
            packet = client.conn.send_packet(C.SUBMIT_JOB_BG, b"big", b"", b"x" * (3 * 1024 * 1024))
            parts = 8  # sent over about 2.4 s, more than twice the idle timeout, 0.3 s apart
            step = len(packet) // parts + 1
            for start in range(0, len(packet), step):
                client.send_raw(packet[start:start + step])
                time.sleep(0.3)
            assert client.expect(C.JOB_CREATED).args[0]
    finally:
        server.stop()


def test_max_connections_refuses_the_extra_one():
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], max_connections=2))
    server.start_in_thread()
    try:
        with Wire("127.0.0.1", server.port) as a, Wire("127.0.0.1", server.port) as b:
            a.admin("version"), b.admin("version")
            with Wire("127.0.0.1", server.port) as c:
                assert c.closed_by_server(timeout=10)
            assert a.admin("version").ok
    finally:
        server.stop()


# ---------------------------------------------------------------------- the geard command

def geard(*args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "geartrain.server.cli", "-d", "--listen-address", "127.0.0.1", "-p", str(port),
           "--queue-type", "memory", *args]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_port("127.0.0.1", port, process=process)
    return process, port


def test_geard_stops_on_sigterm_and_writes_and_removes_its_pidfile(tmp_path):
    pidfile = tmp_path / "geard.pid"
    process, port = geard("--pidfile", str(pidfile))
    try:
        assert int(pidfile.read_text()) == process.pid
        with Wire("127.0.0.1", port) as w:
            assert w.admin("getpid").lines == (b"OK %d" % process.pid,)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert not pidfile.exists()
    finally:
        stop_process(process)


def test_geard_sigusr1_is_a_graceful_shutdown():
    process, port = geard()
    try:
        with Wire("127.0.0.1", port) as client, Wire("127.0.0.1", port) as worker:
            worker.register(b"f")
            handle = client.submit(b"f", b"x")
            worker.grab()
            process.send_signal(signal.SIGUSR1)
            with pytest.raises(subprocess.TimeoutExpired):
                process.wait(timeout=0.5)  # still running: a job is in progress
            worker.send(C.WORK_COMPLETE, handle, b"y")
            assert client.expect(C.WORK_COMPLETE).args[1] == b"y"
        assert process.wait(timeout=10) == 0
    finally:
        stop_process(process)


def test_geard_log_config_of_the_seed_and_sighup_reopens(tmp_path):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    config = tmp_path / "logging.config"
    config.write_text(f"""[loggers]
keys=root,gear

[handlers]
keys=console,debug,info

[formatters]
keys=simple

[logger_root]
level=WARNING
handlers=console

[logger_gear]
level=INFO
handlers=debug,info
qualname=gear

[handler_console]
level=WARNING
class=StreamHandler
formatter=simple
args=(sys.stdout,)

[handler_debug]
level=DEBUG
class=logging.handlers.TimedRotatingFileHandler
formatter=simple
args=('{log_dir}/debug.log', 'midnight', 1, 30,)

[handler_info]
level=INFO
class=logging.handlers.WatchedFileHandler
formatter=simple
args=('{log_dir}/info.log',)

[formatter_simple]
format=%(asctime)s %(levelname)s %(name)s: %(message)s
datefmt=
""")
    process, port = geard("--log-config", str(config))
    try:
        assert (log_dir / "debug.log").exists()
        os.rename(log_dir / "debug.log", log_dir / "debug.log.1")
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not (log_dir / "debug.log").exists() and time.monotonic() < deadline:
            with Wire("127.0.0.1", port) as w:
                w.admin("version")
            time.sleep(0.05)
        assert (log_dir / "debug.log").exists()
    finally:
        stop_process(process)


def test_geard_daemonizes_without_d(tmp_path):
    port = free_port()
    pidfile = tmp_path / "geard.pid"
    launcher = subprocess.run(
        [sys.executable, "-m", "geartrain.server.cli", "--listen-address", "127.0.0.1", "-p", str(port),
         "--queue-type", "memory", "--pidfile", str(pidfile)], timeout=30)
    assert launcher.returncode == 0
    wait_for_port("127.0.0.1", port)
    pid = int(pidfile.read_text())
    try:
        with Wire("127.0.0.1", port) as w:
            assert w.admin("getpid").lines == (b"OK %d" % pid,)
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pidfile.exists()


def test_geard_version_and_bad_acl_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "geartrain.server.cli", "--version"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and "geartrain" in out.stdout
    bad = tmp_path / "acl"
    bad.write_text("[worker]\nregister=(\n")
    out = subprocess.run([sys.executable, "-m", "geartrain.server.cli", "-d", "--acl", str(bad)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "geard:" in out.stderr and "register" in out.stderr


def test_servers_in_one_process_do_not_share_receive_buffers():
    servers = [Server(ServerConfig(listen=[("127.0.0.1", 0)])) for _ in range(3)]
    for server in servers:
        server.start_in_thread()
    failures: list[str] = []

    def hammer(port: int, tag: bytes) -> None:
        try:
            with Wire("127.0.0.1", port) as w:
                for round_ in range(30):
                    payloads = [tag + b"-%d-%d-" % (round_, i) + b"x" * 3000 for i in range(50)]
                    w.send_raw(b"".join(w.conn.send_packet(C.ECHO_REQ, p) for p in payloads))
                    for p in payloads:
                        got = w.expect(C.ECHO_RES).args[0]
                        if got != p:
                            failures.append(f"{tag!r}: sent {p[:20]!r}, got {got[:20]!r}")
                            return
        except Exception as exc:  # reported below
            failures.append(f"{tag!r}: {exc!r}")

    threads = [threading.Thread(target=hammer, args=(s.port, b"s%d" % i)) for i, s in enumerate(servers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not failures, failures[:3]
    finally:
        for server in servers:
            server.stop()


@contextlib.contextmanager
def accepted_socket(**options: object) -> Iterator[socket.socket]:
    """The server side of a connection to a Server started with these ServerConfig options."""
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], **options))
    server.start_in_thread()
    try:
        with Wire("127.0.0.1", server.port) as w:
            w.admin("version")
            (conn,) = list(server.connections)
            yield conn.transport.get_extra_info("socket")
    finally:
        server.stop()


def test_keepalive_options_reach_the_server_sockets():
    with accepted_socket(keepalive=True, tcp_keepidle=123, tcp_keepintvl=17, tcp_keepcnt=4) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 123
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 17
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4


def test_socket_buffer_sizes_reach_the_server_sockets():
    """--socket-buffer sets SO_SNDBUF and SO_RCVBUF of each accepted connection (Linux doubles the value, capped by
    net.core.wmem_max / rmem_max); the default is 512 KiB."""
    def caps(name: str) -> int:
        with open(f"/proc/sys/net/core/{name}") as f:
            return int(f.read())

    assert ServerConfig().socket_buffer == 512 * 1024
    for size in (96 * 1024, ServerConfig().socket_buffer):
        with accepted_socket(socket_buffer=size) as sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * min(size, caps("wmem_max"))
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * min(size, caps("rmem_max"))
