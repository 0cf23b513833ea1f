"""Helpers for the gear tests: clients and workers that are always shut down, a worker thread, servers restarted
on the same port, and a scripted fake server for behaviours no real server shows on demand."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import gear
from geartrain.protocol import AdminLine, Decoder, Packet
from geartrain.protocol import constants as C

from conftest import RunningServer, start_gearmand, start_geartrain

WAIT = 30.0  # generous: only a failing test waits it out


def wait_until(predicate: Callable[[], object], timeout: float = WAIT, interval: float = 0.01) -> object:
    """Poll predicate until it is truthy (returned) or fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


class Pool:
    """Clients and workers made by a test, shut down at its end whatever happens."""

    def __init__(self) -> None:
        self.objects: list = []
        self.threads: list[threading.Thread] = []

    def client(self, server: RunningServer | None = None, cls: type = gear.Client, **kwargs) -> gear.Client:
        client = cls(**kwargs)
        self.objects.append(client)
        if server is not None:
            client.addServer(server.host, server.port)
            client.waitForServer(WAIT)
        return client

    def worker(
        self, server: RunningServer | None = None, *functions: str, cls: type = gear.Worker, client_id="w", **kwargs
    ) -> gear.Worker:
        worker = cls(client_id, **kwargs)
        self.objects.append(worker)
        for name in functions:
            worker.registerFunction(name)
        if server is not None:
            worker.addServer(server.host, server.port)
            worker.waitForServer(WAIT)
        return worker

    def serve(self, worker: gear.Worker, handler: Callable) -> threading.Thread:
        """Run handler(job) for every job the worker gets, in a thread, until the worker is shut down."""

        def loop() -> None:
            while True:
                try:
                    job = worker.getJob()
                except gear.InterruptedError:
                    return
                handler(job)

        thread = threading.Thread(target=loop, daemon=True, name="test worker")
        thread.start()
        self.threads.append(thread)
        return thread

    def close(self) -> None:
        for obj in reversed(self.objects):
            if obj.running:
                obj.shutdown()
        for thread in self.threads:
            thread.join(WAIT)


@pytest.fixture
def pool() -> Iterator[Pool]:
    p = Pool()
    try:
        yield p
    finally:
        p.close()


def reverse(job: gear.WorkerJob) -> None:
    job.sendWorkComplete(job.arguments[::-1])


def admin(client: gear.Client, request: gear.AdminRequest) -> bytes:
    client.getConnection().sendAdminRequest(request, timeout=WAIT)
    return request.response


def status_of(client: gear.Client, function: str) -> tuple[int, int, int] | None:
    """(total, running, workers) of one function from the "status" admin command."""
    response = admin(client, gear.StatusAdminRequest())
    for line in response.decode().splitlines():
        fields = line.split("\t")
        if fields[0] == function:
            return int(fields[1]), int(fields[2]), int(fields[3])
    return None


# -- servers restarted on the same port --------------------------------------------------------------------


def start_on_port(kind: str, host: str, port: int) -> RunningServer:
    """Start a server of this kind on a given port (retrying while the old one lets go of it)."""
    if kind == "gearmand":
        return start_gearmand(host=host, port=port)
    return start_geartrain(host=host, port=port)


# -- a scripted fake server ----------------------------------------------------------------------------------


class FakeServer:
    """A one-connection loopback server run by a script: script(peer) in a thread, where peer can read the
    client's packets and admin lines and send raw bytes."""

    def __init__(self, script: Callable[[FakePeer], None]) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.host = "127.0.0.1"
        self.port = self.listener.getsockname()[1]
        self.script = script
        self.error: BaseException | None = None
        self.peers: list[FakePeer] = []
        self.thread = threading.Thread(target=self._run, daemon=True, name="fake gearman server")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.listener.settimeout(WAIT)
            sock, _ = self.listener.accept()
            peer = FakePeer(sock)
            self.peers.append(peer)
            self.script(peer)
        except BaseException as exc:  # reported by close()
            self.error = exc

    def close(self) -> None:
        self.listener.close()
        for peer in self.peers:
            peer.sock.close()
        self.thread.join(WAIT)


class FakePeer:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(WAIT)
        self.decoder = Decoder(accept=C.REQ)
        self.events: list = []
        self.received: list = []

    def next(self):
        while not self.events:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("client closed")
            self.events.extend(self.decoder.feed(data))
        event = self.events.pop(0)
        self.received.append(event)
        return event

    def expect_line(self) -> bytes:
        event = self.next()
        assert isinstance(event, AdminLine), event
        return event.line

    def expect_packet(self, ptype: int | None = None) -> Packet:
        event = self.next()
        assert isinstance(event, Packet), event
        if ptype is not None:
            assert event.ptype == ptype, (C.TYPE_NAMES.get(event.ptype), C.TYPE_NAMES.get(ptype))
        return event

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
