"""asyncio glue between sockets and the broker: framing, write batching (the flush pass), flow control, limits.

The connections see a ServerState (config, broker, admin, store, the open connections, the receive buffer), never
the Server: app.py builds the state and owns listeners, lifecycle, signals and timers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import resource
import ssl
from collections.abc import Iterator
from typing import Any, Final, cast

from ..protocol.codec import AdminLine, Decoder, Packet, PacketError, ProtocolError
from ..sockets import tune
from .broker import Broker, Peer, error_packet
from .config import ServerConfig
from .spill import Confirming
from .tls import ServerTLSSession, peer_common_name

log = logging.getLogger("geartrain.transport")

#: The event classes, as names compiled code reads without a lookup in the module's dict (_dispatch, per event).
_PACKET: Final = Packet
_ADMIN_LINE: Final = AdminLine
_PACKET_ERROR: Final = PacketError

_ids = itertools.count(1)

#: Bytes read per receive (into the one buffer of the server): many small packets per read.
READ_SIZE: Final = 256 * 1024 - 4096
#: A large packet's body still to come of at least this many bytes is read straight into its payload (codec._Body).
READ_DIRECT: Final = 64 * 1024

#: File descriptors no connection may take: the store needs a few (SQLite opens its log and syncs its directory)
#: and a flood of connections at the descriptor limit must not make its commits fail.
RESERVED_DESCRIPTORS = 16


def descriptor_ceiling() -> int:
    """The lowest descriptor number a connection may not use (the soft RLIMIT_NOFILE less the reserve)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(0, soft - RESERVED_DESCRIPTORS)


class ServerState:
    """What the connections share: config, broker, admin, store, the open connections and the receive buffer;
    and the write batching: the flush pass and the one check of what a peer's output may send now."""

    def __init__(self, config: ServerConfig, broker: Broker, admin: Any, store: Any = None) -> None:
        self.config = config
        self.broker = broker
        self.admin = admin
        self.store = store
        self.connections: set[GearmanProtocol] = set()
        #: The receive buffer every connection of this server reads into (see GearmanProtocol.get_buffer).
        self.read_view = memoryview(bytearray(READ_SIZE))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.descriptor_ceiling = descriptor_ceiling()
        self._flush_scheduled = False
        #: Unsent bytes past which a connection is cut off (0: no limit). Past its high water a connection is paused
        #: (pause_writing), so only a paused one can hold more, unless the limit is not above the high water.
        self.output_limit = config.output_limit
        self.limit_unpaused = 0 < config.output_limit <= config.output_high_water

    def schedule_flush(self) -> None:
        if not self._flush_scheduled and self.broker.dirty:
            self._flush_scheduled = True
            assert self.loop is not None
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every peer's collected output: one write per connection per loop pass."""
        self._flush_scheduled = False
        broker = self.broker
        dirty = broker.dirty
        if not dirty:
            return
        store = self.store
        if store is not None and store.pending():
            store.commit_then(self.flush)
        broker.dirty = []
        for peer in dirty:
            if peer.out and not peer.closed:
                self.send_output(peer)
                if peer.out:
                    broker.dirty.append(peer)  # held back until its jobs are stored

    def send_output(self, peer: Peer) -> None:
        """Write what the peer's output may send now: all of it, or (while the store holds an acknowledgement
        that is not durable yet) what comes before that acknowledgement."""
        if peer.held:
            return  # a listing is being written to it: the rest waits (GearmanProtocol._pump sends it after)
        store = self.store
        if store is not None and store.holds(peer):
            chunks = store.release(peer)
            if not chunks:
                return
        else:
            chunks = peer.take_chunks()
        conn = peer.conn
        if isinstance(conn, GearmanProtocol):
            conn.write(chunks)  # compiled: a direct call
        elif conn is not None:
            conn.write(chunks)


