"""Sans-I/O client side of one Gearman connection, in the style of h11.

The faces (gear, gearman, the asyncio client) own the socket; this object turns their requests into bytes and
the server's bytes into events, including admin answers framed as whole responses matched to their command in
order, so a face never parses the wire itself.
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple

from . import constants as C
from .codec import AdminLine, Decoder, Packet, PacketError, encode_request
from .constants import DEFAULT_MAX_PACKET_SIZE, RES, admin_answer_is_multiline


class AdminResponse(NamedTuple):
    """The whole answer to one admin command: its lines without the closing "." and the raw bytes."""

    command: bytes
    lines: tuple[bytes, ...]
    raw: bytes

    @property
    def ok(self) -> bool:
        return not (self.lines and self.lines[0].startswith(b"ERR"))


ClientEvent = Packet | PacketError | AdminResponse | AdminLine

#: The packet types that hand a worker a job.
JOB_ASSIGNMENTS = frozenset((C.JOB_ASSIGN, C.JOB_ASSIGN_UNIQ, C.JOB_ASSIGN_ALL))


class Assignment(NamedTuple):
    """A job handed to a worker, whichever JOB_ASSIGN variant brought it (unique is b"" for JOB_ASSIGN)."""

    handle: bytes
    function: bytes
    unique: bytes
    data: bytes


def assignment(packet: Packet) -> Assignment:
    """The job of a JOB_ASSIGN, JOB_ASSIGN_UNIQ or JOB_ASSIGN_ALL packet (its reducer, if any, is dropped)."""
    args = packet.args
    if packet.ptype == C.JOB_ASSIGN_UNIQ:
        return Assignment(*args)
    if packet.ptype == C.JOB_ASSIGN:
        return Assignment(args[0], args[1], b"", args[2])
    if packet.ptype == C.JOB_ASSIGN_ALL:
        return Assignment(args[0], args[1], args[2], args[4])
    raise ValueError(f"{packet.name} does not assign a job")


class ClientConnection:
    """Encodes requests and decodes responses for one connection to a server."""

    def __init__(self, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE, accept: bytes = RES) -> None:
        self._decoder = Decoder(accept=accept, max_packet_size=max_packet_size, max_line_length=max_packet_size)
        self._admin_pending: deque[tuple[bytes, bool]] = deque()
        self._admin_lines: list[bytes] = []

    @property
    def admin_pending(self) -> int:
        """Admin commands sent whose answer has not fully arrived."""
        return len(self._admin_pending)

    def send_packet(self, ptype: int, *args: bytes) -> bytes:
        """Bytes of one request packet."""
        return encode_request(ptype, *args)

    def send_admin(self, command: bytes | str) -> bytes:
        """Bytes of one admin command line; its answer comes back as an AdminResponse, in order."""
        if isinstance(command, str):
            command = command.encode("utf-8")
        command = command.rstrip(b"\r\n")
        if b"\n" in command or command.startswith(b"\x00"):
            raise ValueError("an admin command is one line of text")
        self._admin_pending.append((command, admin_answer_is_multiline(command)))
        return command + b"\n"

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """Feed bytes from the server; return the packets and admin answers they complete."""
        events: list[ClientEvent] = []
        for event in self._decoder.feed(data):
            self.collect(event, events)
        return events

    def collect(self, event: Any, out: list[Any]) -> None:
        """Put one decoded event into ``out``: an admin line joins its answer (the whole answer comes out once
        complete), anything else goes in as it is. The sessions hand their packets elsewhere and the rest here."""
        if type(event) is AdminLine:
            answer = self._admin_line(event.line)
            if answer is not None:
                out.append(answer)
        else:
            out.append(event)

    def reset(self) -> None:
        """Forget buffered bytes and pending admin commands: the socket was closed and will be reopened."""
        self._decoder = Decoder(
            accept=self._decoder.accept, max_packet_size=self._decoder.max_packet_size,
            max_line_length=self._decoder.max_line_length,
        )
        self._admin_pending.clear()
        self._admin_lines.clear()

    def _admin_line(self, line: bytes) -> AdminResponse | AdminLine | None:
        if not self._admin_pending:
            return AdminLine(line)
        command, multiline = self._admin_pending[0]
        if not multiline or (not self._admin_lines and line.startswith(b"ERR")):
            self._admin_pending.popleft()
            return AdminResponse(command, (line,), line + b"\n")
        if line == b".":
            self._admin_pending.popleft()
            lines = tuple(self._admin_lines)
            self._admin_lines.clear()
            raw = b"".join(item + b"\n" for item in lines) + b".\n"
            return AdminResponse(command, lines, raw)
        self._admin_lines.append(line)
        return None
