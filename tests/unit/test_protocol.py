"""The sans-I/O wire format: encoding, the incremental decoder and the client connection."""

from __future__ import annotations

import ctypes
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geartrain.protocol import (
    JOB_ASSIGNMENTS,
    AdminLine,
    AdminResponse,
    ClientConnection,
    Decoder,
    Packet,
    PacketError,
    ProtocolError,
    assignment,
    encode_request,
    encode_response,
    unfilled,
)
from geartrain.protocol import constants as C


def test_every_packet_type_has_an_argument_count_and_a_name():
    numbers = [n for n in range(1, 43) if n != 5]
    assert sorted(C.ARG_COUNTS) == numbers
    assert all(C.TYPE_NAMES[n] for n in numbers)
    assert C.TYPE_NAMES[C.SUBMIT_JOB_EPOCH] == "SUBMIT_JOB_EPOCH"


@pytest.mark.parametrize("ptype", sorted(C.ARG_COUNTS))
def test_every_type_round_trips_with_nul_in_its_last_argument(ptype):
    count = C.ARG_COUNTS[ptype]
    args = tuple(b"arg%d" % i for i in range(count))
    if count:
        args = args[:-1] + (b"last\x00with\x00nuls",)
    magic = C.REQ
    decoder = Decoder(accept=magic)
    assert decoder.feed(encode_request(ptype, *args)) == [Packet(magic, ptype, args)]


def test_encode_checks_argument_count_and_nul_placement():
    with pytest.raises(ValueError, match="takes 3 arguments"):
        encode_request(C.SUBMIT_JOB, b"f", b"u")
    with pytest.raises(ValueError, match="only the last argument"):
        encode_request(C.SUBMIT_JOB, b"f\x00", b"u", b"d")
    with pytest.raises(ValueError, match="unknown packet type"):
        encode_request(99)


def test_decoder_takes_one_byte_at_a_time_and_mixes_admin_lines():
    stream = (
        encode_request(C.SUBMIT_JOB, b"f", b"u", b"x\x00y")
        + b"status\r\n"
        + encode_request(C.GRAB_JOB)
        + b"workers\n"
    )
    decoder = Decoder()
    events = []
    for i in range(len(stream)):
        events += decoder.feed(stream[i : i + 1])
    assert events == [
        Packet(C.REQ, C.SUBMIT_JOB, (b"f", b"u", b"x\x00y")),
        AdminLine(b"status"),
        Packet(C.REQ, C.GRAB_JOB, ()),
        AdminLine(b"workers"),
    ]
    assert decoder.buffered == 0


def test_oversized_body_is_a_protocol_error_before_buffering_it():
    decoder = Decoder(max_packet_size=1024)
    header = struct.pack(">4sII", C.REQ, C.SUBMIT_JOB, 4 * 1024**3 - 1)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(header)
    assert info.value.code == b"ARGUMENT_TOO_LARGE"
    assert decoder.buffered == 0


def test_bad_magic_is_fatal_but_the_other_sides_magic_is_a_packet_error():
    with pytest.raises(ProtocolError, match="magic"):
        Decoder().feed(b"\x00XYZ" + bytes(8))
    with pytest.raises(ProtocolError, match="magic"):
        Decoder().feed(b"\x00RX")  # already impossible before the header is complete
    events = Decoder().feed(encode_response(C.NOOP) + encode_request(C.NOOP))
    assert events[0] == PacketError(b"INVALID_MAGIC", "expected b'\\x00REQ' magic", C.NOOP)
    assert events[1] == Packet(C.REQ, C.NOOP, ())


def test_unknown_type_and_missing_arguments_keep_the_stream_in_sync():
    stream = struct.pack(">4sII", C.REQ, 77, 3) + b"abc" + struct.pack(">4sII", C.REQ, C.SUBMIT_JOB, 3) + b"f\x00u"
    stream += encode_request(C.ECHO_REQ, b"hi")
    events = Decoder().feed(stream)
    assert [type(e) for e in events] == [PacketError, PacketError, Packet]
    assert events[0].code == b"INVALID_COMMAND"
    assert events[1].code == b"INVALID_PACKET"
    assert events[2].args == (b"hi",)


def test_admin_line_over_the_limit_is_a_protocol_error():
    decoder = Decoder(max_line_length=100)
    decoder.feed(b"x" * 100)
    with pytest.raises(ProtocolError, match="admin line"):
        decoder.feed(b"y")


def test_protocol_error_carries_the_events_decoded_before_it():
    with pytest.raises(ProtocolError) as info:
        Decoder().feed(encode_request(C.ECHO_REQ, b"a") + b"\x00BAD" + bytes(8))
    assert info.value.events == [Packet(C.REQ, C.ECHO_REQ, (b"a",))]


