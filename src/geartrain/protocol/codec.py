"""Encoding of packets and an incremental decoder of binary packets and admin text lines."""

from __future__ import annotations

import struct
from typing import NamedTuple

from .constants import (
    ARG_COUNTS,
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_PACKET_SIZE,
    HEADER_SIZE,
    REQ,
    RES,
    TYPE_NAMES,
)

_HEADER = struct.Struct(">4sII")
#: Pack a 12-byte header (magic, type, body size): for callers that send the body as separate chunks.
pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from


class Packet(NamedTuple):
    """One binary packet: magic (REQ or RES), type number and its arguments as bytes."""

    magic: bytes
    ptype: int
    args: tuple[bytes, ...]

    @property
    def name(self) -> str:
        return TYPE_NAMES.get(self.ptype, f"UNKNOWN_{self.ptype}")


class AdminLine(NamedTuple):
    """One admin text line, without its line ending."""

    line: bytes


class PacketError(NamedTuple):
    """A framed but unusable packet: the stream stays in sync, the peer deserves an ERROR."""

    code: bytes
    message: str
    ptype: int


Event = Packet | AdminLine | PacketError


class ProtocolError(Exception):
    """A stream that cannot be decoded any further: answer with ERROR and close."""

    def __init__(self, code: bytes, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: Events decoded before the fault, so that a server can still answer them before it closes.
        self.events: list[Event] = []


def encode(magic: bytes, ptype: int, *args: bytes) -> bytes:
    """Encode one packet, checking its argument count and that only the last argument holds NULs."""
    body = join_body(ptype, *args)
    return pack_header(magic, ptype, len(body)) + body


def join_body(ptype: int, *args: bytes) -> bytes:
    """A packet's body: its arguments joined by NULs, checked as encode() checks them."""
    expected = ARG_COUNTS.get(ptype)
    if expected is None:
        raise ValueError(f"unknown packet type {ptype}")
    if len(args) != expected:
        raise ValueError(f"{TYPE_NAMES[ptype]} takes {expected} arguments, got {len(args)}")
    for arg in args[:-1]:
        if b"\x00" in arg:
            raise ValueError(f"{TYPE_NAMES[ptype]}: only the last argument may contain NUL bytes")
    return b"\x00".join(args)


def encode_request(ptype: int, *args: bytes) -> bytes:
    """Encode a packet sent to a server."""
    return encode(REQ, ptype, *args)


def encode_response(ptype: int, *args: bytes) -> bytes:
    """Encode a packet sent by a server."""
    return encode(RES, ptype, *args)


def pack(magic: bytes, ptype: int, body: bytes) -> bytes:
    """Frame an already joined body: the hot-path twin of encode() for callers that built the body."""
    return pack_header(magic, ptype, len(body)) + body


#: Bodies at least this large are split straight out of the receive buffer: one copy per byte, not three; and
#: when one arrives in several reads, its reads are copied into pieces (_Body) and joined once at its end.
_COPY_ONCE = 16 * 1024
#: A large body being received is copied into pieces of this size. Up to SPARE_PIECES pieces are kept for the next
#: large bodies (per process): pages faulted in once serve again, where a fresh buffer per packet costs a page
#: fault per 4 KiB. The pieces of a packet beyond the spares, or of a peer gone mid-packet, are freed at once (when
#: freed memory goes back to the system: server/memory.py).
PIECE = 1024 * 1024
SPARE_PIECES = 8
_spare_pieces: list[bytearray] = []


class _Body:
    """The body of a large packet while it arrives: filled pieces, the last one filled up to `fill`."""

    __slots__ = ("pieces", "fill", "size")

    def __init__(self) -> None:
        self.pieces: list[bytearray] = []
        self.fill = PIECE
        self.size = 0

    def add(self, data: bytes | bytearray | memoryview) -> None:
        with memoryview(data) as view:
            n = len(view)
            pos = 0
            while pos < n:
                take = min(self.room(), n - pos)
                # Through a memoryview: a bytearray's slice assignment would first copy the view to a bytearray.
                with memoryview(self.pieces[-1]) as piece:
                    piece[self.fill:self.fill + take] = view[pos:pos + take]
                self.fill += take
                pos += take
        self.size += n

    def room(self) -> int:
        """Bytes the last piece still takes (a new piece is started when it is full)."""
        if self.fill == PIECE:
            try:
                piece = _spare_pieces.pop()
            except IndexError:
                piece = bytearray(PIECE)
            self.pieces.append(piece)
            self.fill = 0
        return PIECE - self.fill

    def space(self, limit: int) -> memoryview:
        """The free part of the last piece, at most limit bytes: to be filled in place, then filled()."""
        take = min(self.room(), limit)
        return memoryview(self.pieces[-1])[self.fill:self.fill + take]

    def filled(self, n: int) -> None:
        self.fill += n
        self.size += n

    def arguments(self, nargs: int) -> tuple[bytes, ...]:
        """The body split into at most nargs arguments (as bytes), then the pieces go back to the spares."""
        pieces = self.pieces
        views = [memoryview(piece) for piece in pieces]
        try:
            views[-1] = views[-1][:self.fill]
            first = views[0]
            args: list[bytes] = []
            start = 0
            for _ in range(nargs - 1):  # the leading arguments are short: in the first piece
                nul = pieces[0].find(0, start, len(first))
                if nul < 0:
                    break
                args.append(bytes(first[start:nul]))
                start = nul + 1
            if len(args) == nargs - 1:
                args.append(b"".join([first[start:], *views[1:]]))
                return tuple(args)
            body = b"".join(views)
            return tuple(body.split(b"\x00", nargs - 1))
        finally:
            for view in views:
                view.release()
            self.pieces = []
            for piece in pieces:
                if len(_spare_pieces) < SPARE_PIECES:
                    _spare_pieces.append(piece)


def _split_large(buf: bytearray, start: int, end: int, nargs: int) -> tuple[bytes, ...]:
    args = []
    with memoryview(buf) as view:
        for _ in range(nargs - 1):
            nul = buf.find(0, start, end)
            if nul < 0:
                break
            args.append(view[start:nul].tobytes())
            start = nul + 1
        args.append(view[start:end].tobytes())
    return tuple(args)


def _missing_arguments(ptype: int, expected: int, got: int) -> PacketError:
    return PacketError(b"INVALID_PACKET", f"{TYPE_NAMES[ptype]} needs {expected} arguments, got {got}", ptype)


class Decoder:
    """Incremental decoder: feed() any chunk of bytes, get back the complete events it finishes.

    ``accept`` is the magic this side expects (REQ on a server, RES on a client); a packet with the other
    valid magic becomes a PacketError(INVALID_MAGIC), anything else after a NUL byte is fatal. ``accept=b""``
    takes either magic (gear's Connection reads packets whatever their magic). With ``unknown_types`` a packet of a
    type the protocol does not define comes out as a Packet whose one argument is its body (gear.Server
    subclasses add private types), else as a PacketError(INVALID_COMMAND).
    """

    __slots__ = ("_buf", "_body", "body_need", "_large", "accept", "max_packet_size", "max_line_length",
                 "unknown_types")

    def __init__(
        self,
        accept: bytes = REQ,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        unknown_types: bool = False,
    ) -> None:
        self._buf = bytearray()
        #: The body of a large packet being received (see _COPY_ONCE), or None; body_need is how many of its bytes
        #: are still to come, _large its (magic, type, nargs).
        self._body: _Body | None = None
        self.body_need = 0
        self._large: tuple[bytes, int, int] = (REQ, 0, 0)
        self.accept = accept
        self.unknown_types = unknown_types
        self.max_packet_size = max_packet_size
        self.max_line_length = max_line_length

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of an event."""
        return len(self._buf) + (self._body.size if self._body is not None else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Add bytes and return every event they complete; raise ProtocolError on an undecodable stream."""
        out: list[Event] = []
        body = self._body
        if body is not None:
            need = self.body_need
            if len(data) < need:
                body.add(data)
                self.body_need -= len(data)
                return out
            body.add(data[:need])
            out.append(self._finish_large())
            data = data[need:]
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        accept = self.accept
        max_packet_size = self.max_packet_size
        arg_counts = ARG_COUNTS
        try:
            while pos < n:
                if buf[pos] == 0:
                    if n - pos < HEADER_SIZE:
                        if not (REQ.startswith(buf[pos : pos + 4]) or RES.startswith(buf[pos : pos + 4])):
                            raise ProtocolError(b"INVALID_MAGIC", "bad packet magic")
                        break
                    magic, ptype, size = _unpack_header(buf, pos)
                    if magic != accept and magic not in (REQ, RES):
                        raise ProtocolError(b"INVALID_MAGIC", f"bad packet magic {bytes(magic)!r}")
                    if size > max_packet_size:
                        raise ProtocolError(
                            b"ARGUMENT_TOO_LARGE",
                            f"packet body of {size} bytes exceeds the limit of {max_packet_size}",
                        )
                    end = pos + HEADER_SIZE + size
                    start = pos + HEADER_SIZE
                    if end > n:
                        if size >= _COPY_ONCE and (magic == accept or not accept) and arg_counts.get(ptype):
                            # Its body is kept as the chunks that come, not grown in the buffer: one copy of each
                            # byte until the last argument is joined, and no buffer of the whole packet.
                            self._body = _Body()
                            with memoryview(buf) as view:  # no copy of the slice: add() copies it into a piece
                                self._body.add(view[start:n])
                            self.body_need = end - n
                            self._large = (bytes(magic), ptype, arg_counts[ptype])
                            pos = n
                        break
                    pos = end
                    if magic != accept and accept:
                        out.append(PacketError(b"INVALID_MAGIC", f"expected {accept!r} magic", ptype))
                        continue
                    nargs = arg_counts.get(ptype)
                    if nargs is None:
                        if self.unknown_types:
                            out.append(Packet(magic, ptype, (bytes(buf[start:end]),)))
                        else:
                            out.append(PacketError(b"INVALID_COMMAND", f"unknown packet type {ptype}", ptype))
                    elif nargs == 0:
                        out.append(Packet(magic, ptype, ()))
                    elif size < _COPY_ONCE:
                        small = bytes(buf[start:end])
                        args = (small,) if nargs == 1 else tuple(small.split(b"\x00", nargs - 1))
                        if len(args) != nargs:
                            out.append(_missing_arguments(ptype, nargs, len(args)))
                        else:
                            out.append(Packet(magic, ptype, args))
                    else:
                        args = _split_large(buf, start, end, nargs)
                        if len(args) != nargs:
                            out.append(_missing_arguments(ptype, nargs, len(args)))
                        else:
                            out.append(Packet(magic, ptype, args))
                else:
                    nl = buf.find(b"\n", pos)
                    if nl < 0:
                        if n - pos > self.max_line_length:
                            raise ProtocolError(
                                b"ARGUMENT_TOO_LARGE",
                                f"admin line longer than {self.max_line_length} bytes",
                            )
                        break
                    if nl - pos > self.max_line_length:
                        raise ProtocolError(
                            b"ARGUMENT_TOO_LARGE", f"admin line longer than {self.max_line_length} bytes"
                        )
                    stop = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
                    out.append(AdminLine(bytes(buf[pos:stop])))
                    pos = nl + 1
        except ProtocolError as exc:
            exc.events = out
            buf.clear()
            raise
        if pos:
            del buf[:pos]
        return out

    def body_space(self) -> memoryview:
        """Where the next bytes of the large body being received (body_need > 0) may be read straight into, no more
        than it still needs: a socket read into it skips the copy out of a receive buffer. Then body_filled()."""
        assert self._body is not None and self.body_need > 0
        return self._body.space(self.body_need)

    def body_filled(self, nbytes: int) -> None:
        """Count nbytes read into the last body_space(). When that was the body's end (body_need is 0), the next
        feed(), of b"" or of what follows, returns the packet first."""
        assert self._body is not None and 0 <= nbytes <= self.body_need
        self._body.filled(nbytes)
        self.body_need -= nbytes

    def _finish_large(self) -> Event:
        """The event of the large packet whose last bytes just came."""
        body, self._body = self._body, None
        assert body is not None
        self.body_need = 0
        magic, ptype, nargs = self._large
        args = body.arguments(nargs)
        if len(args) != nargs:
            return _missing_arguments(ptype, nargs, len(args))
        return Packet(magic, ptype, args)
