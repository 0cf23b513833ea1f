"""One socket to one server, driven by geartrain's sans-I/O ClientConnection.

Connects with a timeout, sets TCP_NODELAY and keepalive, wraps TLS for the dict host form, then runs
non-blocking under the managers' selector loops: bytes go out from a buffer, bytes in become protocol events.
"""

from __future__ import annotations

import errno
import socket
import ssl
from typing import Any

from geartrain.protocol import ClientConnection, ClientEvent
from geartrain.protocol.address import parse_address
from geartrain.sockets import RECV_SIZE, client_context, recv_some, tune

from .constants import DEFAULT_CONNECT_TIMEOUT, DEFAULT_GEARMAN_PORT
from .encoding import to_wire
from .errors import ConnectionError, GearmanError


def parse_host(entry: Any) -> dict:
    """One host_list entry ('host:port', '[v6]:port', 'host', (host, port), bytes, or the TLS dict) as keywords."""
    if isinstance(entry, dict):
        unknown = set(entry) - {"host", "port", "keyfile", "certfile", "ca_certs"}
        if unknown or "host" not in entry:
            raise GearmanError(f"bad host entry {entry!r}: expected host, port, keyfile, certfile, ca_certs")
        host, port = _address((entry["host"], entry.get("port") or DEFAULT_GEARMAN_PORT))
        return {
            "host": host,
            "port": port,
            "keyfile": entry.get("keyfile"),
            "certfile": entry.get("certfile"),
            "ca_certs": entry.get("ca_certs"),
        }
    host, port = _address(entry)
    return {"host": host, "port": port}


def _address(entry: Any) -> tuple[str, int]:
    try:
        return parse_address(entry, DEFAULT_GEARMAN_PORT)
    except ValueError as exc:
        raise GearmanError(str(exc)) from None


class GearmanConnection:
    """A connection to one server: attributes as in python-gearman (gearman_host, gearman_port, connected)."""

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_GEARMAN_PORT,
        keyfile: str | None = None,
        certfile: str | None = None,
        ca_certs: str | None = None,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.gearman_host = host
        self.gearman_port = int(port)
        self.keyfile = keyfile
        self.certfile = certfile
        self.ca_certs = ca_certs
        self.connect_timeout = connect_timeout
        self.gearman_socket: socket.socket | None = None
        self.connected = False
        self.protocol = ClientConnection()
        self._out = bytearray()

    @property
    def use_ssl(self) -> bool:
        return bool(self.keyfile or self.certfile or self.ca_certs)

    @property
    def address(self) -> str:
        return f"{self.gearman_host}:{self.gearman_port}"

    def fileno(self) -> int:
        if self.gearman_socket is None:
            raise ConnectionError(f"{self.address}: not connected")
        return self.gearman_socket.fileno()

    def connect(self) -> None:
        """Open the socket (blocking, bounded by connect_timeout), then switch it to non-blocking."""
        if self.connected:
            return
        self.close()
        try:
            sock = socket.create_connection((self.gearman_host, self.gearman_port), timeout=self.connect_timeout)
        except OSError as exc:
            raise ConnectionError(f"could not connect to {self.address}: {exc}") from exc
        try:
            tune(sock, keepalive=True)
            if self.use_ssl:
                sock = self._ssl_context().wrap_socket(sock, server_hostname=self.gearman_host)
            sock.setblocking(False)
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise ConnectionError(f"could not set up the connection to {self.address}: {exc}") from exc
        self.gearman_socket = sock
        self.connected = True
        self.protocol.reset()
        self._out.clear()

    def _ssl_context(self) -> ssl.SSLContext:
        # python-gearman verified the server only when given ca_certs.
        return client_context(self.keyfile, self.certfile, self.ca_certs, verify=bool(self.ca_certs))

    def close(self) -> None:
        if self.gearman_socket is not None:
            try:
                self.gearman_socket.close()
            except OSError:
                pass
        self.gearman_socket = None
        self.connected = False
        self._out.clear()

    # -- writing ---------------------------------------------------------------------------------------
    def send_command(self, ptype: int, *args: bytes) -> None:
        """Queue one binary request packet."""
        self._out += self.protocol.send_packet(ptype, *args)

    def send_raw(self, data: bytes) -> None:
        """Queue bytes a session built."""
        self._out += data

    def send_admin(self, command: str | bytes) -> None:
        """Queue one admin text command; its answer arrives as an AdminResponse."""
        self._out += self.protocol.send_admin(to_wire(command, "admin command"))

    @property
    def writable(self) -> bool:
        return bool(self._out)

    def flush(self) -> bool:
        """Write what the socket takes now; True when everything is out. ConnectionError when it broke."""
        sock = self.gearman_socket
        if sock is None:
            raise ConnectionError(f"{self.address}: not connected")
        while self._out:
            try:
                sent = sock.send(self._out)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return False
            except OSError as exc:
                raise ConnectionError(f"write to {self.address} failed: {exc}") from exc
            if sent <= 0:
                return False
            del self._out[:sent]
        return True

    # -- reading ---------------------------------------------------------------------------------------
    def read(self) -> list[ClientEvent]:
        """Read everything available now and return the events it completes; ConnectionError at EOF."""
        sock = self.gearman_socket
        if sock is None:
            raise ConnectionError(f"{self.address}: not connected")
        events: list[ClientEvent] = []
        while True:
            try:
                chunk = recv_some(sock)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    break
                raise ConnectionError(f"read from {self.address} failed: {exc}") from exc
            if not chunk:
                events_so_far = events
                exc = ConnectionError(f"{self.address} closed the connection")
                exc.events = events_so_far  # type: ignore[attr-defined]
                raise exc
            try:
                events.extend(self.protocol.receive_data(chunk))
            except Exception as exc:  # geartrain.protocol.ProtocolError: the stream is unusable
                raise ConnectionError(f"{self.address} sent an undecodable stream: {exc}") from exc
            if len(chunk) < RECV_SIZE and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                break
        return events

    def __repr__(self) -> str:
        return f"<GearmanConnection {self.address} connected={self.connected}>"
