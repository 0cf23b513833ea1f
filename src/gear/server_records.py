"""The records of gear's server model: jobs, connections and admin requests as gear.Server and its subclasses
see them (gear 0.16's ServerJob, ServerConnection and ServerAdminRequest)."""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections import deque
from typing import Any

from geartrain.protocol import AdminLine, Decoder
from geartrain.protocol import Packet as WirePacket

from .errors import RetryIOError
from .job import BinaryJob
from .packet import AdminRequest, Packet

__all__ = ["ServerAdminRequest", "ServerConnection", "ServerJob"]


class ServerJob(BinaryJob):
    """A job record of the server (gear's model): ``handle``, ``name``, ``arguments``, ``unique``,
    ``client_connection`` (None for a background job), ``worker_connection`` (once assigned), ``running``,
    ``numerator``/``denominator``. Subclasses may add attributes (Zuul's ``waiting``)."""

    def __init__(self, handle: bytes, name: Any, arguments: Any, client_connection: Any, unique: Any = None) -> None:
        super().__init__(name, arguments, unique)
        self.handle = handle
        self.client_connection = client_connection
        self.worker_connection = None
        del self.connection


class ServerAdminRequest(AdminRequest):
    """An admin command received by the server: ``command`` is the line, ``connection`` who sent it."""

    def __init__(self, connection: Any) -> None:
        super().__init__()
        self.connection = connection

    def isComplete(self, data: bytes) -> tuple[bool, bytes | None]:
        end = data.find(b"\n")
        if end == -1:
            return False, None
        self.command = data[:end]
        return True, data[end + 1:]


class _PeerSocket:
    """What a ServerConnection of the engine has for ``conn``: the descriptor number and a way to close it."""

    def __init__(self, connection: ServerConnection) -> None:
        self._connection = connection

    def fileno(self) -> int:
        peer = self._connection._peer
        return peer.id if peer is not None else -1

    def setblocking(self, flag: bool) -> None:
        pass

    def shutdown(self, how: int = socket.SHUT_RDWR) -> None:
        self.close()

    def close(self) -> None:
        self._connection._close()


class ServerConnection:
    """One connection to the server, as gear's Server and its subclasses see it.

    ``functions`` (the names it registered), ``related_jobs`` ({handle: ServerJob} it submitted or runs),
    ``client_id``, ``host``, ``port``, ``ssl_subject``, ``state`` (INIT, SLEEP, AWAKE), sendPacket() and sendRaw().
    Built by the server for each connection; ``ServerConnection(addr, sock, use_ssl, client_id)`` over a
    non-blocking socket also works, as in gear (readPacket() then reads it, raising RetryIOError when it would
    block).
    """

    def __init__(self, addr: Any, conn: Any, use_ssl: bool, client_id: Any) -> None:
        self._setup(client_id)
        self.host = addr[0]
        self.port = addr[1]
        self.conn = conn
        self.conn.setblocking(0)
        self.use_ssl = use_ssl
        if use_ssl:
            for field in conn.getpeercert().get("subject", ()):
                if field[0][0] == "commonName":
                    self.ssl_subject = field[0][1]

    def _setup(self, client_id: Any) -> None:
        name = client_id.decode("utf-8", "replace") if isinstance(client_id, bytes) else client_id
        self.log = logging.getLogger(f"gear.ServerConnection.{name}" if name else "gear.ServerConnection")
        self.send_queue: list[bytes] = []
        self.admin_requests: list[AdminRequest] = []
        self.client_id: Any = None
        self.functions: set[bytes] = set()
        self.related_jobs: dict[bytes, ServerJob] = {}
        self.ssl_subject: str | None = None
        self.use_ssl = False
        self._peer: Any = None
        self._server: Any = None
        self._decoder = Decoder(accept=b"")
        self._events: deque = deque()
        self.changeState("INIT")

    @classmethod
    def _over_peer(cls, peer: Any, server: Any) -> ServerConnection:
        """The connection of an engine peer (its bytes go through the engine's write batching)."""
        self = cls.__new__(cls)
        self._setup(server.client_id)
        self.host = peer.address
        self.port = None  # the engine keeps the peer's address only
        self.conn = _PeerSocket(self)
        self.use_ssl = peer.subject is not None
        self.ssl_subject = peer.subject
        self._peer = peer
        self._server = server
        return self

    def changeState(self, state: str) -> None:
        self.state = state
        self.state_time = time.time()

    def __repr__(self) -> str:
        return f"<gear.ServerConnection 0x{id(self):x} name: {self.client_id} host: {self.host} port: {self.port}>"

    # -- sending ------------------------------------------------------------------------------------------

    def sendPacket(self, packet: Packet) -> None:
        """Queue a packet to this connection (sent at the end of the server's loop pass)."""
        self.sendRaw(packet.toBinary())

    def sendRaw(self, data: bytes) -> None:
        """Queue raw bytes (an admin answer) to this connection."""
        if self._peer is None:
            self.send_queue.append(data)
            self.sendQueuedData()
            return
        self._server._inLoop(self._write, bytes(data))

    def _write(self, data: bytes) -> None:
        peer = self._peer
        if peer is not None and not peer.closed:
            peer.send(data)
            self._server.server.schedule_flush()

    def _close(self) -> None:
        if self._peer is not None:
            self._server._inLoop(self._abort)
        elif self.conn is not None:
            self.conn.close()

    def _abort(self) -> None:
        transport = self._peer.conn.transport if self._peer.conn is not None else None
        if transport is not None:
            transport.abort()

    def sendQueuedData(self) -> None:
        """Send what the socket takes now (a connection built over a socket)."""
        import ssl  # here: `import gear` does not load ssl

        while self.send_queue:
            data = self.send_queue.pop(0)
            try:
                sent = self.conn.send(data)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                sent = 0
            if sent < len(data):
                self.send_queue.insert(0, data[sent:])
                return

    # -- reading (a connection built over a socket) -------------------------------------------------------

    def readPacket(self) -> Any:
        """One received Packet or ServerAdminRequest; RetryIOError when the socket has no more now; None when
        it closed."""
        import ssl  # here: `import gear` does not load ssl

        while not self._events:
            try:
                data = self.conn.recv(4096)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise RetryIOError() from None
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise RetryIOError() from None
                raise
            if not data:
                return None
            for event in self._decoder.feed(data):
                if type(event) is WirePacket:
                    self._events.append(Packet._received(event.magic, event.ptype, event.args, self))
                elif type(event) is AdminLine:
                    request = ServerAdminRequest(self)
                    request.command = event.line
                    self._events.append(request)
                else:
                    self.log.warning("Unusable packet from %s: %s", self, event.message)
        return self._events.popleft()
