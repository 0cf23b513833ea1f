"""The client's Link: server address lists (the parser and the backoff themselves are tested in
tests/unit/test_session.py) and its writes, against a listening socket of the test's own."""

from __future__ import annotations

import asyncio

import pytest

from geartrain.client.link import Link, parse_servers


def test_a_single_spec_is_a_list_of_one():
    assert parse_servers("h:1") == [("h", 1)]
    assert parse_servers(("h", 1)) == [("h", 1)]
    assert parse_servers(["a:1", ("b", 2), "[::1]:3"]) == [("a", 1), ("b", 2), ("::1", 3)]
    with pytest.raises(ValueError):
        parse_servers([])


def test_send_writes_the_queued_bytes_and_its_own_at_once_in_order():
    """Link.send (a worker job's result and next grab): written in the same loop pass, after what write() queued,
    and the flush write() scheduled then finds nothing to write twice."""

    async def body() -> bytes:
        received = bytearray()
        closed = asyncio.Event()

        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.extend(await reader.read())  # until the link closes
            writer.close()
            closed.set()

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        link = Link(("127.0.0.1", port), None, on_connected=lambda link: None, on_events=lambda link, events: None,
                    on_lost=lambda link, exc: None)
        link.start()
        try:
            assert await link.first_attempt()
            assert link.write(b"queued-") and link.send(b"sent")
            assert link.transport is not None and link.transport.get_write_buffer_size() == 0  # in the socket now
            assert link._buffer == []
            await asyncio.sleep(0)  # the flush write() scheduled runs: nothing left for it
        finally:
            await link.close()
        await asyncio.wait_for(closed.wait(), 10)
        server.close()
        await server.wait_closed()
        return bytes(received)

    assert asyncio.run(body()) == b"queued-sent"


def test_send_while_disconnected_sends_nothing():
    link = Link(("127.0.0.1", 1), None, on_connected=lambda link: None, on_events=lambda link, events: None,
                on_lost=lambda link, exc: None)
    assert link.send(b"x") is False and link._buffer == []


def test_what_the_owner_writes_on_received_bytes_leaves_when_it_returns():
    """A worker's answers to what arrived (PRE_SLEEP after NO_JOB, the grab after NOOP) go out in one write at the end
    of the data callback, in that loop pass: no flush is scheduled for them (a loop pass more each)."""

    class Lines:
        def receive_data(self, data: bytes) -> list[bytes]:
            return [data]

    async def body() -> tuple[bytes, list[object]]:
        scheduled: list[object] = []
        got = asyncio.get_running_loop().create_future()

        def answer(link: Link, events: list[bytes]) -> None:
            for event in events:
                link.write(b"<" + event)
                link.write(b">")
            scheduled.append(link._flush_handle)

        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"ping")
            got.set_result(await reader.readexactly(6))
            writer.close()

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        link = Link(("127.0.0.1", port), Lines(), on_connected=lambda link: None, on_events=answer,
                    on_lost=lambda link, exc: None)
        link.start()
        try:
            assert await link.first_attempt()
            answered = await asyncio.wait_for(got, 10)
        finally:
            await link.close()
        server.close()
        await server.wait_closed()
        return answered, scheduled

    answered, scheduled = asyncio.run(body())
    assert answered == b"<ping>"
    assert scheduled == [None]
