"""Helpers of the cluster tests: geard nodes on one database, workers that record what ran, waits."""

from __future__ import annotations

import threading
import time

import psycopg

from geartrain.protocol import constants as C

from wire import Wire

# Small leases so that a take-over happens within seconds; the deadlines below are generous on purpose.
LEASE, TAKEOVER = "0.2", "1.5"
DEADLINE = 120.0


def node(server_factory, dsn: str, name: str, *extra: str, port: int | None = None,
         takeover: str = TAKEOVER):
    return server_factory("geard", "--queue-type", "postgres", "--postgres-dsn", dsn, "--cluster-node", name,
                          "--lease-interval", LEASE, "--takeover-after", takeover, *extra, port=port)


def submit_many(server, count: int, function: bytes = b"work", prefix: bytes = b"j") -> list[bytes]:
    """Pipeline `count` background submits in chunks; every one is acknowledged before this returns."""
    handles = []
    with Wire(server.host, server.port, timeout=DEADLINE) as client:
        for start in range(0, count, 1000):
            chunk = range(start, min(count, start + 1000))
            client.send_raw(b"".join(client.conn.send_packet(C.SUBMIT_JOB_BG, function, b"%s%d" % (prefix, i),
                                                             b"data-%d" % i) for i in chunk))
            handles += [client.expect(C.JOB_CREATED).args[0] for _ in chunk]
    return handles


class Runner(threading.Thread):
    """A worker on one node: grabs, records the unique, completes; sleeps with PRE_SLEEP when idle."""

    def __init__(self, server, ran: list[bytes], lock: threading.Lock, function: bytes = b"work") -> None:
        super().__init__(daemon=True)
        self.wire = Wire(server.host, server.port, timeout=DEADLINE)
        self.wire.register(function)
        self.ran, self.lock = ran, lock
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        wire = self.wire
        try:
            while not self.done.is_set():
                wire.send(C.GRAB_JOB_UNIQ)
                event = wire.next_event()
                if event.ptype == C.NO_JOB:
                    wire.send(C.PRE_SLEEP)
                    try:
                        while wire.next_event(0.3).ptype != C.NOOP:
                            pass
                    except TimeoutError:
                        pass
                    continue
                assert event.ptype == C.JOB_ASSIGN_UNIQ, event
                handle, _, unique, _ = event.args
                with self.lock:
                    self.ran.append(unique)
                wire.send(C.WORK_COMPLETE, handle, b"")
        except BaseException as exc:  # reported by stop()
            if not self.done.is_set():
                self.error = exc

    def stop(self) -> None:
        self.done.set()
        self.join(30)
        self.wire.close()
        assert self.error is None, self.error


def wait_for(condition, deadline: float = DEADLINE, what: str = "the condition") -> float:
    """Poll until condition() is true; the seconds it took."""
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < deadline, f"{what} did not happen within {deadline}s"
        time.sleep(0.05)
    return time.monotonic() - began


def rows(dsn: str, sql: str = "SELECT count(*) FROM geartrain_jobs") -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def queued(server, function: bytes = b"work") -> int:
    with Wire(server.host, server.port) as admin:
        for line in admin.admin("status").lines:
            name, total, _running, _workers = line.split(b"\t")
            if name == function:
                return int(total)
    return 0
