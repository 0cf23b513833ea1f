"""Memory of a geard process: buffers of peers that vanish mid-packet, and a drained backlog of large jobs, go back
to the system (VmRSS measured in /proc; bounds far from both the fixed and the broken figures), while the pages of
finished large jobs serve the next ones (minor faults in /proc)."""

from __future__ import annotations

import math
import socket
import statistics
import struct
import time

from geartrain.protocol import constants as C

from wire import Wire

MiB = 1 << 20
DEADLINE = 120.0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


def wait_rss_at_least(pid: int, mib: float) -> float:
    end = time.monotonic() + DEADLINE
    while (now := rss_mib(pid)) < mib:
        assert time.monotonic() < end, f"the server never read the partial packets (RSS {now:.0f} MiB)"
        time.sleep(0.02)
    return now


def settled(server, below: float = math.inf) -> float:
    """RSS after a round of echo traffic on fresh connections. Free heap pages go back at the server's next trim
    (every memory.TRIM_INTERVAL seconds): with `below`, the first reading under it, or the last one at the deadline."""
    for _ in range(20):
        with Wire(server.host, server.port) as w:
            w.send(C.ECHO_REQ, b"settle")
            w.expect(C.ECHO_RES)
    end = time.monotonic() + DEADLINE
    while (now := rss_mib(server.process.pid)) >= below and time.monotonic() < end:
        time.sleep(0.05)
    return now


def partial_packets_then_reset(server, peers: int, length: int, sent: int, bound: float
                               ) -> tuple[float, float, float]:
    pid = server.process.pid
    before = settled(server)
    socks = []
    try:
        for _ in range(peers):
            sock = socket.create_connection((server.host, server.port))
            socks.append(sock)
            sock.sendall(b"\0REQ" + struct.pack(">II", C.SUBMIT_JOB_BG, length) + b"f\0\0")
            chunk = b"x" * MiB
            for offset in range(0, sent, MiB):
                sock.sendall(chunk[:min(MiB, sent - offset)])
        # Wait until the server holds most of what was sent (so the reset hits buffers, not kernel queues).
        peak = wait_rss_at_least(pid, before + 0.7 * peers * sent / MiB)
    finally:
        for sock in socks:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, no goodbye
            sock.close()
    return before, peak, settled(server, below=before + bound)


def test_buffers_of_peers_that_reset_mid_packet_are_freed_at_once(server_factory):
    server = server_factory("geard", "--max-packet-size", str(32 * MiB))
    before, peak, after = partial_packets_then_reset(server, 16, 16 * MiB, 15 * MiB, 48)
    assert after - before < 48, f"RSS {before:.0f} -> {peak:.0f} -> {after:.0f} MiB: buffers of gone peers kept"
    before, peak, after = partial_packets_then_reset(server, 300, MiB, MiB // 2, 32)
    assert after - before < 32, f"RSS {before:.0f} -> {peak:.0f} -> {after:.0f} MiB: buffers of gone peers kept"


def test_memory_goes_back_after_a_backlog_of_large_jobs_drains(server_factory, tmp_path):
    server = server_factory("geard", "--queue-type", "sqlite", "--sqlite-db", str(tmp_path / "q.db"))
    pid = server.process.pid
    count = 200
    with Wire(server.host, server.port, timeout=DEADLINE) as client, \
            Wire(server.host, server.port, timeout=DEADLINE) as worker:
        before = settled(server)
        payload = b"p" * MiB
        for i in range(count):
            client.send(C.SUBMIT_JOB_BG, b"big", b"u%d" % i, payload)
        for _ in range(count):
            client.expect(C.JOB_CREATED)
        peak = rss_mib(pid)
        worker.register(b"big")
        for _ in range(count):
            job = worker.grab()
            worker.send(C.WORK_COMPLETE, job.args[0], b"")
        assert client.admin("status").lines in ((), (b"big\t0\t0\t1",))
        after = settled(server, below=before + 48)
    assert peak - before > count * 0.8, f"the backlog never was in memory ({before:.0f} -> {peak:.0f} MiB)"
    assert after - before < 48, f"RSS {before:.0f} -> {peak:.0f} -> {after:.0f} MiB after {count} MiB drained"


def minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])  # minflt, field 10 of man proc


def test_the_memory_of_finished_large_jobs_serves_the_next_ones(server_factory):
    # A 1 MiB payload in fresh pages costs the server 256 page faults, and a job has two (the data and the
    # result): over 500 per job. With the pages of finished payloads reused, a job costs a handful (and a trim of
    # the heap, once a second, costs the job after it its 500).
    server = server_factory("geard")
    pid = server.process.pid
    with Wire(server.host, server.port, timeout=DEADLINE) as client, \
            Wire(server.host, server.port, timeout=DEADLINE) as worker:
        worker.register(b"big")

        def job(i: int) -> None:
            payload = bytes([i % 251]) * MiB
            handle = client.submit(b"big", payload)
            assigned = worker.grab()
            assert assigned.args[3] == payload
            worker.send(C.WORK_COMPLETE, handle, payload)
            assert client.expect(C.WORK_COMPLETE).args == (handle, payload)

        for i in range(5):
            job(i)
        faults = []
        for i in range(21):
            before = minor_faults(pid)
            job(i)
            faults.append(minor_faults(pid) - before)
    # The median job: a trim can only follow a job when a second has passed, however slow the machine.
    per_job = statistics.median(faults)
    assert per_job < 128, f"{per_job:.0f} page faults per 1 MiB job ({faults}): payloads are in fresh pages"
