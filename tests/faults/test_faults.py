"""Faults: peers killed mid-job, clients that stop reading, crowds of silent connections, server restarts.

Workers and clients that get killed run as small Python subprocesses (raw protocol through tests/wire.py) so that
SIGKILL takes them down without a goodbye, as a crash or an OOM kill would.
"""

from __future__ import annotations

import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import gear
import gearman
from geartrain.protocol import constants as C
from geartrain.protocol import encode_request

from conftest import free_port, start_geard_process, stop_process, wait_for_port
from wire import Wire

TESTS_DIR = str(Path(__file__).resolve().parent.parent)

# A worker that takes one job, says so, and holds it until killed (stdin never closes before the kill).
HOLDING_WORKER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from wire import Wire
host, port, name = sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
w = Wire(host, port, timeout=60)
w.register(name)
job = w.grab(timeout=60)
print("GOT", job.args[0].decode(), flush=True)
sys.stdin.read()
"""

# A client that submits foreground jobs (and one background job), says so, and waits until killed.
SUBMITTING_CLIENT = r"""
import sys
sys.path.insert(0, sys.argv[1])
from wire import Wire
from geartrain.protocol import constants as C
from geartrain.protocol import encode_request
host, port, name, count = sys.argv[2], int(sys.argv[3]), sys.argv[4].encode(), int(sys.argv[5])
c = Wire(host, port, timeout=60)
handles = [c.submit(name, b"fg %d" % i) for i in range(count)]
handles.append(c.submit(name, b"bg", ptype=C.SUBMIT_JOB_BG))
print(" ".join(h.decode() for h in handles), flush=True)
sys.stdin.read()
"""

def spawn(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, TESTS_DIR, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def first_line(process: subprocess.Popen, deadline: float = 20.0) -> str:
    """The first stdout line of a helper process, read under a deadline."""
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(deadline)
    if not result or not result[0]:
        process.kill()
        process.wait(10)
        raise AssertionError(f"helper said nothing: {process.stderr.read().decode(errors='replace')[-2000:]}")
    return result[0].decode().strip()


def kill9(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(10)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def wait_until(predicate, deadline: float = 10.0, what: str = "condition"):
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached in {deadline}s (last: {value!r})")
        time.sleep(0.02)


def read_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def round_trip(host: str, port: int, name: bytes, payload: bytes = b"ping") -> None:
    with Wire(host, port) as worker, Wire(host, port) as client:
        worker.register(name)
        handle = client.submit(name, payload)
        job = worker.grab()
        assert job.args[0] == handle and job.args[3] == payload
        worker.send(C.WORK_COMPLETE, handle, b"pong")
        assert client.expect(C.WORK_COMPLETE).args == (handle, b"pong")


# ------------------------------------------------------------------------------------------- killed peers


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
def test_worker_killed_mid_job_the_job_is_requeued_and_done_by_another(geartrain_server, background):
    s = geartrain_server
    name = b"fault-requeue"
    with Wire(s.host, s.port) as client:
        handle = client.submit(name, b"payload", ptype=C.SUBMIT_JOB_BG if background else C.SUBMIT_JOB)
        doomed = spawn(HOLDING_WORKER, s.host, str(s.port), name.decode())
        try:
            assert first_line(doomed) == f"GOT {handle.decode()}"
            client.send(C.GET_STATUS, handle)
            assert client.expect(C.STATUS_RES).args[1:3] == (b"1", b"1")  # known, running
        finally:
            kill9(doomed)
        with Wire(s.host, s.port) as rescuer:
            rescuer.register(name)
            job = rescuer.grab()
            assert job.args[0] == handle and job.args[3] == b"payload"
            rescuer.send(C.WORK_COMPLETE, handle, b"done")
            if not background:
                assert client.expect(C.WORK_COMPLETE).args == (handle, b"done")
            wait_until(lambda: client.admin("show jobs").lines == (), what="no jobs left")
    assert not s.server.broker.jobs


def test_client_killed_with_jobs_in_flight_leaks_nothing(geartrain_server):
    s = geartrain_server
    name = b"fault-client"
    broker = s.server.broker
    with Wire(s.host, s.port) as worker, Wire(s.host, s.port) as admin:
        doomed = spawn(SUBMITTING_CLIENT, s.host, str(s.port), name.decode(), "5")
        try:
            handles = [h.encode() for h in first_line(doomed).split()]
            assert len(handles) == 6
            worker.register(name)
            running = worker.grab()  # the first foreground job is now running
            assert running.args[0] == handles[0]
            assert len(admin.admin("show jobs").lines) == 6
        finally:
            kill9(doomed)
        # The queued foreground jobs go with their only client; the running one and the background one stay.
        wait_until(lambda: sorted(line.split(b"\t")[0] for line in admin.admin("show jobs").lines)
                   == sorted([handles[0], handles[5]]), what="queued foreground jobs dropped")
        worker.send(C.WORK_COMPLETE, handles[0], b"nobody listens")
        background = worker.grab()
        assert background.args[0] == handles[5]
        worker.send(C.WORK_COMPLETE, handles[5], b"done")
        worker.send(C.ECHO_REQ, b"no error before me")  # a result for a departed client is no error
        assert worker.expect(C.ECHO_RES).args == (b"no error before me",)
        assert admin.admin("show jobs").lines == ()
        assert admin.admin("status").lines in ((), (name + b"\t0\t0\t1",))
        assert not broker.jobs and not broker.by_unique and broker.queued_bytes == 0
        assert wait_until(lambda: len(broker.peers) == 2, what="the killed client's peer forgotten")


# ------------------------------------------------------------------------------------------- slow readers


def test_client_that_stops_reading_a_data_stream_is_cut_off_and_memory_stays_bounded():
    limit = 16 * 1024 * 1024
    chunk = b"d" * (1024 * 1024)
    total_chunks = 256  # 256 MB streamed: far past the limit, so an unbounded server would show it in RSS
    server = start_geard_process("--output-high-water", str(1024 * 1024), "--output-limit", str(limit))
    process, host, port = server.process, server.host, server.port
    try:
        round_trip(host, port, b"warm-up")
        baseline = read_kb(process.pid, "VmRSS")
        slow = socket.create_connection((host, port), timeout=10)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        try:
            with Wire(host, port, timeout=30) as worker:
                slow.sendall(worker.conn.send_packet(C.SUBMIT_JOB, b"stream", b"", b""))
                worker.register(b"stream")
                handle = worker.grab().args[0]
                sent = 0
                for sent in range(1, total_chunks + 1):  # noqa: B007
                    try:
                        worker.send(C.WORK_DATA, handle, chunk)
                    except OSError:
                        break
                    if sent % 32 == 0:  # other clients are served while the stream goes on
                        round_trip(host, port, b"bystander-%d" % sent)
                worker.send(C.WORK_COMPLETE, handle, b"end")
                worker.send(C.ECHO_REQ, b"worker still served")
                assert worker.expect(C.ECHO_RES).args == (b"worker still served",)
            # The slow client was cut off: reading now ends early, long before the whole stream.
            received = 0
            cut_off = False
            slow.settimeout(10)
            try:
                while True:
                    data = slow.recv(1 << 20)
                    if not data:
                        cut_off = True
                        break
                    received += len(data)
            except ConnectionResetError:
                cut_off = True
            except TimeoutError:
                pass  # still connected: not cut off
            assert cut_off and received < total_chunks * len(chunk) // 2, (cut_off, received)
            peak = read_kb(process.pid, "VmHWM")
            print(f"slow reader: RSS baseline {baseline} kB, peak {peak} kB, slow client received {received} bytes")
            assert peak < baseline + 160 * 1024, (baseline, peak)
        finally:
            slow.close()
        round_trip(host, port, b"after")
        assert process.poll() is None
    finally:
        server.stop()


def test_client_that_sends_but_never_reads_is_paused_not_buffered(geartrain_server):
    """Echo requests from a peer that reads nothing: the server stops reading it once its output backs up."""
    s = geartrain_server
    high_water = s.server.config.output_high_water
    budget = 256 * 1024 * 1024
    echoes = encode_request(C.ECHO_REQ, b"e" * 65536) * 16  # sent round and round: one unbroken packet stream
    flood = socket.create_connection((s.host, s.port), timeout=10)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        local_port = flood.getsockname()[1]
        conn = wait_until(lambda: next((c for c in list(s.server.connections) if c.transport is not None
                                        and c.transport.get_extra_info("peername")[1] == local_port), None),
                          what="the server sees the flooding connection")
        view = memoryview(echoes)
        flood.settimeout(0.5)
        sent = 0
        while sent < budget:
            try:
                sent += flood.send(view[sent % len(echoes):])
            except TimeoutError:
                if conn.paused:  # the kernel buffers are full because the server stopped reading: as it should
                    break
        assert sent < budget, "the server read everything from a peer that reads nothing"
        # One read's worth of echoes may land past the high-water mark before reading pauses.
        assert conn.transport.get_write_buffer_size() < high_water + 4 * 1024 * 1024
        round_trip(s.host, s.port, b"while-flooded")
    finally:
        flood.close()


# ------------------------------------------------------------------------------------------- crowds


def test_two_thousand_silent_connections_do_not_stop_a_normal_client():
    count = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * count + 256
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is below the {need} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    sockets: list[socket.socket] = []
    server = None
    try:
        server = start_geard_process()  # inherits the raised limit
        for _ in range(count):
            sockets.append(socket.create_connection((server.host, server.port), timeout=10))
        with Wire(server.host, server.port) as admin:
            wait_until(lambda: len(admin.admin("workers").lines) >= count + 1, deadline=30,
                       what="every silent connection accepted")
        round_trip(server.host, server.port, b"crowded")
        for sock in sockets:
            sock.close()
        sockets.clear()
        with Wire(server.host, server.port) as admin:
            wait_until(lambda: len(admin.admin("workers").lines) <= 2, deadline=30, what="the crowd forgotten")
    finally:
        for sock in sockets:
            sock.close()
        if server is not None:
            server.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ------------------------------------------------------------------------------------------- limits


def test_each_limit_answers_with_a_clear_error(server_factory):
    s = server_factory("geartrain", max_packet_size=4096, max_line_length=256, max_unique_length=64,
                       max_function_length=32, max_queued_bytes=1000)
    with Wire(s.host, s.port) as w:
        w.send(C.SUBMIT_JOB, b"f", b"u" * 65, b"")
        assert w.expect(C.ERROR).args[0] == b"ARGUMENT_TOO_LARGE"
        w.send(C.SUBMIT_JOB, b"f" * 33, b"", b"")
        assert w.expect(C.ERROR).args[0] == b"ARGUMENT_TOO_LARGE"
        w.send(C.CAN_DO, b"f" * 33)
        assert w.expect(C.ERROR).args[0] == b"ARGUMENT_TOO_LARGE"
        w.submit(b"f", b"x" * 900, ptype=C.SUBMIT_JOB_BG)
        w.send(C.SUBMIT_JOB_BG, b"f", b"", b"x" * 200)
        assert w.expect(C.ERROR).args[0] == b"QUEUE_ERROR"
        assert w.admin("version").ok  # none of these is fatal
    with Wire(s.host, s.port) as w:
        w.send_raw(b"status " + b"x" * 300 + b"\n")
        assert w.expect(C.ERROR).args[0] == b"ARGUMENT_TOO_LARGE"
        assert w.closed_by_server()
    with Wire(s.host, s.port) as w:
        w.send(C.ECHO_REQ, b"e" * 5000)
        assert w.expect(C.ERROR).args[0] == b"ARGUMENT_TOO_LARGE"
        assert w.closed_by_server()


def test_admin_commands_apply_the_function_name_limit(server_factory):
    s = server_factory("geartrain", max_function_length=32)
    with Wire(s.host, s.port) as admin:
        for command in (b"create function " + b"f" * 33, b"maxqueue " + b"g" * 33 + b" 5"):
            answer = admin.admin(command)
            assert answer.lines[0].startswith(b"ERR"), (command[:20], answer)
        assert admin.admin("status").lines == ()
    assert not s.server.broker.functions


def test_max_connections_on_geard_refuses_extras_and_serves_again_when_they_leave(server_factory):
    s = server_factory("geard", "--max-connections", "3")
    held = [Wire(s.host, s.port) for _ in range(3)]
    try:
        assert held[0].admin("version").ok
        with Wire(s.host, s.port) as extra:
            assert extra.closed_by_server()
    finally:
        for w in held:
            w.close()
    wait_until(lambda: _serves(s.host, s.port), what="served again once the crowd left")


def _serves(host: str, port: int) -> bool:
    try:
        with Wire(host, port, timeout=2) as w:
            return w.admin("version").ok
    except (OSError, AssertionError, ConnectionError):
        return False



# ------------------------------------------------------------------------------------------- server restarts


def start_geard_on(port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "geartrain.server.cli", "-d", "-q", "memory", "-L", "127.0.0.1",
                                "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, process=process)
    except BaseException:
        stop_process(process)
        raise
    return process


def test_gear_and_gearman_workers_come_back_by_themselves_after_geard_is_killed_and_restarted():
    host, port = "127.0.0.1", free_port()
    server = start_geard_on(port)
    gear_worker = gear.Worker("fault-gear-worker")
    gm_worker = gearman.GearmanWorker([f"{host}:{port}"])
    threads: list[threading.Thread] = []

    def serve_gear() -> None:
        while True:
            try:
                job = gear_worker.getJob()
            except gear.InterruptedError:
                return
            job.sendWorkComplete(job.arguments[::-1])

    def jobs_come_back(label: bytes) -> None:
        with Wire(host, port) as client:
            for name in (b"fault-gear", b"fault-gearman"):
                handle = client.submit(name, label + name)
                assert client.expect(C.WORK_COMPLETE, timeout=30).args == (handle, (label + name)[::-1]), name

    def both_registered() -> bool:
        try:
            with Wire(host, port, timeout=5) as admin:
                rows = {line.split(b"\t")[0]: line.split(b"\t")[3] for line in admin.admin("status").lines}
        except OSError:
            return False
        return rows.get(b"fault-gear") == b"1" and rows.get(b"fault-gearman") == b"1"

    try:
        gear_worker.addServer(host, port)
        gear_worker.waitForServer(30)
        gear_worker.registerFunction("fault-gear")
        gm_worker.register_task("fault-gearman", lambda worker, job: job.data[::-1])
        threads = [threading.Thread(target=serve_gear, daemon=True),
                   threading.Thread(target=gm_worker.work, kwargs={"poll_timeout": 0.5}, daemon=True)]
        for thread in threads:
            thread.start()
        wait_until(both_registered, deadline=30, what="both workers registered")
        jobs_come_back(b"before ")
        kill9(server)  # a crash: no goodbye to anyone
        server = start_geard_on(port)
        wait_until(both_registered, deadline=60, what="both workers registered again after the restart")
        jobs_come_back(b"after ")
    finally:
        gear_worker.shutdown()
        gm_worker.shutdown()
        for thread in threads:
            thread.join(30)
        stop_process(server)
    assert not any(thread.is_alive() for thread in threads)
