"""Helpers of the cluster tests: geard nodes on one database, workers that record what ran, waits."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import psycopg

from geartrain.protocol import constants as C

from wire import Wire

# Small leases so that a take-over happens within seconds; the deadlines below are generous on purpose.
LEASE, TAKEOVER = "0.2", "1.5"
DEADLINE = 90.0  # under pytest's 120 s timeout, so a wait that runs out says what it waited for


def node(server_factory, dsn: str, name: str, *extra: str, port: int | None = None,
         takeover: str = TAKEOVER, lease: str = LEASE):
    return server_factory("geard", "--queue-type", "postgres", "--postgres-dsn", dsn, "--cluster-node", name,
                          "--lease-interval", lease, "--takeover-after", takeover, *extra, port=port)


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
                while event.ptype == C.NOOP:  # the wake-up of a sleep we stopped waiting for
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


@contextlib.contextmanager
def workers(*servers) -> Iterator[list[bytes]]:
    """A Runner on each server for the with block, all recording into one list (the uniques that ran); every
    runner is stopped afterwards, and one that failed fails the test."""
    ran: list[bytes] = []
    lock = threading.Lock()
    runners = [Runner(server, ran, lock) for server in servers]
    for runner in runners:
        runner.start()
    try:
        yield ran
    finally:
        for runner in runners:
            runner.stop()


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


class Link:
    """A TCP relay between one node and PostgreSQL that the test can cut (connections reset, new ones refused)
    and mend: a network partition between that node and the database, and nobody else."""

    def __init__(self, target_port: int) -> None:
        import socket

        self.target = ("127.0.0.1", target_port)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.sockets: list = []
        self.lock = threading.Lock()
        self.listener = None
        self.mend()

    def mend(self) -> None:
        import socket

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        import socket

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.close()
            except OSError:
                pass

    def cut(self) -> None:
        import socket

        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.cut()
