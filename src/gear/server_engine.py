"""The seam between gear's server model (a gear.Server subclass with hooks) and geartrain's engine: the engine's
transport, listener, TLS and write batching drive the model through the broker and admin interfaces it expects."""

from __future__ import annotations

from typing import Any

from geartrain.server.broker import Broker, Peer

from . import constants
from .packet import Packet
from .server_records import ServerAdminRequest, ServerConnection


class GearModelBroker(Broker):
    """The engine's broker over a gear.Server's own model: each connection becomes a ServerConnection in
    ``active_connections``, every packet (private types too) goes to ``handlePacket``, and a lost connection to
    ``_lostConnection``."""

    def __init__(self, server: Any) -> None:
        super().__init__()
        # An instance attribute, not a class one: a compiled Broker (mypyc) reads its own slot, not the subclass's.
        self.decode_unknown_types = True
        self.handlers = {}  # nothing short-cuts handle()
        self.gear = server
        self.connections: dict[Peer, ServerConnection] = {}

    def connect(self, peer_id: int, address: str = "-", subject: str | None = None) -> Peer:
        peer = super().connect(peer_id, address, subject)
        connection = ServerConnection._over_peer(peer, self.gear)
        self.connections[peer] = connection
        with self.gear.connections_condition:
            self.gear.active_connections.append(connection)
            self.gear.connections_condition.notify_all()
        self.gear.log.info("Accepted connection %s", connection)
        return peer

    def disconnect(self, peer: Peer) -> None:
        connection = self.connections.pop(peer, None)
        super().disconnect(peer)
        if connection is not None:
            self.gear._lostConnection(connection)

    def handle(self, peer: Peer, ptype: int, args: tuple[bytes, ...]) -> None:
        connection = self.connections.get(peer)
        if connection is not None:
            self.gear.handlePacket(Packet._received(constants.REQ, ptype, args, connection))


class GearModelAdmin:
    """Admin lines of the engine's connections, answered by the model's ``handleAdminRequest``."""

    def __init__(self, server: Any) -> None:
        self.gear = server

    def handle(self, peer: Peer, line: bytes) -> bytes:
        connection = self.gear.server.broker.connections.get(peer)
        if connection is not None:
            request = ServerAdminRequest(connection)
            request.command = line
            self.gear.handleAdminRequest(request)
        return b""  # the model answered through connection.sendRaw()
