"""One connection to a Gearman server: the socket, geartrain's sans-I/O ClientSession over it, and the
requests waiting on it (submits, options, admin commands, echoes, status queries).

The session matches each reply to the request it answers (a reply only answers a request of its own kind, so a
server that ignores OPTION_REQ shifts nothing) and names every job waiting on a handle (coalesced submits share
one); received packets carry what they answer (``_task``) or the job they are for (``_job``)."""

from __future__ import annotations

import builtins
import contextlib
import errno
import logging
import selectors
import socket
import threading
import time
import uuid
from collections import deque
from typing import Any

from geartrain.protocol import AdminLine, AdminResponse, PacketError, ProtocolError
from geartrain.protocol import constants as wire
from geartrain.protocol.session import ClientSession, Reply, Unanswered, Unsolicited, Work, WorkerSession
from geartrain.sockets import RECV_SIZE, client_context, recv_some, tune

from . import constants
from .errors import ConnectionError, InvalidDataError, TimeoutError
from .job import to_bytes
from .packet import AdminRequest, Packet, request_frame

__all__ = ["Connection"]

#: The token of a request sent through sendPacket() by code outside gear's own request paths: its answer goes
#: to the oldest pending task, as gear always did.
RAW = object()
#: Request types whose answer comes back in order (the session must see every one of them sent).
_ANSWERED = frozenset((*wire.SUBMIT_TYPES, wire.GET_STATUS, wire.GET_STATUS_UNIQUE, wire.ECHO_REQ, wire.OPTION_REQ))

_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY, 0}


class _Closed(Exception):
    """The peer closed the connection."""


