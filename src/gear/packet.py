"""Packets and admin requests as gear presents them. Framing and encoding are geartrain.protocol's: a Packet
is built from a decoded event, and toBinary() frames it with the protocol core's pack()."""

from __future__ import annotations

import threading
from typing import Any

from geartrain.protocol import constants as wire_constants
from geartrain.protocol import join_body, pack

from . import constants
from .errors import InvalidDataError, UnknownJobError
from .text import to_bytes

__all__ = [
    "AdminRequest",
    "CancelJobAdminRequest",
    "Packet",
    "ShowJobsAdminRequest",
    "ShowUniqueJobsAdminRequest",
    "StatusAdminRequest",
    "VersionAdminRequest",
    "WorkersAdminRequest",
]

_HANDLE_TYPES = frozenset(
    (
        constants.JOB_CREATED,
        constants.JOB_ASSIGN,
        constants.GET_STATUS,
        constants.STATUS_RES,
        constants.WORK_STATUS,
        constants.WORK_COMPLETE,
        constants.WORK_FAIL,
        constants.WORK_EXCEPTION,
        constants.WORK_DATA,
        constants.WORK_WARNING,
    )
)
_SUBMIT_TYPES = frozenset(wire_constants.SUBMIT_TYPES)  # the protocol's one submit-type table


def _body(ptype: int, args: tuple[bytes, ...]) -> bytes:
    """A request's body, checked (count, NUL placement) by the protocol core; InvalidDataError if it is wrong."""
    try:
        return join_body(ptype, *args)
    except ValueError as exc:
        raise InvalidDataError(str(exc)) from None


def request_frame(ptype: int, args: tuple[bytes, ...]) -> bytes:
    """The wire form of ``Packet._build(ptype, *args)`` without the Packet object."""
    return pack(constants.REQ, ptype, _body(ptype, args))


class Packet:
    """A binary packet received from or to be sent over a :py:class:`Connection`.

    :arg bytes code: the magic code, :py:data:`constants.REQ` or :py:data:`constants.RES`.
    :arg int ptype: the packet type (one of the packet types in :py:mod:`gear.constants`).
    :arg bytes data: the body: the arguments joined by NUL bytes (str is sent as UTF-8).
    :arg Connection connection: the connection the packet arrived on (optional).
    :raises InvalidDataError: if the magic code does not start with a NUL byte.
    """

    def __init__(self, code: bytes, ptype: int, data: Any, connection: Any = None) -> None:
        if not isinstance(code, (bytes, bytearray)):
            raise TypeError("code must be of type bytes or bytearray")
        if code[0:1] != b"\x00":
            raise InvalidDataError("First byte of packet must be 0")
        data = to_bytes(data)
        if not isinstance(data, bytes):
            raise TypeError("data must be of type bytes, bytearray or str")
        self.code = bytes(code)
        self.ptype = ptype
        self.data = data
        self.connection = connection

    #: The decoded arguments of a received packet, with the body they were joined into: getArgument() uses
    #: them while ``data`` is still that body (one split by the protocol core, not one per argument read).
    _args: tuple[bytes, ...] = ()
    _args_of: bytes | None = None
    #: A built packet's wire form, with the body and type it framed: toBinary() returns it while they stand.
    _frame = b""
    _frame_of: bytes | None = None
    _frame_type = -1
    #: What a received reply answers (the task given when its request was sent), and the job a received WORK_*
    #: packet is for (one of several when submits coalesced on one handle): set by the connection's session.
    _task: Any = None
    _job: Any = None

    @classmethod
    def _received(cls, code: bytes, ptype: int, args: tuple[bytes, ...], connection: Any) -> Packet:
        """A packet as the protocol core decoded (and checked) it, arriving on ``connection``."""
        packet = cls.__new__(cls)
        packet.code = code
        packet.ptype = ptype
        packet.data = packet._args_of = args[0] if len(args) == 1 else b"\x00".join(args)
        packet._args = args
        packet.connection = connection
        return packet

    @classmethod
    def _build(cls, ptype: int, *args: bytes) -> Packet:
        """A request packet from its arguments, checked (count, NUL placement) by the protocol core."""
        body = _body(ptype, args)
        packet = cls.__new__(cls)
        packet.code = constants.REQ
        packet.ptype = ptype
        packet.data = packet._frame_of = body
        packet._frame = pack(constants.REQ, ptype, body)
        packet._frame_type = ptype
        packet.connection = None
        return packet

    def __repr__(self) -> str:
        ptype = constants.types.get(self.ptype, "UNKNOWN")
        try:
            extra = self._formatExtraData()
        except Exception:
            extra = ""
        return f"<gear.Packet 0x{id(self):x} type: {ptype}{extra}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Packet):
            return False
        return self.code == other.code and self.ptype == other.ptype and self.data == other.data

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value, as in gear

    def _formatExtraData(self) -> str:
        ptype = self.ptype
        if ptype in _HANDLE_TYPES:
            return f" handle: {self.getArgument(0)!r}"
        if ptype == constants.JOB_ASSIGN_UNIQ:
            return (
                f" handle: {self.getArgument(0)!r} function: {self.getArgument(1)!r}"
                f" unique: {self.getArgument(2)!r}"
            )
        if ptype in _SUBMIT_TYPES:
            return f" function: {self.getArgument(0)!r} unique: {self.getArgument(1)!r}"
        if ptype in (constants.CAN_DO, constants.CANT_DO, constants.CAN_DO_TIMEOUT):
            return f" function: {self.getArgument(0)!r}"
        if ptype == constants.SET_CLIENT_ID:
            return f" id: {self.getArgument(0)!r}"
        if ptype in (constants.OPTION_REQ, constants.OPTION_RES):
            return f" option: {self.getArgument(0)!r}"
        if ptype == constants.ERROR:
            return f" code: {self.getArgument(0)!r} message: {self.getArgument(1, True)!r}"
        return ""

    def toBinary(self) -> bytes:
        """The packet on the wire: a 12-byte header and the body."""
        if self._frame_of is self.data and self._frame_type == self.ptype and self.code == constants.REQ:
            return self._frame
        return pack(self.code, self.ptype, self.data)

    def getArgument(self, index: int, last: bool = False) -> bytes:
        """The index-th NUL-separated argument; with last=True, everything from it on (NULs included)."""
        args = self._args
        if self._args_of is self.data and (index == len(args) - 1 if last else index < len(args) - 1):
            return args[index]
        parts = self.data.split(b"\x00")
        if not last:
            return parts[index]
        return b"\x00".join(parts[index:])

    def _arguments(self, count: int) -> tuple[bytes, ...]:
        """The ``count`` arguments as getArgument() reads them (the last with every NUL after it), in one call."""
        args = self._args
        if self._args_of is self.data and len(args) == count:
            return args
        return tuple(self.getArgument(index, index == count - 1) for index in range(count))

    def getJob(self) -> Any:
        """The :py:class:`Job` named by this packet's handle on its connection.

        :raises UnknownJobError: if the connection holds no job with that handle.
        """
        job = self._job
        if job is not None:
            return job
        handle = self.getArgument(0)
        job = self.connection.related_jobs.get(handle) if self.connection is not None else None
        if not job:
            raise UnknownJobError(handle)
        return job


