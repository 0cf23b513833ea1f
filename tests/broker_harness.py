"""A broker without sockets on a clock the test moves: the harness of the broker's unit tests."""

from __future__ import annotations

from geartrain.protocol import Decoder, Packet
from geartrain.protocol import constants as C
from geartrain.server.admin import Admin
from geartrain.server.broker import Broker, Peer


class Harness:
    def __init__(self, now: float = 1_000_000.0, **options) -> None:
        self.now = now
        self.broker = Broker(b"H:test", clock=lambda: self.now, **options)
        self.admin = Admin(self.broker)
        self.count = 0

    def peer(self) -> Peer:
        self.count += 1
        return self.broker.connect(self.count, "127.0.0.1")

    def send(self, peer: Peer, ptype: int, *args: bytes) -> None:
        self.broker.handle(peer, ptype, args)

    def recv(self, peer: Peer) -> list[Packet]:
        events = Decoder(accept=C.RES).feed(peer.take_output())
        self.broker.dirty.clear()
        return events

    def one(self, peer: Peer) -> Packet:
        events = self.recv(peer)
        assert len(events) == 1, events
        return events[0]

    def admin_cmd(self, line: bytes, peer: Peer | None = None) -> bytes:
        answer = self.admin.handle(peer or self.peer(), line)
        return answer if isinstance(answer, bytes) else b"".join(answer)

    def worker(self, *functions: bytes) -> Peer:
        peer = self.peer()
        for name in functions:
            self.send(peer, C.CAN_DO, name)
        return peer

    def submit(self, client: Peer, name: bytes, data: bytes = b"d", unique: bytes = b"",
               ptype: int = C.SUBMIT_JOB) -> bytes:
        self.send(client, ptype, name, unique, data)
        packet = self.one(client)
        assert packet.ptype == C.JOB_CREATED, packet
        return packet.args[0]

    def grab(self, worker: Peer, ptype: int = C.GRAB_JOB_UNIQ) -> Packet:
        self.send(worker, ptype)
        return self.one(worker)
