"""A blocking raw-protocol peer for tests, over geartrain.protocol.ClientConnection."""

from __future__ import annotations

import socket
import ssl
import time
from collections import deque

from geartrain.protocol import AdminResponse, ClientConnection, Packet
from geartrain.protocol import constants as C


class Wire:
    """One TCP connection speaking raw packets and admin lines, with deadlines on every wait."""

    def __init__(self, host: str, port: int, timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            try:
                sock = ssl_context.wrap_socket(sock, server_hostname=host)
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.conn = ClientConnection()
        self.timeout = timeout
        self.events: deque = deque()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, ptype: int, *args: bytes) -> None:
        self.sock.sendall(self.conn.send_packet(ptype, *args))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer from the server before the deadline")
        self.sock.settimeout(remaining)
        data = self.sock.recv(1 << 20)
        if not data:
            return False
        self.events.extend(self.conn.receive_data(data))
        return True

    def next_event(self, timeout: float | None = None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.events:
            if not self._fill(deadline):
                raise ConnectionError("the server closed the connection")
        return self.events.popleft()

    def expect(self, ptype: int, timeout: float | None = None) -> Packet:
        event = self.next_event(timeout)
        assert isinstance(event, Packet) and event.ptype == ptype, f"expected {C.TYPE_NAMES[ptype]}, got {event}"
        return event

    def admin(self, command: str | bytes, timeout: float | None = None) -> AdminResponse:
        self.sock.sendall(self.conn.send_admin(command))
        event = self.next_event(timeout)
        assert isinstance(event, AdminResponse), event
        return event

    def closed_by_server(self, timeout: float | None = None) -> bool:
        """Read until EOF (True) or the deadline (TimeoutError)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            while self._fill(deadline):
                pass
        except (ConnectionResetError, ssl.SSLError):
            pass
        return True

    # A few conveniences for the common sequences.
    def submit(self, name: bytes, data: bytes = b"", unique: bytes = b"", ptype: int = C.SUBMIT_JOB) -> bytes:
        self.send(ptype, name, unique, data)
        return self.expect(C.JOB_CREATED).args[0]

    def register(self, *names: bytes) -> None:
        for name in names:
            self.send(C.CAN_DO, name)

    def grab(self, timeout: float | None = None) -> Packet:
        """Grab a job, sleeping through NO_JOB/PRE_SLEEP/NOOP until one is assigned."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            self.send(C.GRAB_JOB_UNIQ)
            event = self.next_event(deadline - time.monotonic())
            if isinstance(event, Packet) and event.ptype == C.JOB_ASSIGN_UNIQ:
                return event
            assert isinstance(event, Packet) and event.ptype == C.NO_JOB, event
            self.send(C.PRE_SLEEP)
            self.expect(C.NOOP, deadline - time.monotonic())
