"""Sans-I/O Gearman wire format: packet types, encoding, an incremental decoder, the client connection."""

from . import constants
from .codec import (
    AdminLine,
    Decoder,
    Event,
    Packet,
    PacketError,
    ProtocolError,
    encode,
    encode_request,
    encode_response,
    join_body,
    pack,
)
from .connection import JOB_ASSIGNMENTS, AdminResponse, Assignment, ClientConnection, ClientEvent, assignment
from .constants import REQ, RES
from .session import ClientSession, WorkerSession
from .text import to_bytes

__all__ = [
    "JOB_ASSIGNMENTS",
    "REQ",
    "RES",
    "AdminLine",
    "AdminResponse",
    "Assignment",
    "ClientConnection",
    "ClientSession",
    "ClientEvent",
    "Decoder",
    "Event",
    "Packet",
    "PacketError",
    "ProtocolError",
    "WorkerSession",
    "constants",
    "encode",
    "encode_request",
    "encode_response",
    "assignment",
    "join_body",
    "pack",
    "to_bytes",
]