def _name(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class Connection:
    """A connection to a Gearman server.

    :arg str host: the server's host name or address.
    :arg int port: its port.
    :arg str ssl_key: path to the TLS private key.
    :arg str ssl_cert: path to the TLS certificate.
    :arg str ssl_ca: path to the CA certificate. TLS is used only when all three are given; the server's
        certificate is verified against the CA, without a host name check by default (``check_hostname``),
        since gear deployments identify peers by the certificate's Common Name.
    :arg str client_id: appended to the logger name (e.g. gear.Connection.client_id).
    :arg bool keepalive: whether to use TCP keepalives (with tcp_keepidle, tcp_keepintvl, tcp_keepcnt).
    :arg float connect_timeout: seconds a connection attempt (TCP and TLS handshake) may take.
    :arg float send_timeout: seconds a send may block before the connection is considered lost.

    Sockets get TCP_NODELAY: each small request goes out at once.
    """

    #: Verify that the server certificate matches the host name (off: gear identifies peers by CN).
    check_hostname = False

    def __init__(
        self,
        host: str,
        port: int,
        ssl_key: str | None = None,
        ssl_cert: str | None = None,
        ssl_ca: str | None = None,
        client_id: Any = "unknown",
        keepalive: bool = False,
        tcp_keepidle: int = 7200,
        tcp_keepintvl: int = 75,
        tcp_keepcnt: int = 9,
        connect_timeout: float | None = 10.0,
        send_timeout: float | None = 30.0,
    ) -> None:
        self.log = logging.getLogger(f"gear.Connection.{_name(client_id)}")
        self.host = host
        self.port = port
        self.ssl_key = ssl_key
        self.ssl_cert = ssl_cert
        self.ssl_ca = ssl_ca
        self.keepalive = keepalive
        self.tcp_keepidle = tcp_keepidle
        self.tcp_keepintvl = tcp_keepintvl
        self.tcp_keepcnt = tcp_keepcnt
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.use_ssl = bool(ssl_key and ssl_cert and ssl_ca)
        self._ssl_context = None
        self.echo_lock = threading.Lock()
        self.send_lock = threading.RLock()
        self._read_lock = threading.Lock()
        #: Serialises TLS reads and writes (one SSL object is not safe for two threads at once).
        self._io_lock: Any = threading.Lock() if self.use_ssl else contextlib.nullcontext()
        self._would_block: tuple[type[BaseException], ...] = (BlockingIOError,)
        # Either magic, as gear's Connection reads (gear's own tests feed it REQ packets).
        self._protocol = ClientSession(exceptions=False, accept=b"")
        #: A Worker's side of this connection: its abilities and the grab machine, whose state is ``state``.
        self._worker = WorkerSession()
        self._events: deque[Any] = deque()
        #: The Client or Worker whose poll loop reads this connection (None: callers read it themselves).
        self._owner: Any = None
        # Reconnection bookkeeping of the owner's poll loop.
        self._retry_at = 0.0
        self._backoff: Any = None  # the owner's Backoff for this server, made on first use
        self._connector: _Connector | None = None
        self._init()

    def _waitingJobs(self) -> list[Any]:
        """Every job waiting for a result on this connection: related_jobs holds one per handle, the session
        also knows the others that coalesced on a handle."""
        jobs = {id(job): job for job in self.related_jobs.values()}
        for tasks in self._protocol.handles.values():
            for task in tasks:
                if task is not RAW:
                    jobs.setdefault(id(task.job), task.job)
        return list(jobs.values())

    def _init(self) -> None:
        self.conn: Any = None
        self.connected = False
        self.connect_time: float | None = None
        self.related_jobs: dict[bytes, Any] = {}
        self.pending_tasks: list[Any] = []
        self.admin_requests: list[AdminRequest] = []
        self.echo_conditions: dict[bytes, threading.Event] = {}
        self._status_waiters: dict[bytes, deque] = {}
        self.options: set[bytes] = set()
        #: A prefetching Worker's bookkeeping (gear.worker): jobs from this socket that getJob() returned and
        #: that have not ended, whether the socket is to close when they have, to hand a job back, and whether
        #: it was closed for that (its jobs are the server's again).
        self._running_jobs = 0
        self._handing_back = False
        self._shut = False
        self.changeState("INIT")

    def changeState(self, state: str) -> None:
        """Record the worker state machine's state for this connection (INIT, IDLE, GRAB_WAIT, SLEEP)."""
        self._worker.state = state
        self.state_time = time.time()

    @property
    def state(self) -> str:
        """The worker state machine's state on this connection (kept by the protocol's WorkerSession)."""
        return self._worker.state

    @state.setter
    def state(self, value: str) -> None:
        self._worker.state = value

    def __repr__(self) -> str:
        return f"<gear.Connection 0x{id(self):x} host: {self.host} port: {self.port}>"

    # -- opening and closing ---------------------------------------------------------------------------------

    def _sslContext(self) -> Any:
        if self._ssl_context is None:
            import ssl

            self._ssl_context = client_context(self.ssl_key, self.ssl_cert, self.ssl_ca, self.check_hostname)
            self._would_block = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
        return self._ssl_context

    def _configureSocket(self, sock: socket.socket) -> None:
        tune(sock, self.keepalive, self.tcp_keepidle, self.tcp_keepintvl, self.tcp_keepcnt)

    def _addresses(self) -> list:
        try:
            return socket.getaddrinfo(self.host, self.port, socket.AF_UNSPEC, socket.SOCK_STREAM)
        except OSError as exc:
            raise ConnectionError(f"Unable to resolve {self.host}: {exc}") from None

    def connect(self) -> None:
        """Open the connection (blocking, up to connect_timeout per address).

        :raises ConnectionError: if no address of the server could be connected.
        """
        self.log.debug("Connecting to %s port %s", self.host, self.port)
        last: Exception | None = None
        for family, socktype, proto, _canon, address in self._addresses():
            sock = None
            try:
                sock = socket.socket(family, socktype, proto)
                self._configureSocket(sock)
                if hasattr(sock, "settimeout"):  # gear's own tests connect a stand-in socket without it
                    sock.settimeout(self.connect_timeout)
                sock.connect(address)
                if self.use_ssl:
                    sock = self._sslContext().wrap_socket(sock, server_hostname=self.host)
            except OSError as exc:
                last = exc
                if sock is not None:
                    sock.close()
                continue
            self._attach(sock)
            return
        self.log.debug("Error connecting to %s port %s: %s", self.host, self.port, last)
        raise ConnectionError(f"Unable to open socket to {self.host}:{self.port}: {last}")

    def _attach(self, sock: Any) -> None:
        """Adopt a connected socket (made non-blocking: the poll loop must never wait in a read, e.g. on a
        TLS record that carries no data) with fresh protocol state."""
        sock.setblocking(False)
        self._init()
        self._protocol.connect()  # gear sends no greeting of its own: options come from Client.setOption
        self._events.clear()
        self.conn = sock
        self.connected = True
        self.connect_time = time.time()
        self.log.info("Connected to %s port %s", self.host, self.port)

    def _detach(self) -> Any:
        """Forget the socket (returned, still open) and wake everyone waiting on this connection."""
        sock = self.conn
        self.conn = None
        self.connected = False
        self._failWaiters()
        self._protocol.lost()
        return sock

    def _failWaiters(self) -> None:
        """Wake callers waiting for answers that will never come on this socket."""
        for task in list(self.pending_tasks):
            task.setComplete()
        self.pending_tasks = []
        for request in list(self.admin_requests):
            request.setComplete()
        self.admin_requests = []
        with self.echo_lock:
            events = list(self.echo_conditions.values())
            self.echo_conditions = {}
        for event in events:
            event.set()
        waiters = [w for queue in self._status_waiters.values() for w in queue]
        self._status_waiters = {}
        for waiter in waiters:
            waiter.event.set()

    def disconnect(self) -> None:
        """Close the connection and drop its state (jobs, pending requests, options).

        On a connection of a running Client or Worker, its poll loop closes the socket and reconnects.
        """
        owner = self._owner
        if owner is not None and owner.running and self.connected:
            owner._lostConnection(self)
            self._init()
            return
        sock = self._detach()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        self.log.info("Disconnected from %s port %s", self.host, self.port)
        self._init()

    def reconnect(self) -> None:
        """Close and reopen the connection, dropping its state (on a connection of a running Client or
        Worker the poll loop reopens it in the background)."""
        owner = self._owner
        self.disconnect()
        if owner is None or not owner.running:
            self.connect()

    # -- sending ---------------------------------------------------------------------------------------------

    def sendRaw(self, data: bytes) -> None:
        """Send bytes on the socket, waiting at most send_timeout for the peer to take them.

        :raises ConnectionError: if not connected. OSError (TimeoutError when the peer stopped reading) if
            the send fails.
        """
        with self.send_lock:
            self._sendLocked(data)

    def _sendLocked(self, data: bytes) -> None:
        """sendRaw() with send_lock held."""
        sock = self.conn
        if sock is None:
            raise ConnectionError(f"{self!r} is not connected")
        try:
            if not self.use_ssl:  # the common case: one send() takes it all (no further call)
                try:
                    sent = sock.send(data)
                except self._would_block:
                    sent = 0
                if sent == len(data):
                    return
                data = memoryview(data)[sent:]
            self._sendRest(sock, data)
            return
        except BaseException as exc:
            if self._owner is None or self.conn is not sock:
                raise
            error = exc
        # Part of a packet may have gone out: the stream is unusable; the owner drops it and reconnects.
        try:
            self._owner._lostConnection(self)
        finally:
            raise error

    def _sendRest(self, sock: Any, data: bytes | memoryview) -> None:
        """Send what the first send() left (all of it with TLS), waiting up to send_timeout for room."""
        view = memoryview(data)
        deadline = None if self.send_timeout is None else time.monotonic() + self.send_timeout
        while view:
            try:
                with self._io_lock:
                    sent = sock.send(view)
            except self._would_block:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise builtins.TimeoutError(f"send to {self.host}:{self.port} timed out") from None
                wait = 1.0 if remaining is None else remaining
                if self.use_ssl:
                    wait = min(wait, 0.05)  # TLS may want to read first: look again soon
                with selectors.DefaultSelector() as selector:
                    selector.register(sock, selectors.EVENT_WRITE)
                    selector.select(wait)
                continue
            view = view[sent:]

    def sendPacket(self, packet: Packet) -> None:
        """Send a :py:class:`Packet` to the server."""
        if self.log.isEnabledFor(logging.DEBUG):  # hot path: one call, not two, when off
            self.log.debug("Sending packet to %s: %s", self, packet)
        if packet.ptype in _ANSWERED and packet.code == constants.REQ:
            with self.send_lock:
                self._protocol.track(packet.ptype, RAW)
                self.sendRaw(packet.toBinary())
            return
        self.sendRaw(packet.toBinary())

    def _sendWork(self, ptype: int, args: tuple[bytes, ...]) -> None:
        """``sendPacket(Packet._build(ptype, *args))`` for a request no reply answers (a WorkerJob's WORK_*): the
        Packet object is built only when something would see it (debug logging, a subclass's sendPacket)."""
        if type(self).sendPacket is not Connection.sendPacket or self.log.isEnabledFor(logging.DEBUG):
            self.sendPacket(Packet._build(ptype, *args))
        else:
            self.sendRaw(request_frame(ptype, args))

    def _sendRequest(self, data: bytes, ptype: int, task: Any) -> None:
        """Send a request gear's own code built, recording ``task`` as what its answer completes."""
        with self.send_lock:
            self.pending_tasks.append(task)
            self._protocol.track(ptype, task)
            self._sendLocked(data)

    def _sendRequests(self, frames: list[bytes], ptype: int, tasks: list[Any]) -> None:
        """Several requests of one type in one write (see _sendRequest)."""
        with self.send_lock:
            self.pending_tasks.extend(tasks)
            track = self._protocol.track
            for task in tasks:
                track(ptype, task)
            self.sendRaw(b"".join(frames))

    def _sendOption(self, name: bytes, task: Any) -> None:
        """OPTION_REQ (with the session's probe, so that a server ignoring it shifts nothing) for ``task``."""
        with self.send_lock:
            self.pending_tasks.append(task)
            self.sendRaw(self._protocol.option(name, task))

    def _taskDone(self, task: Any) -> None:
        """Take an answered task out of pending_tasks (it is nearly always the first)."""
        tasks = self.pending_tasks
        if tasks and tasks[0] is task:
            del tasks[0]
        else:
            try:
                tasks.remove(task)
            except ValueError:
                pass

    def sendAdminRequest(self, request: AdminRequest, timeout: float | None = 90) -> None:
        """Send an admin command and wait for its answer (in ``request.response``).

        Answers are matched to commands in order. A request that times out keeps its place: its late answer
        is dropped, so later requests still get their own answers.

        :raises TimeoutError: if no answer came within timeout seconds (None waits forever).
        :raises ConnectionError: if the connection was lost first.
        """
        with self.send_lock:
            try:
                data = self._protocol.send_admin(request.getCommand())
            except ValueError as exc:
                raise InvalidDataError(str(exc)) from None
            self.admin_requests.append(request)
            try:
                self.sendRaw(data)
            except BaseException:
                request._abandoned = True
                raise
        if not self._waitFor(request.wait_event, timeout):
            request._abandoned = True
            if not request.wait_event.is_set():
                raise TimeoutError(f"no answer to admin command {request.command!r} within {timeout}s")
        if request.response is None:
            raise ConnectionError(f"connection lost before the answer to {request.command!r}")

    def echo(self, data: Any = None, timeout: float | None = 30) -> bytes:
        """Send ECHO_REQ and wait for the server to echo the data back; returns the data.

        :arg bytes data: the data (str is sent as UTF-8); None sends a random unique string.
        :raises TimeoutError: if the echo did not come back within timeout seconds.
        """
        data = uuid.uuid4().hex.encode("ascii") if data is None else to_bytes(data)
        event = threading.Event()
        event.gear_ok = False  # type: ignore[attr-defined]
        with self.echo_lock:
            if data in self.echo_conditions:
                raise InvalidDataError(f"This client is already waiting on an echo response of: {data!r}")
            self.echo_conditions[data] = event
        try:
            self.sendEchoReq(data)
            self._waitFor(event, timeout)
        finally:
            with self.echo_lock:
                if self.echo_conditions.get(data) is event:
                    del self.echo_conditions[data]
        if event.gear_ok:  # type: ignore[attr-defined]
            return data
        if event.is_set():
            raise ConnectionError("connection lost before the echo came back")
        raise TimeoutError(f"no echo within {timeout}s")

    def sendEchoReq(self, data: bytes) -> None:
        with self.send_lock:
            self._protocol.track(constants.ECHO_REQ, data)
            self.sendRaw(Packet(constants.REQ, constants.ECHO_REQ, data).toBinary())

    def handleEchoRes(self, data: bytes) -> bool:
        """Wake the :py:meth:`echo` waiting for data; False if none was."""
        with self.echo_lock:
            event = self.echo_conditions.pop(data, None)
        if event is None:
            return False
        event.gear_ok = True  # type: ignore[attr-defined]
        event.set()
        return True

    def handleOptionRes(self, option: bytes) -> None:
        self.options.add(option)

    # -- receiving -------------------------------------------------------------------------------------------

    def _recvSome(self) -> bytes:
        """Read what the socket holds (the caller knows it is readable); raise _Closed at EOF."""
        sock = self.conn
        if sock is None:
            raise _Closed()
        if self.use_ssl:
            return self._recvTls(sock)
        try:
            data = recv_some(sock)
        except BlockingIOError:
            return b""
        if not data:
            raise _Closed()
        return data

    def _recvTls(self, sock: Any) -> bytes:
        with self._io_lock:
            try:
                data = recv_some(sock)
            except self._would_block:
                return b""  # e.g. a TLS record without application data (a session ticket)
            if not data:
                raise _Closed()
            pending = sock.pending()
            while pending:
                data += sock.recv(pending)
                pending = sock.pending()
        return data

    def _receive(self, data: bytes) -> list[Any]:
        """Decode bytes with the session into gear Packets (each knowing what it answers or the job it is for)
        and answered AdminRequests."""
        out: list[Any] = []
        received = Packet._received
        protocol = self._protocol
        if self.admin_requests:
            while protocol.admin_pending < len(self.admin_requests):
                # A request appended to admin_requests directly (gear's own tests do): expect its answer too.
                protocol.send_admin(self.admin_requests[protocol.admin_pending].getCommand())
        for event in protocol.receive_data(data):
            kind = type(event)
            if kind is Work:
                jobs, (magic, ptype, args), _ = event
                for task in jobs:
                    packet = received(magic, ptype, args, self)
                    if task is not RAW:
                        packet._job = task.job
                    out.append(packet)
            elif kind is Reply:
                request, _, wp = event
                packet = received(wp[0], wp[1], wp[2], self)
                if request is not RAW:
                    packet._task = request
                out.append(packet)
            elif kind is Unsolicited:
                wp = event[0]
                out.append(received(wp[0], wp[1], wp[2], self))
            elif kind is Unanswered:
                self._unanswered(event)
            elif kind is AdminResponse:
                if not self.admin_requests:
                    self.log.warning("Admin answer with no request pending on %s: %r", self, event.raw)
                    continue
                request = self.admin_requests.pop(0)
                request.response = event.raw
                if request._abandoned:
                    self.log.debug("Dropping the late answer to timed-out %s", request)
                    request.setComplete()
                    continue
                out.append(request)
            elif kind is PacketError:
                self.log.warning("Unusable packet from %s: %s", self, event.message)
            elif kind is AdminLine:
                self.log.warning("Unexpected admin text from %s: %r", self, event.line)
        return out

    def _unanswered(self, event: Unanswered) -> None:
        """The server passed a request over (gear 0.16.0's geard ignores OPTION_REQ): end its wait unanswered."""
        self.log.warning("%s did not answer %s: it does not support it", self, wire.TYPE_NAMES[event.kind])
        task = event.request
        if task is RAW:
            task = self.pending_tasks[0] if self.pending_tasks else None
        if task is None or isinstance(task, bytes):
            return
        self._taskDone(task)
        if hasattr(task, "setComplete"):
            task.setComplete()
        elif hasattr(task, "event"):  # a status waiter
            task.event.set()

    def _readAvailable(self) -> list[Any]:
        """Read once from a readable socket and decode; raises _Closed, OSError or ProtocolError."""
        return self._receive(self._recvSome())

    def _waitReadable(self, timeout: float | None) -> bool:
        sock = self.conn
        if sock is None:
            return False
        if self.use_ssl and sock.pending():
            return True
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            return bool(selector.select(timeout))

    def readPacket(self) -> Any:
        """Read one packet or answered admin request from the server, blocking in the socket's recv() as gear's
        does (for callers that read the connection themselves; an owner's poll loop reads it otherwise).

        :returns: a :py:class:`Packet` or :py:class:`AdminRequest`, or None when the connection closed.
        """
        while not self._events:
            sock = self.conn
            if sock is None:
                return None
            try:
                sock.setblocking(True)
                try:
                    data = sock.recv(RECV_SIZE)
                finally:
                    sock.setblocking(False)
                if not data:
                    return None
                self._events.extend(self._receive(data))
            except (OSError, ProtocolError):
                return None
        return self._events.popleft()

    def hasPendingData(self) -> bool:
        return bool(self._events)

    def _waitFor(self, event: threading.Event, timeout: float | None) -> bool:
        """Wait for an answer: the owner's poll loop delivers it, or, with no owner, read the socket here."""
        if self._owner is not None:
            return event.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not event.is_set():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            slice_ = 0.1 if remaining is None else min(remaining, 0.1)
            if not self._read_lock.acquire(timeout=slice_):
                continue
            try:
                if event.is_set() or self.conn is None:
                    break
                if not self._waitReadable(slice_):
                    continue
                try:
                    objects = self._readAvailable()
                except (_Closed, OSError, ProtocolError):
                    self.disconnect()
                    break
                for obj in objects:
                    if isinstance(obj, AdminRequest):
                        obj.setComplete()
                    elif obj.ptype == constants.ECHO_RES:
                        self.handleEchoRes(obj.getArgument(0, True))
                    else:
                        self._events.append(obj)
            finally:
                self._read_lock.release()
        return event.is_set()


class _Connector:
    """A non-blocking connection attempt (TCP, then the TLS handshake) driven by a poll loop."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.sock: Any = None
        self.phase = "tcp"
        timeout = connection.connect_timeout
        self.deadline = time.monotonic() + (timeout if timeout is not None else 3600.0)
        self._addresses: deque = deque()
        self.error: Exception | None = None

    def start(self) -> int:
        """Begin; returns the selector events to wait for. Raises ConnectionError."""
        self._addresses = deque(self.connection._addresses())
        return self._next()

    def _next(self) -> int:
        while self._addresses:
            family, socktype, proto, _canon, address = self._addresses.popleft()
            try:
                sock = socket.socket(family, socktype, proto)
            except OSError as exc:
                self.error = exc
                continue
            sock.setblocking(False)
            err = sock.connect_ex(address)
            if err in _IN_PROGRESS:
                self.sock = sock
                self.phase = "tcp"
                return selectors.EVENT_WRITE
            self.error = builtins.ConnectionError(err, errno.errorcode.get(err, str(err)))
            sock.close()
        self.sock = None
        where = f"{self.connection.host}:{self.connection.port}"
        raise ConnectionError(f"Unable to connect to {where}: {self.error}")

    def step(self) -> int:
        """Advance after a selector event; 0 when connected, else the events to wait for next."""
        sock = self.sock
        if self.phase == "tcp":
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.error = builtins.ConnectionError(err, errno.errorcode.get(err, str(err)))
                sock.close()
                return self._next()
            self.connection._configureSocket(sock)
            if not self.connection.use_ssl:
                return 0
            self.sock = self.connection._sslContext().wrap_socket(
                sock, server_hostname=self.connection.host, do_handshake_on_connect=False
            )
            self.phase = "tls"
        import ssl

        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            return selectors.EVENT_READ
        except ssl.SSLWantWriteError:
            return selectors.EVENT_WRITE
        except (ssl.SSLError, OSError) as exc:
            raise ConnectionError(f"TLS handshake with {self.connection.host} failed: {exc}") from None
        return 0

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
