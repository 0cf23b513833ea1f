"""A WorkerJob's result packets (WORK_*) go out through Connection._sendWork: framed straight to bytes, or as a
gear.Packet through sendPacket when something would see it (a subclass's sendPacket, debug logging)."""

from __future__ import annotations

import logging
import socket

import pytest

import gear
from gear import constants
from geartrain.protocol import Decoder, pack

_SOCKETS: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets():
    yield
    while _SOCKETS:
        _SOCKETS.pop().close()


def _connected(cls: type = gear.Connection) -> tuple[gear.Connection, socket.socket]:
    near, far = socket.socketpair()
    _SOCKETS.extend((near, far))
    conn = cls("127.0.0.1", 0)
    conn.conn = near
    conn.connected = True
    return conn, far


def _received(far: socket.socket) -> list:
    far.settimeout(5)
    return Decoder(accept=b"\0REQ").feed(far.recv(65536))


def _job(conn: gear.Connection) -> gear.WorkerJob:
    job = gear.WorkerJob(b"H:1", b"f", b"abc")
    job.connection = conn
    return job


def test_work_complete_is_framed_as_a_packet_would_be():
    conn, far = _connected()
    _job(conn).sendWorkComplete(b"cb\x00a")
    [packet] = _received(far)
    assert (packet.magic, packet.ptype, packet.args) == (b"\0REQ", constants.WORK_COMPLETE, (b"H:1", b"cb\x00a"))
    framed = pack(packet.magic, packet.ptype, b"\x00".join(packet.args))
    assert framed == gear.Packet(constants.REQ, constants.WORK_COMPLETE, b"H:1\x00cb\x00a").toBinary()


def test_a_subclass_sendPacket_still_sees_every_result_packet():  # noqa: N802 - gear's method name
    seen = []

    class Recording(gear.Connection):
        def sendPacket(self, packet):  # noqa: N802
            seen.append(packet)
            super().sendPacket(packet)

    conn, far = _connected(Recording)
    job = _job(conn)
    job.sendWorkStatus(1, 2)
    job.sendWorkComplete(b"done")
    assert [(p.ptype, p.data) for p in seen] == [
        (constants.WORK_STATUS, b"H:1\x001\x002"), (constants.WORK_COMPLETE, b"H:1\x00done")]
    assert [p.ptype for p in _received(far)] == [constants.WORK_STATUS, constants.WORK_COMPLETE]


def test_debug_logging_still_logs_each_sent_packet(caplog):
    conn, far = _connected()
    with caplog.at_level(logging.DEBUG, logger=conn.log.name):
        _job(conn).sendWorkFail()
    assert any("Sending packet" in r.getMessage() and "WORK_FAIL" in r.getMessage() for r in caplog.records)
    assert [p.ptype for p in _received(far)] == [constants.WORK_FAIL]


def test_a_handle_with_a_nul_is_refused_before_anything_is_sent():
    conn, far = _connected()
    job = _job(conn)
    job.handle = b"H:\x001"
    with pytest.raises(gear.InvalidDataError):
        job.sendWorkComplete(b"x")
    far.setblocking(False)
    with pytest.raises(BlockingIOError):
        far.recv(1)
