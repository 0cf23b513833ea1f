"""Link: one server address held open by asyncio, reconnecting by the protocol's one Backoff policy.

A Link owns the socket and feeds what arrives to its session (a ClientSession or WorkerSession from
geartrain.protocol.session, given by its owner); it hands the session's events to its owner (the Client or the
Worker) through three callbacks and batches writes into one transport.write per loop pass.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from ..compiled import mypyc_attr
from ..protocol import ProtocolError
from ..protocol.address import parse_address
from ..protocol.pool import Backoff, server_name
from ..sockets import tune

log = logging.getLogger("geartrain.client")

Address = tuple[str, int]
ServerSpec = tuple[str, int] | str


def parse_servers(specs: Sequence[ServerSpec] | ServerSpec) -> list[Address]:
    """Addresses from a list of server specs (a single spec is accepted too); see protocol.address."""
    if isinstance(specs, str) or (isinstance(specs, tuple) and len(specs) == 2 and isinstance(specs[1], int)):
        specs = [specs]  # type: ignore[list-item]
    addresses = [parse_address(spec) for spec in specs]  # type: ignore[union-attr]
    if not addresses:
        raise ValueError("at least one server address is needed")
    return addresses


class _LinkProtocol(asyncio.Protocol):
    def __init__(self, link: Link) -> None:
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.link._made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.link._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._gone(exc)

    def pause_writing(self) -> None:
        self.link._paused = True

    def resume_writing(self) -> None:
        self.link._resume()


@mypyc_attr(allow_interpreted_subclasses=True)
class Link:
    """One server connection that stays open: connects, reconnects after loss, and batches writes."""

    def __init__(
        self,
        address: Address,
        session: Any,
        *,
        on_connected: Callable[[Link], None],
        on_events: Callable[[Link, list[Any]], None],
        on_lost: Callable[[Link, Exception | None], None],
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.host, self.port = address
        #: "host:port" (see protocol.pool.server_name).
        self.name = server_name(self.host, self.port)
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        #: The protocol state machine of this connection (ClientSession or WorkerSession); the owner calls its
        #: connect() in on_connected and its lost() in on_lost.
        self.conn = session
        #: Owner's per-connection state, replaced by the owner on every (re)connect.
        self.state: Any = None
        #: Counts connections made: work tied to an older connection must not be sent on a newer one.
        self.generation = 0
        self.transport: asyncio.Transport | None = None
        self._on_connected = on_connected
        self._on_events = on_events
        self._on_lost = on_lost
        self._buffer: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        #: True while the owner handles what arrived: what it writes then goes out at the end, no flush scheduled.
        self._receiving = False
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._lost: asyncio.Future[None] | None = None
        self._first: asyncio.Future[bool] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.backoff = Backoff()

    @property
    def connected(self) -> bool:
        return self.transport is not None

    def __repr__(self) -> str:
        return f"<Link {self.name} {'up' if self.connected else 'down'}>"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Begin connecting (and reconnecting after every loss) in a background task."""
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._first = loop.create_future()
            self._task = loop.create_task(self._run(), name=f"geartrain-link-{self.name}")

    async def first_attempt(self) -> bool:
        """Wait for the outcome of the first connection attempt: whether it connected."""
        assert self._first is not None, "start() first"
        return await asyncio.shield(self._first)

    async def close(self) -> None:
        """Stop reconnecting and close the connection after writing what is buffered."""
        self._closing = True
        transport = self.transport
        if transport is not None:
            self._flush()
            transport.close()  # still writes what is buffered
            self._gone(None)  # settle the owner's waiters now, not on a later loop pass
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._resolve_first(False)

    def reconnect(self) -> None:
        """Close the current connection after writing what is buffered; a new one is opened as after a loss."""
        if self.transport is not None:
            self._flush()
            self.transport.close()

    def abort(self) -> None:
        """Drop the current connection at once (it will be reopened unless the link is closing)."""
        if self.transport is not None:
            self.transport.abort()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _LinkProtocol(self), self.host, self.port,
                        ssl=self.ssl_context, server_hostname=self.host if self.ssl_context else None,
                    ),
                    self.connect_timeout,
                )
                failed = False
            except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                log.debug("connect to %s failed: %s", self.name, exc or type(exc).__name__)
                self._resolve_first(False)
                failed = True
            if failed:  # awaited out of the except block (geartrain.compiled)
                await asyncio.sleep(self.backoff.next_delay())
                continue
            lost = self._lost
            if lost is not None and not lost.done():
                await lost
            if self._closing:
                break
            # Wait a little before reconnecting: a server that accepts and drops at once gets no busy loop.
            await asyncio.sleep(self.backoff.next_delay())

    def _resolve_first(self, value: bool) -> None:
        if self._first is not None and not self._first.done():
            self._first.set_result(value)

    # ------------------------------------------------------------------ protocol callbacks

    def _made(self, transport: asyncio.Transport) -> None:
        if self._closing:
            transport.abort()
            return
        tune(transport.get_extra_info("socket"))
        self.transport = transport
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        self._buffer.clear()
        self._paused = False
        self.backoff.connected(loop.time())
        self.generation += 1
        log.debug("connected to %s", self.name)
        try:
            self._on_connected(self)
        finally:
            self._resolve_first(True)

    def _received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            log.warning("undecodable data from %s (%s): dropping the connection", self.name, exc.message)
            events = exc.events
            if self.transport is not None:
                self.transport.abort()
        if events:
            # What the owner writes in answer (a worker's PRE_SLEEP or next grab) leaves in one write when it is
            # done, in this loop pass: no flush callback and loop pass more for it.
            self._receiving = True
            try:
                self._on_events(self, events)
            finally:
                self._receiving = False
                self._write_buffer()

    def _gone(self, exc: Exception | None) -> None:
        if self.transport is None:
            return
        self.transport = None
        self._buffer.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.backoff.lost(asyncio.get_running_loop().time())
        self._resume()
        if not self._closing:
            log.info("connection to %s lost%s", self.name, f": {exc}" if exc else "")
        try:
            self._on_lost(self, exc)
        finally:
            if self._lost is not None and not self._lost.done():
                self._lost.set_result(None)

    def _resume(self) -> None:
        self._paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------ output

    def write(self, data: bytes) -> bool:
        """Queue bytes for this loop pass's single write; False (nothing queued) while disconnected."""
        if self.transport is None:
            return False
        self._buffer.append(data)
        if self._flush_handle is None and not self._receiving:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        return True

    def send(self, data: bytes) -> bool:
        """Write ``data`` now, after what is queued for this loop pass (for the last bytes of a pass, as a job's
        result: no loop pass more just to write them); False (nothing sent) while disconnected."""
        transport = self.transport
        if transport is None:
            return False
        if self._buffer:
            self._buffer.append(data)
            self._write_buffer()  # a flush already scheduled finds nothing left
        else:
            transport.write(data)
        return True

    def _flush(self) -> None:
        self._flush_handle = None
        self._write_buffer()

    def _write_buffer(self) -> None:
        if self._buffer and self.transport is not None:
            data = b"".join(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
            self._buffer.clear()
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        if self._paused and self.transport is not None:
            waiter = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(waiter)
            await waiter
