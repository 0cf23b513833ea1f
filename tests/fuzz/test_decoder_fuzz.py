"""Property tests of geartrain.protocol.Decoder against hostile byte streams.

Whatever bytes arrive, in whatever chunks, the decoder either returns events or raises ProtocolError (nothing else),
never holds more than one packet (header + max_packet_size) or one admin line (max_line_length) of unfinished
input, and decodes the same events however the stream is split.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geartrain.protocol import AdminLine, Decoder, Packet, PacketError, ProtocolError, encode
from geartrain.protocol import constants as C

MAX_PACKET = 96
MAX_LINE = 48
# At most one unfinished packet (header + body) or one unfinished admin line may be held between feeds.
BUFFER_BOUND = max(C.HEADER_SIZE + MAX_PACKET, MAX_LINE)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------------------------- strategies

arg_bytes = st.binary(max_size=24)


@st.composite
def valid_packets(draw, magic: bytes = C.REQ) -> bytes:
    """One well-formed packet of any known type; only the last argument may carry NULs."""
    ptype = draw(st.sampled_from(sorted(C.ARG_COUNTS)))
    count = C.ARG_COUNTS[ptype]
    args = [draw(arg_bytes).replace(b"\x00", b"") for _ in range(count)]
    if count:
        args[-1] = draw(arg_bytes)
    data = encode(magic, ptype, *args)
    # Keep under the decoder's limit so a valid stream stays valid.
    return data if len(data) - C.HEADER_SIZE <= MAX_PACKET else encode(magic, C.GRAB_JOB)


admin_lines = st.builds(
    lambda words, ending: b" ".join(words) + ending,
    st.lists(st.binary(min_size=1, max_size=8).map(lambda w: b"x" + w.replace(b"\n", b"").replace(b"\x00", b"")),
             min_size=1, max_size=4),
    st.sampled_from([b"\n", b"\r\n"]),
).filter(lambda line: len(line) - 1 <= MAX_LINE)

odd_packets = st.one_of(
    # The other side's magic: a PacketError, the stream goes on.
    valid_packets(C.RES),
    # Unknown types: type 0, 5, >= 43.
    st.builds(lambda t, body: struct.pack(">4sII", C.REQ, t, len(body)) + body,
              st.sampled_from([0, 5, 43, 99, 2**32 - 1]), st.binary(max_size=16)),
    # Too few arguments for a multi-argument type.
    st.builds(lambda t: struct.pack(">4sII", C.REQ, t, 1) + b"x", st.sampled_from([C.SUBMIT_JOB, C.WORK_STATUS])),
)

stream_items = st.one_of(valid_packets(), admin_lines, odd_packets)
valid_streams = st.lists(stream_items, max_size=12).map(b"".join)


@st.composite
def mutated_streams(draw) -> bytes:
    """A valid stream with bit flips, truncations, insertions and duplicated headers applied."""
    data = bytearray(draw(valid_streams))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "dup_header", "huge_size", "delete"]))
        pos = draw(st.integers(min_value=0, max_value=len(data)))
        if kind == "flip" and data:
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(min_value=1, max_value=8))]
        elif kind == "dup_header":
            # A header copied into the middle of the stream, as if a sender restarted a packet.
            header = draw(valid_packets())[: C.HEADER_SIZE]
            data[pos:pos] = header
        elif kind == "huge_size":
            data[pos:pos] = struct.pack(">4sII", C.REQ, C.ECHO_REQ, draw(st.integers(MAX_PACKET + 1, 2**32 - 1)))
    return bytes(data)


hostile_streams = st.one_of(st.binary(max_size=400), mutated_streams(), valid_streams)


def splits(stream_len: int):
    return st.lists(st.integers(min_value=0, max_value=max(stream_len, 0)), max_size=16).map(
        lambda cuts: sorted(set(cuts))
    )


# ----------------------------------------------------------------------------------------------- the oracle


def check_event(event, accept: bytes = C.REQ) -> None:
    """Every event is one of the three kinds, well-formed."""
    if type(event) is Packet:
        assert event.magic == accept
        assert len(event.args) == C.ARG_COUNTS[event.ptype]
        assert all(type(a) is bytes for a in event.args)
        assert all(b"\x00" not in a for a in event.args[:-1])
        assert len(b"\x00".join(event.args)) <= MAX_PACKET
    elif type(event) is AdminLine:
        assert type(event.line) is bytes
        assert b"\n" not in event.line
        assert len(event.line) <= MAX_LINE
        assert event.line[:1] != b"\x00"
    else:
        assert type(event) is PacketError, event
        assert event.code in (b"INVALID_MAGIC", b"INVALID_COMMAND", b"INVALID_PACKET")
        assert isinstance(event.message, str)


def decode_in_chunks(stream: bytes, cuts: list[int]) -> tuple[list, bytes | None, int]:
    """Feed the stream cut at `cuts`; return (events, fatal error code or None, bytes left buffered).

    Checks after every feed that nothing but events or ProtocolError comes out and the buffer stays bounded.
    """
    decoder = Decoder(accept=C.REQ, max_packet_size=MAX_PACKET, max_line_length=MAX_LINE)
    events: list = []
    bounds = [0, *[c for c in cuts if 0 < c < len(stream)], len(stream)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        try:
            got = decoder.feed(stream[start:end])
        except ProtocolError as exc:  # the only exception allowed; the server closes here
            assert exc.code in (b"INVALID_MAGIC", b"ARGUMENT_TOO_LARGE"), exc.code
            assert isinstance(exc.message, str) and exc.message
            for event in exc.events:
                check_event(event)
            assert decoder.buffered == 0
            return events + exc.events, exc.code, 0
        assert isinstance(got, list)
        for event in got:
            check_event(event)
        events += got
        assert decoder.buffered <= BUFFER_BOUND, decoder.buffered
    return events, None, decoder.buffered


# ----------------------------------------------------------------------------------------------- properties


@FUZZ
@given(data=st.data(), stream=hostile_streams)
def test_any_bytes_give_events_or_a_protocol_error_and_bounded_buffering(data, stream):
    decode_in_chunks(stream, data.draw(splits(len(stream))))


@FUZZ
@given(data=st.data(), stream=hostile_streams)
def test_any_stream_decodes_the_same_however_it_is_split(data, stream):
    whole = decode_in_chunks(stream, [])
    assert decode_in_chunks(stream, data.draw(splits(len(stream)))) == whole
    assert decode_in_chunks(stream, list(range(1, len(stream)))) == whole  # one byte at a time


@FUZZ
@given(data=st.data(), items=st.lists(stream_items, max_size=12))
def test_valid_streams_decode_to_exactly_what_was_sent(data, items):
    expected = []
    for item in items:
        if item[:1] == b"\x00":
            magic, ptype, size = struct.unpack(">4sII", item[:12])
            body = item[12:]
            count = C.ARG_COUNTS.get(ptype)
            if magic != C.REQ:
                expected.append((PacketError, b"INVALID_MAGIC"))
            elif count is None:
                expected.append((PacketError, b"INVALID_COMMAND"))
            elif count == 0:
                expected.append(Packet(C.REQ, ptype, ()))
            elif len(body.split(b"\x00", count - 1)) != count:
                expected.append((PacketError, b"INVALID_PACKET"))
            else:
                expected.append(Packet(C.REQ, ptype, tuple(body.split(b"\x00", count - 1))))
        else:
            expected.append(AdminLine(item.removesuffix(b"\n").removesuffix(b"\r")))
    stream = b"".join(items)
    events, fatal, left = decode_in_chunks(stream, data.draw(splits(len(stream))))
    assert fatal is None and left == 0
    simplified = [(PacketError, e.code) if type(e) is PacketError else e for e in events]
    assert simplified == expected


@FUZZ
@given(size=st.integers(min_value=MAX_PACKET + 1, max_value=2**32 - 1), prefix=valid_streams,
       cut=st.integers(min_value=0, max_value=C.HEADER_SIZE))
def test_a_huge_declared_size_is_refused_from_its_header_alone(size, prefix, cut):
    # Only the header arrives: the decoder must refuse before any of the body is sent.
    header = struct.pack(">4sII", C.REQ, C.SUBMIT_JOB, size)
    events, fatal, left = decode_in_chunks(prefix + header, [len(prefix) + cut])
    assert fatal == b"ARGUMENT_TOO_LARGE"


@FUZZ
@given(line=st.binary(min_size=MAX_LINE, max_size=4 * MAX_LINE).map(lambda b: b"a" + b.replace(b"\n", b"x")),
       newline=st.booleans())
def test_an_admin_line_past_the_limit_is_refused_without_its_newline(line, newline):
    events, fatal, left = decode_in_chunks(line + (b"\n" if newline else b""), [MAX_LINE // 2])
    assert fatal == b"ARGUMENT_TOO_LARGE" and events == []
