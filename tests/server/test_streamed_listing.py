"""`show jobs` over a big queue is written as the client reads it: the server never holds the whole listing, the
connection's other answers keep their order around it, and other connections are served meanwhile."""

from __future__ import annotations

import time

import pytest

from geartrain.protocol import constants as C
from geartrain.protocol.connection import AdminResponse
from geartrain.server.admin import CHUNK_LINES, streamed_listing

from conftest import start_geartrain
from wire import Wire

#: Enough queued jobs that their listing (~40 bytes a line) is far past the socket buffers and the high water.
JOBS = 200_000
HIGH_WATER = 64 * 1024


def test_a_listing_is_cut_into_chunks_and_ends_with_the_dot_line():
    assert list(streamed_listing([])) == [b".\n"]
    lines = [b"%d" % i for i in range(CHUNK_LINES * 2)]
    chunks = list(streamed_listing(lines))
    assert len(chunks) == 3 and chunks[-1] == b".\n"
    assert b"".join(chunks) == b"".join(line + b"\n" for line in lines) + b".\n"
    assert list(streamed_listing([b"a", b"b"])) == [b"a\nb\n.\n"]


@pytest.fixture
def small_high_water_server():
    server = start_geartrain(output_high_water=HIGH_WATER)
    try:
        yield server
    finally:
        server.stop()


def _queue_background(wire: Wire, count: int) -> None:
    batch = 10_000
    for start in range(0, count, batch):
        wire.send_raw(b"".join(wire.conn.send_packet(C.SUBMIT_JOB_BG, b"bulk", b"", b"x")
                               for _ in range(min(batch, count - start))))
        for _ in range(min(batch, count - start)):
            wire.expect(C.JOB_CREATED, timeout=60)


def _streaming_connection(server, deadline: float):
    """The server side of the connection whose listing is paused because its client does not read."""
    while time.monotonic() < deadline:
        for conn in list(server.connections):
            if conn.stream is not None and conn.paused:
                return conn
        time.sleep(0.01)
    raise AssertionError("no connection's listing was paused for a client that does not read")


def test_a_long_listing_waits_for_its_reader_and_keeps_its_place(small_high_water_server):
    s = small_high_water_server
    with Wire(s.host, s.port) as loader, Wire(s.host, s.port) as worker, \
            Wire(s.host, s.port, timeout=60) as client, Wire(s.host, s.port) as other:
        _queue_background(loader, JOBS)
        worker.register(b"f")
        # One write: a foreground submit, the listing, and a command after it. The client reads nothing yet.
        client.send_raw(client.conn.send_packet(C.SUBMIT_JOB, b"f", b"", b"in")
                        + client.conn.send_admin("show jobs") + client.conn.send_admin("version"))
        conn = _streaming_connection(s.server, time.monotonic() + 60)
        # The server holds about one chunk beyond the high water, not the ~8 MB listing.
        assert conn.transport.get_write_buffer_size() <= HIGH_WATER + 512 * 1024
        # Other connections are served while the listing waits.
        assert other.admin("status").lines[0].startswith(b"bulk\t")
        # The worker finishes the client's job: its WORK_COMPLETE must not land inside the listing.
        job = worker.grab()
        worker.send(C.WORK_COMPLETE, job.args[0], b"out")
        worker.admin("version")  # the server has handled the WORK_COMPLETE
        assert client.expect(C.JOB_CREATED).args[0] == job.args[0]
        listing = client.next_event()
        assert isinstance(listing, AdminResponse) and listing.command == b"show jobs"
        assert len(listing.lines) == JOBS + 1
        assert all(line.count(b"\t") == 3 for line in listing.lines)
        rest = [client.next_event(), client.next_event()]
        kinds = sorted("version" if isinstance(e, AdminResponse) else C.TYPE_NAMES[e.ptype] for e in rest)
        assert kinds == ["WORK_COMPLETE", "version"]
        # The connection reads again: a request after the listing is answered.
        assert client.admin("version").lines