class GearmanProtocol(asyncio.BufferedProtocol):
    """One server-side connection: bytes in to the decoder and broker, the peer's output out once per pass."""

    __slots__ = ("state", "transport", "decoder", "peer", "handlers", "paused", "idle_handle", "ssl_context",
                 "address", "tls", "handshake_timer", "stream", "backlog", "pumping", "reading_body", "confirming")

    #: Its requests may wait for a store read (spill.Confirming): they are handled again once it is done.
    may_wait = True

    def __init__(self, state: ServerState, ssl_context: ssl.SSLContext | None = None) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        config = state.config
        self.decoder = Decoder(max_packet_size=config.max_packet_size, max_line_length=config.max_line_length,
                               unknown_types=state.broker.decode_unknown_types)
        self.peer: Peer | None = None
        self.handlers = state.broker.handlers
        self.paused = False
        self.idle_handle: asyncio.TimerHandle | None = None
        self.ssl_context = ssl_context
        self.address = "-"
        self.tls: ServerTLSSession | None = None
        self.handshake_timer: asyncio.TimerHandle | None = None
        #: A long admin listing being written as the peer reads it (chunks), and the requests that came after it:
        #: while it lasts the peer is not read and its other output waits, so answers keep their order.
        self.stream: Iterator[bytes] | None = None
        self.backlog: list[Any] = []
        self.pumping = False  # a _pump() call is scheduled
        self.reading_body = False  # the last get_buffer() gave the decoder's body space, not the read buffer
        #: A request waits for a store read (spill.Confirming): it and the requests after it are in `backlog`, and
        #: the peer is not read until they are handled again.
        self.confirming = False

    # ------------------------------------------------------------------ connection life

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        state = self.state
        config = state.config
        peername = transport.get_extra_info("peername")
        self.address = peername[0] if peername else "-"
        limit = config.max_connections
        if limit and len(state.connections) >= limit:
            log.warning("refused connection from %s: %d connections is the limit", self.address, limit)
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.fileno() >= state.descriptor_ceiling:
            log.warning("refused connection from %s: descriptor %d is within the %d kept for the store "
                        "(raise ulimit -n)", self.address, sock.fileno(), RESERVED_DESCRIPTORS)
            transport.abort()
            return
        state.connections.add(self)
        tune(sock, config.keepalive, config.tcp_keepidle,
                    config.tcp_keepintvl, config.tcp_keepcnt, config.socket_buffer)
        transport.set_write_buffer_limits(high=config.output_high_water)  # type: ignore[attr-defined]
        if self.ssl_context is not None:
            # The handshake is driven by data_received under our own timeout: a silent peer holds nobody up.
            self.tls = ServerTLSSession(self.ssl_context)
            self.handshake_timer = asyncio.get_running_loop().call_later(
                config.handshake_timeout, self._handshake_timed_out)
            return
        self._open(None)

    def _handshake_timed_out(self) -> None:
        if self.peer is None and self.transport is not None:
            log.warning("TLS handshake with %s refused: no handshake within %ss", self.address,
                        self.state.config.handshake_timeout)
            self._count_handshake_failure()
            self.transport.abort()

    def _count_handshake_failure(self) -> None:
        stats = self.state.broker.stats
        if stats is not None:
            stats.tls_handshake_failures += 1

    def _open(self, subject: str | None) -> None:
        state = self.state
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        peer_id = sock.fileno() if sock is not None and sock.fileno() >= 0 else next(_ids)
        if peer_id in state.broker.peers:
            peer_id = next(_ids) + 1_000_000
        self.peer = state.broker.connect(peer_id, self.address, subject)
        self.peer.conn = self
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        # Free what the peer left at once: a partial packet in the decoder (up to the packet size limit), and the
        # peer <-> connection cycle that would otherwise keep both until the cyclic collector visits.
        self.decoder = Decoder()
        self.tls = None
        self.stream, self.backlog = None, []
        self.idle_handle = self.handshake_timer = None
        peer, self.peer = self.peer, None
        self.transport = None
        if peer is not None:
            peer.conn = None
            self.state.broker.disconnect(peer)
            self.state.schedule_flush()

    def pause_writing(self) -> None:
        # The peer does not read its answers: stop reading its requests until it catches up.
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            if self.stream is None and not self.confirming:
                self.transport.resume_reading()
            else:
                self._schedule_pump()

    def _arm_idle_timer(self) -> None:
        timeout = self.state.config.idle_timeout
        if timeout > 0:
            if self.idle_handle is not None:
                self.idle_handle.cancel()
            self.idle_handle = asyncio.get_running_loop().call_later(timeout, self._idle_check)

    def _idle_check(self) -> None:
        peer = self.peer
        if peer is None or self.transport is None:
            return
        if peer.running or peer.waiting or peer.abilities:
            self._arm_idle_timer()
            return
        log.info("closing idle connection %d from %s", peer.id, peer.address)
        self.transport.close()

    # ------------------------------------------------------------------ input

    def get_buffer(self, sizehint: int) -> memoryview:
        # The rest of a large packet's body is read straight into the bytes object it comes out as (the decoder's
        # body space: no copy of it in this process, and reads as large as what is still to come). Anything else
        # goes to one receive buffer per server (per event loop): the loop fills it and calls buffer_updated() at
        # once, and the decoder copies what it keeps, so no read allocates a bytes object of its own.
        if self.decoder.body_need >= READ_DIRECT and self.tls is None:
            self.reading_body = True
            return self.decoder.body_space()
        self.reading_body = False
        return self.state.read_view

    def buffer_updated(self, nbytes: int) -> None:
        if not self.reading_body:
            self.data_received(self.state.read_view[:nbytes])
            return
        self.reading_body = False
        decoder = self.decoder
        decoder.body_filled(nbytes)
        if not decoder.body_need:
            self.data_received(b"")  # the packet is whole: the decoder hands it out
        elif self.idle_handle is not None:
            self._arm_idle_timer()  # a peer still sending a packet is not idle (data_received rearms it too)

    def data_received(self, data: bytes | memoryview) -> None:
        if self.tls is not None:
            data = self._decrypt(bytes(data))
            if not data:
                return
        peer = self.peer
        if peer is None:
            return
        try:
            events = self.decoder.feed(data)
        except ProtocolError as exc:
            self._dispatch(peer, exc.events)
            log.warning("protocol error from %s (connection %d): %s; closing", peer.address, peer.id, exc)
            peer.send(error_packet(exc.code, exc.message))
            self.state.flush()
            if self.transport is not None:
                self.transport.close()
            return
        self._dispatch(peer, events)
        if self.idle_handle is not None:
            self._arm_idle_timer()
        state = self.state
        if peer.out:
            # Answers to this peer's own requests go out at once (one write, as they would at the end of the
            # pass); what it caused for other peers still waits for the pass's flush. Writing now also lets
            # pause_writing() stop reading a peer that does not read its answers before the loop reads again.
            state.send_output(peer)
        dirty = state.broker.dirty
        if len(dirty) == 1 and dirty[0] is peer and not peer.out and (state.store is None
                                                                     or not state.store.pending()):
            dirty.clear()  # only this peer had output, all written: no flush pass (a worker's grab, say)
        else:
            state.schedule_flush()

    def _decrypt(self, data: bytes) -> bytes:
        tls, transport = self.tls, self.transport
        assert tls is not None and transport is not None
        try:
            plaintext, reply = tls.receive(data)
        except ssl.SSLError as exc:
            what = "TLS error from" if tls.established else "TLS handshake with"
            log.warning("%s %s refused: %s", what, self.address, exc.reason or exc)
            if not tls.established:
                self._count_handshake_failure()
            alert = tls.alert()
            if alert:
                transport.write(alert)
            transport.close()
            return b""
        if reply:
            transport.write(reply)
        if self.peer is None and tls.established:
            if self.handshake_timer is not None:
                self.handshake_timer.cancel()
            subject = peer_common_name(tls.ssl_object)
            log.info("TLS connection from %s, subject %s", self.address, subject)
            self._open(subject)
        if tls.closed:
            transport.close()
        return plaintext

    def _dispatch(self, peer: Peer, events: list) -> None:
        handlers = self.handlers
        rest = iter(events)
        for event in rest:
            try:
                if type(event) is _PACKET:
                    handler = handlers.get(event.ptype)
                    if handler is None:
                        self.state.broker.handle(peer, event.ptype, event.args)
                    else:
                        handler(peer, event.args)
                elif type(event) is _ADMIN_LINE:
                    answer = self.state.admin.handle(peer, event.line)
                    if type(answer) is bytes:
                        peer.send(answer)
                    else:
                        self._stream(peer, answer, list(rest))
                        return
                elif type(event) is _PACKET_ERROR:
                    log.info("bad packet from %s (connection %d): %s", peer.address, peer.id, event.message)
                    peer.send(error_packet(event.code, event.message))
            except Confirming as confirming:
                self._confirm(peer, confirming, [event, *rest])
                return
            except Exception:
                log.exception("error handling %r from %s (connection %d)", event[:2], peer.address, peer.id)
                peer.send(error_packet(b"SERVER_ERROR", "the server failed to handle this request; see its log"))

    # ------------------------------------------------------------------ requests that wait for a store read

    def _confirm(self, peer: Peer, confirming: Confirming, backlog: list[Any]) -> None:
        """A request needs rows read from the store first (spill.py: a unique that hashes like a spilled job's):
        the peer is not read, and this request and the ones after it wait, until the read is done; then they are
        handled again, the rows at hand. The loop serves everyone else meanwhile."""
        self.confirming, self.backlog = True, backlog
        if self.transport is not None:
            self.transport.pause_reading()
        confirming.future.add_done_callback(lambda _: self._confirmed(peer, confirming))

    def _confirmed(self, peer: Peer, confirming: Confirming) -> None:
        self.confirming = False
        backlog, self.backlog = self.backlog, []
        if self.peer is not peer or self.transport is None:
            return  # the connection is gone
        spill = self.state.broker.spill
        assert spill is not None
        spill.peeked = confirming.rows()
        try:
            self._dispatch(peer, backlog)
        finally:
            spill.peeked = {}
        if not self.paused and self.stream is None and not self.confirming:
            self.transport.resume_reading()
        if peer.out:
            self.state.send_output(peer)
        self.state.schedule_flush()

    # ------------------------------------------------------------------ streamed listings

    def _stream(self, peer: Peer, chunks: Iterator[bytes], backlog: list[Any]) -> None:
        """Write a long listing chunk by chunk, one per loop pass while the peer keeps up; the requests after it
        (backlog) are handled once it is written."""
        state = self.state
        if peer.out:
            state.send_output(peer)
        if peer.out or self.transport is None:
            # Output held behind an acknowledgement that is not durable yet: the listing queues behind it whole.
            peer.send(b"".join(chunks))
            self._dispatch(peer, backlog)
            return
        self.stream, self.backlog = chunks, backlog
        peer.held = True
        self.transport.pause_reading()
        self._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self.pumping:
            self.pumping = True
            assert self.state.loop is not None
            self.state.loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Write the listing's next chunk, unless the peer's output is paused (resume_writing() schedules again)."""
        self.pumping = False
        peer, transport = self.peer, self.transport
        if self.stream is None or self.paused or peer is None or transport is None:
            return
        chunk = next(self.stream, None)
        if chunk is not None:
            self.write([chunk])
            self._schedule_pump()
            return
        self.stream = None
        peer.held = False
        backlog, self.backlog = self.backlog, []
        if not self.paused:
            transport.resume_reading()
        self._dispatch(peer, backlog)
        if peer.out:
            self.state.send_output(peer)
        self.state.schedule_flush()

    # ------------------------------------------------------------------ output

    def write(self, chunks: list[bytes]) -> None:
        """Send one flush's output: usually one joined chunk, or a few around large payloads."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.tls is not None:
            transport.write(self.tls.send(b"".join(chunks)))
        elif len(chunks) == 1:
            transport.write(chunks[0])
        else:
            transport.writelines(chunks)
        state = self.state
        limit = state.output_limit
        if (self.paused or state.limit_unpaused) and limit and transport.get_write_buffer_size() > limit:
            peer = self.peer
            log.warning("connection %s from %s holds over %d unsent bytes: cut off",
                        peer.id if peer else "?", peer.address if peer else "?", limit)
            transport.abort()
