"""Encoding of packets and an incremental decoder of binary packets and admin text lines."""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from .constants import (
    ARG_COUNTS,
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_PACKET_SIZE,
    HEADER_SIZE,
    REQ,
    RES,
    TYPE_NAMES,
)
from .unfilled import finished, unfilled

_HEADER = struct.Struct(">4sII")
_HEADER_SIZE: Final = HEADER_SIZE
#: The last byte of each magic (Q, S): what the decoder compares.
_MAGIC_CODES: Final = {REQ: 81, RES: 83}
#: Pack a 12-byte header (magic, type, body size): for callers that send the body as separate chunks.
pack_header = _HEADER.pack


class Packet(NamedTuple):
    """One binary packet: magic (REQ or RES), type number and its arguments as bytes."""

    magic: bytes
    ptype: int
    args: tuple[bytes, ...]

    @property
    def name(self) -> str:
        return TYPE_NAMES.get(self.ptype, f"UNKNOWN_{self.ptype}")


_new_tuple: Final = tuple.__new__
#: The class, as a name compiled code reads without a lookup in the module's dict.
_PACKET: Final = Packet


def _packet(magic: bytes, ptype: int, args: tuple[bytes, ...]) -> Packet:
    """Packet(magic, ptype, args), built in C: a NamedTuple's own constructor is Python code (its __new__), run for
    every packet decoded, and the decoder's largest cost after the bytes themselves (perf, compiled build)."""
    packet: Packet = _new_tuple(_PACKET, (magic, ptype, args))
    return packet


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


#: Bodies at least this large are split straight out of the receive buffer (one copy per byte, not three), and when
#: one arrives in several reads its last argument is filled in place (_Body): each byte is copied once.
_COPY_ONCE: Final = 16 * 1024