@settings(max_examples=200, deadline=None)
@given(
    packets=st.lists(
        st.tuples(st.sampled_from(sorted(C.ARG_COUNTS)), st.lists(st.binary(max_size=20), min_size=8, max_size=8)),
        max_size=10,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_any_split_of_a_valid_stream_decodes_the_same(packets, cuts):
    stream = b""
    expected = []
    for ptype, pool in packets:
        count = C.ARG_COUNTS[ptype]
        args = tuple(a.replace(b"\x00", b"") for a in pool[:count])
        stream += encode_request(ptype, *args)
        expected.append(Packet(C.REQ, ptype, args))
    decoder = Decoder()
    events = []
    last = 0
    for cut in sorted(set(c for c in cuts if c < len(stream))):
        events += decoder.feed(stream[last:cut])
        last = cut
    events += decoder.feed(stream[last:])
    assert events == expected


def test_client_connection_frames_admin_answers_in_order():
    conn = ClientConnection()
    assert conn.send_admin("status") == b"status\n"
    conn.send_admin(b"version")
    conn.send_admin(b"show jobs")
    events = conn.receive_data(b"f\t1\t0\t1\n.\nOK 1.0\r\nERR UNKNOWN_COMMAND x\r\n")
    assert events == [
        AdminResponse(b"status", (b"f\t1\t0\t1",), b"f\t1\t0\t1\n.\n"),
        AdminResponse(b"version", (b"OK 1.0",), b"OK 1.0\n"),
        AdminResponse(b"show jobs", (b"ERR UNKNOWN_COMMAND x",), b"ERR UNKNOWN_COMMAND x\n"),
    ]
    assert not events[2].ok
    assert conn.admin_pending == 0


def test_client_connection_decodes_packets_between_admin_answers():
    conn = ClientConnection()
    conn.send_admin("workers")
    data = b"1 ::1 - :\n" + encode_response(C.NOOP) + b".\n"
    events = conn.receive_data(data)
    assert events == [Packet(C.RES, C.NOOP, ()), AdminResponse(b"workers", (b"1 ::1 - :",), b"1 ::1 - :\n.\n")]


def test_large_bodies_split_the_same_as_small_ones():
    big = b"x\x00y" * 20_000
    stream = encode_request(C.SUBMIT_JOB, b"f", b"u", big) + encode_request(C.ECHO_REQ, big)
    decoder = Decoder()
    events = decoder.feed(stream[:1000]) + decoder.feed(stream[1000:])
    assert events == [Packet(C.REQ, C.SUBMIT_JOB, (b"f", b"u", big)), Packet(C.REQ, C.ECHO_REQ, (big,))]
    short = struct.pack(">4sII", C.REQ, C.SUBMIT_JOB, 40_000) + b"f" * 40_000
    assert Decoder().feed(short)[0].code == b"INVALID_PACKET"


@pytest.mark.parametrize(
    ("ptype", "args", "expected"),
    [
        (C.JOB_ASSIGN, (b"H:1", b"f", b"data\x00x"), (b"H:1", b"f", b"", b"data\x00x")),
        (C.JOB_ASSIGN_UNIQ, (b"H:2", b"f", b"u", b"d"), (b"H:2", b"f", b"u", b"d")),
        (C.JOB_ASSIGN_ALL, (b"H:3", b"f", b"u", b"reducer", b"d"), (b"H:3", b"f", b"u", b"d")),
    ],
)
def test_assignment_reads_every_job_assign_variant(ptype, args, expected):
    assert ptype in JOB_ASSIGNMENTS
    job = assignment(Packet(C.RES, ptype, args))
    assert tuple(job) == expected and job.unique == expected[2]


def test_assignment_refuses_other_packets():
    with pytest.raises(ValueError, match="NO_JOB does not assign a job"):
        assignment(Packet(C.RES, C.NO_JOB, ()))


@pytest.mark.parametrize("read", [1, 7, 1000, 16 * 1024, 100_000, 258_048])
def test_a_large_packet_read_in_pieces_comes_out_whole_with_what_follows(read):
    data = bytes(range(256)) * 4096  # 1 MiB, NULs included
    stream = (encode_request(C.SUBMIT_JOB, b"func", b"uniq", data) + encode_request(C.ECHO_REQ, b"hi")
              + encode_request(C.WORK_FAIL, b"x" * 20_000) + b"status\n")
    decoder = Decoder()
    events = []
    for i in range(0, len(stream), read):
        events += decoder.feed(memoryview(stream)[i:i + read])
        assert decoder.buffered <= C.HEADER_SIZE + len(data)
    assert events == [Packet(C.REQ, C.SUBMIT_JOB, (b"func", b"uniq", data)), Packet(C.REQ, C.ECHO_REQ, (b"hi",)),
                      Packet(C.REQ, C.WORK_FAIL, (b"x" * 20_000,)), AdminLine(b"status")]
    assert all(type(arg) is bytes for event in events[:3] for arg in event.args)
    assert decoder.buffered == 0


def test_a_large_packet_short_of_arguments_is_a_packet_error_and_the_stream_stays_in_sync():
    body = b"no-nul-at-all" * 4000
    stream = struct.pack(">4sII", C.REQ, C.SUBMIT_JOB, len(body)) + body + encode_request(C.ECHO_REQ, b"hi")
    decoder = Decoder()
    events = decoder.feed(stream[:30_000]) + decoder.feed(stream[30_000:])
    assert events[0] == PacketError(b"INVALID_PACKET", "SUBMIT_JOB needs 3 arguments, got 1", C.SUBMIT_JOB)
    assert events[1:] == [Packet(C.REQ, C.ECHO_REQ, (b"hi",))]
    assert decoder.buffered == 0


def test_a_large_body_read_in_place_comes_out_whole_and_what_follows_is_fed_as_usual():
    data = bytes(range(256)) * (10 * 1024)  # 2.5 MiB: three pieces
    stream = encode_request(C.SUBMIT_JOB, b"f", b"u", data) + encode_request(C.ECHO_REQ, b"hi")
    end = len(stream) - 14  # where the body ends: the echo follows
    decoder = Decoder(max_packet_size=64 * 1024 * 1024)
    assert decoder.body_need == 0  # no large body under way
    events = decoder.feed(stream[:5000])
    pos = 5000
    while decoder.body_need:
        assert decoder.body_need == end - pos
        space = decoder.body_space()
        assert 0 < len(space) <= end - pos
        n = min(len(space), 300_001)  # a short read
        space[:n] = stream[pos:pos + n]
        pos += n
        decoder.body_filled(n)
    assert pos == end
    events += decoder.feed(b"")  # the body is whole: the packet comes out
    assert [e.ptype for e in events] == [C.SUBMIT_JOB]
    events += decoder.feed(stream[pos:])
    assert events == [Packet(C.REQ, C.SUBMIT_JOB, (b"f", b"u", data)), Packet(C.REQ, C.ECHO_REQ, (b"hi",))]
    assert decoder.buffered == 0


def address_of(buffer) -> int:
    """Where a buffer's first byte is (a writable one, or a bytes object)."""
    if type(buffer) is bytes:
        return ctypes.cast(ctypes.c_char_p(buffer), ctypes.c_void_p).value
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


@pytest.mark.parametrize("head", [5000, 9])
def test_a_large_body_is_read_into_the_bytes_it_comes_out_as(head):
    """The reads go to the payload's own memory: body_space() is the payload's next bytes, never a copy of them.
    With the leading arguments in the first read (5000) the payload is the last argument; when they are not (9
    bytes of the body), the whole body, split at its end."""
    data = bytes(range(256)) * 4096
    packet = encode_request(C.WORK_COMPLETE, b"H:x:1", data)
    decoder = Decoder()
    assert decoder.feed(packet[:C.HEADER_SIZE + head]) == []
    pos = C.HEADER_SIZE + head
    spaces = []
    while decoder.body_need:
        space = decoder.body_space()[:100_000]
        spaces.append((address_of(space), pos))
        space[:] = packet[pos:pos + len(space)]
        decoder.body_filled(len(space))
        pos += len(space)
    [event] = decoder.feed(b"")
    assert event == Packet(C.REQ, C.WORK_COMPLETE, (b"H:x:1", data))
    assert decoder.buffered == 0
    if head == 5000:
        assert unfilled.IN_PLACE  # CPython
        start = address_of(event.args[1]) - (len(packet) - len(data))  # where the packet's first byte would be
        assert all(address == start + offset for address, offset in spaces)


def test_the_fallback_without_bytes_filled_in_place_gives_the_same_bytes(monkeypatch):
    monkeypatch.setattr(unfilled, "_new", None)
    data = bytes(range(256)) * 4096
    packet = encode_request(C.SUBMIT_JOB, b"f", b"u", data)
    decoder = Decoder()
    events = []
    for i in range(0, len(packet), 70_000):
        events += decoder.feed(packet[i:i + 70_000])
    assert events == [Packet(C.REQ, C.SUBMIT_JOB, (b"f", b"u", data))]
    assert type(events[0].args[2]) is bytes


def test_a_decoder_dropped_mid_packet_holds_only_what_came():
    decoder = Decoder(max_packet_size=64 * 1024 * 1024)
    decoder.feed(encode_request(C.WORK_COMPLETE, b"H:x:1", bytes(3_000_000))[:2_500_000])
    assert decoder.buffered == 2_500_000 - C.HEADER_SIZE
    assert decoder.body_need == 3_000_000 + 6 - decoder.buffered