class AdminRequest:
    """A request (and its response) on the administrative text protocol; use a subclass.

    :arg arguments: byte string arguments of the command.

    Attributes: **command** (bytes), **arguments**, **response** (bytes: the whole answer, a multi-line one
    including its closing ``.`` line; None until it arrives).
    """

    command: bytes = b""
    arguments: tuple = ()
    response: bytes | None = None
    _complete_position = 0

    def __init__(self, *arguments: Any) -> None:
        if type(self) is AdminRequest:
            raise NotImplementedError("AdminRequest must be subclassed")
        self.wait_event = threading.Event()
        self.arguments = tuple(to_bytes(arg) for arg in arguments)
        self.response = None
        #: Set when the caller stopped waiting: the answer still arrives in its turn and is dropped.
        self._abandoned = False

    def __repr__(self) -> str:
        return f"<gear.AdminRequest 0x{id(self):x} command: {self.command!r}>"

    def getCommand(self) -> bytes:
        """The command line sent to the server, newline included."""
        cmd = self.command
        if self.arguments:
            cmd += b" " + b" ".join(self.arguments)
        return cmd + b"\n"

    def isComplete(self, data: bytes) -> tuple[bool, bytes | None]:
        """Whether data holds this request's whole answer: (True, the bytes after it) or (False, None).

        A multi-line answer ends with a line holding only ``.``. Kept for gear compatibility: connections
        frame answers with geartrain's protocol core.
        """
        start = max(self._complete_position - 4, 0)
        x = -1
        end_newline = data.find(b"\n.\n", start)
        end_return = data.find(b"\r\n.\r\n", start)
        if end_newline != -1:
            x = end_newline + 3
        elif end_return != -1:
            x = end_return + 5
        elif data.startswith(b".\n"):
            x = 2
        elif data.startswith(b".\r\n"):
            x = 3
        self._complete_position = len(data)
        if x != -1:
            self.response = data[:x]
            return True, data[x:]
        return False, None

    def setComplete(self) -> None:
        self.wait_event.set()

    def waitForResponse(self, timeout: float | None = None) -> bool:
        """Wait for the answer; True once it arrived."""
        self.wait_event.wait(timeout)
        return self.wait_event.is_set()


class _SingleLineAdminRequest(AdminRequest):
    def isComplete(self, data: bytes) -> tuple[bool, bytes | None]:
        end = data.find(b"\n")
        if end == -1:
            return False, None
        self.response = data[: end + 1]
        return True, data[end + 1 :]


class StatusAdminRequest(AdminRequest):
    """A "status" request: one line per function (name, total, running, available workers)."""

    command = b"status"

    def __init__(self) -> None:
        super().__init__()


class ShowJobsAdminRequest(AdminRequest):
    """A "show jobs" request."""

    command = b"show jobs"

    def __init__(self) -> None:
        super().__init__()


class ShowUniqueJobsAdminRequest(AdminRequest):
    """A "show unique jobs" request."""

    command = b"show unique jobs"

    def __init__(self) -> None:
        super().__init__()


class CancelJobAdminRequest(_SingleLineAdminRequest):
    """A "cancel job HANDLE" request (of a queued job); the response starts with OK on success.

    :arg handle: the job handle (str or bytes).
    """

    command = b"cancel job"

    def __init__(self, handle: Any) -> None:
        super().__init__(to_bytes(handle))


class VersionAdminRequest(_SingleLineAdminRequest):
    """A "version" request."""

    command = b"version"

    def __init__(self) -> None:
        super().__init__()


class WorkersAdminRequest(AdminRequest):
    """A "workers" request: one line per connection with its client id and functions."""

    command = b"workers"

    def __init__(self) -> None:
        super().__init__()