class _Body:
    """A large packet's body while it arrives: its leading arguments, then the rest read into `target` in place.

    Normally the leading arguments (a function name, a handle, a unique) come whole with the header, and `target`
    is the last argument itself (unfilled.py): the bytes read into it are never copied again. When they do not (a
    NUL still to come), `target` takes the whole body, split once it is there.
    """

    __slots__ = ("leading", "target", "view", "fill")

    def __init__(self, leading: list[bytes], size: int) -> None:
        self.leading = leading
        target, view = unfilled(size)
        self.target: bytes | bytearray = target
        self.view: memoryview | None = view
        self.fill = 0

    def add(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        assert self.view is not None
        self.view[self.fill:self.fill + n] = data
        self.fill += n

    def space(self, limit: int) -> memoryview:
        """The free part of the target, at most limit bytes: to be filled in place, then filled()."""
        assert self.view is not None
        return self.view[self.fill:self.fill + limit]

    def filled(self, n: int) -> None:
        self.fill += n

    @property
    def size(self) -> int:
        """Bytes of the body received so far."""
        return sum(len(arg) + 1 for arg in self.leading) + self.fill

    def arguments(self, nargs: int) -> tuple[bytes, ...]:
        """The body's arguments, at most nargs of them (once it is whole)."""
        self.view = None  # filled: the bytes may be shared from now on
        last = finished(self.target)
        if len(self.leading) == nargs - 1:
            return (*self.leading, last)
        return tuple(last.split(b"\x00", nargs - 1))


def _split(chunk: bytes, start: int, end: int, nargs: int) -> tuple[bytes, ...]:
    """The arguments of the body chunk[start:end]: at most nargs, split at NULs (one copy of each byte)."""
    if end - start < _COPY_ONCE:
        return tuple(chunk[start:end].split(b"\x00", nargs - 1))
    args = []
    for _ in range(nargs - 1):
        nul = chunk.find(0, start, end)
        if nul < 0:
            break
        args.append(chunk[start:nul])
        start = nul + 1
    args.append(chunk[start:end])
    return tuple(args)


def _start_large(buf: bytes, start: int, n: int, end: int, nargs: int) -> _Body:
    """The _Body of a large packet whose body runs from start to end, of which buf holds what is before n."""
    leading: list[bytes] = []
    at = start
    for _ in range(nargs - 1):
        nul = buf.find(0, at, n)
        if nul < 0:
            leading, at = [], start  # a leading argument is still to come: the target takes the whole body
            break
        leading.append(buf[at:nul])
        at = nul + 1
    body = _Body(leading, end - at)
    with memoryview(buf) as view:  # no copy of the slice: add() copies it into the target
        body.add(view[at:n])
    return body


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

    __slots__ = ("_buf", "_pending", "_body", "body_need", "_large", "accept", "max_packet_size", "max_line_length",
                 "unknown_types")

    def __init__(
        self,
        accept: bytes = REQ,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        unknown_types: bool = False,
    ) -> None:
        self._buf = bytearray()
        #: The size of the packet begun in _buf once its header is checked (feed() waits for that many bytes).
        self._pending = 0
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
            if need:
                data = memoryview(data)  # slices without copies
                body.add(data[:need])
                data = data[need:]
            out.append(self._finish_large())
        # The bytes are parsed as one bytes object (compiled, its bytes are read without calls into the
        # interpreter); the buffer keeps only an unfinished event between calls.
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._pending:
                return out  # the packet begun is still incomplete (its header was checked when it came)
            chunk = bytes(buf)
            buf.clear()
        else:
            chunk = bytes(data)
        self._pending = 0
        pos = 0
        n = len(chunk)
        accept = self.accept
        accept_code = _MAGIC_CODES.get(accept, 0)
        max_packet_size = self.max_packet_size
        arg_counts = ARG_COUNTS
        try:
            while pos < n:
                if chunk[pos] == 0:
                    if n - pos < _HEADER_SIZE:
                        if not (REQ.startswith(chunk[pos : pos + 4]) or RES.startswith(chunk[pos : pos + 4])):
                            raise ProtocolError(b"INVALID_MAGIC", "bad packet magic")
                        break
                    code = chunk[pos + 3]
                    if chunk[pos + 1] != 82 or chunk[pos + 2] != 69 or (code != 81 and code != 83):  # R, E, Q/S
                        raise ProtocolError(b"INVALID_MAGIC", f"bad packet magic {chunk[pos:pos + 4]!r}")
                    magic = REQ if code == 81 else RES
                    ptype = (chunk[pos + 4] << 24) | (chunk[pos + 5] << 16) | (chunk[pos + 6] << 8) | chunk[pos + 7]
                    size = (chunk[pos + 8] << 24) | (chunk[pos + 9] << 16) | (chunk[pos + 10] << 8) | chunk[pos + 11]
                    if size > max_packet_size:
                        raise ProtocolError(
                            b"ARGUMENT_TOO_LARGE",
                            f"packet body of {size} bytes exceeds the limit of {max_packet_size}",
                        )
                    end = pos + _HEADER_SIZE + size
                    start = pos + _HEADER_SIZE
                    if end > n:
                        if size >= _COPY_ONCE and (code == accept_code or not accept) and arg_counts.get(ptype):
                            # Its body is kept out of the buffer: its last argument is filled in place as it comes
                            # (no buffer of the whole packet, no copy but the one out of each read).
                            count = arg_counts[ptype]
                            self._body = _start_large(chunk, start, n, end, count)
                            self.body_need = end - n
                            self._large = (magic, ptype, count)
                            pos = n
                        else:
                            self._pending = end - pos
                        break
                    pos = end
                    if code != accept_code and accept:
                        out.append(PacketError(b"INVALID_MAGIC", f"expected {accept!r} magic", ptype))
                        continue
                    nargs = arg_counts.get(ptype, -1)
                    if nargs < 0:
                        if self.unknown_types:
                            out.append(_packet(magic, ptype, (chunk[start:end],)))
                        else:
                            out.append(PacketError(b"INVALID_COMMAND", f"unknown packet type {ptype}", ptype))
                    elif nargs == 0:
                        out.append(_packet(magic, ptype, ()))
                    elif nargs == 1:
                        out.append(_packet(magic, ptype, (chunk[start:end],)))
                    else:
                        args = _split(chunk, start, end, nargs)
                        if len(args) != nargs:
                            out.append(_missing_arguments(ptype, nargs, len(args)))
                        else:
                            out.append(_packet(magic, ptype, args))
                else:
                    nl = chunk.find(b"\n", pos)
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
                    stop = nl - 1 if nl > pos and chunk[nl - 1] == 13 else nl
                    out.append(AdminLine(chunk[pos:stop]))
                    pos = nl + 1
        except ProtocolError as exc:
            exc.events = out
            self._pending = 0
            raise
        if pos < n:
            with memoryview(chunk) as view:
                buf += view[pos:]
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
        return _packet(magic, ptype, args)
