"""Jobs as gear knows them: the client's Job (and its text and binary kinds), the worker's WorkerJob, and
FunctionRecord. Names, arguments and uniques may be given as str (UTF-8) or bytes; the wire carries bytes."""

from __future__ import annotations

from typing import Any

from geartrain.protocol import to_bytes as _require_bytes

from . import constants
from .errors import InvalidDataError
from .flag import Flag
from .packet import Packet
from .text import to_bytes

__all__ = [
    "BaseBinaryJob",
    "BaseJob",
    "BinaryJob",
    "BinaryWorkerJob",
    "FunctionRecord",
    "Job",
    "TextJob",
    "TextJobArguments",
    "TextJobUnique",
    "TextList",
    "TextWorkerJob",
    "WorkerJob",
    "to_bytes",
]

_BYTES_TYPES = (bytes, bytearray, memoryview)
_ARGUMENT_TYPES = (str, *_BYTES_TYPES)
_ENDING = frozenset((constants.WORK_COMPLETE, constants.WORK_FAIL, constants.WORK_EXCEPTION))


def _number(value: Any) -> bytes:
    if isinstance(value, _BYTES_TYPES):
        return bytes(value)
    return str(value).encode("utf-8")


def _text(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    return value


class FunctionRecord:
    """A function a Worker registers: with a timeout (seconds) it is sent as CAN_DO_TIMEOUT.

    Only needed directly for :py:meth:`Worker.setFunctions`. ``name`` is kept as bytes.
    """

    def __init__(self, name: str | bytes, timeout: int | float | None = None) -> None:
        self.name = _require_bytes(name, "name")
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<gear.FunctionRecord 0x{id(self):x} name: {self.name!r} timeout: {self.timeout}>"


class BaseJob:
    """What client and worker jobs share: a name, opaque arguments, an optional unique and a handle."""

    def __init__(self, name: str | bytes, arguments: Any, unique: Any = None, handle: Any = None) -> None:
        # bytes, the common case, are taken as they are without a call.
        self._name = name if type(name) is bytes else _require_bytes(name, "name")
        self._validate_arguments(arguments)
        self._arguments = arguments if type(arguments) is bytes else _require_bytes(arguments, "arguments")
        self._unique = unique if unique is None or type(unique) is bytes else _require_bytes(unique, "unique")
        self.handle = handle if handle is None or type(handle) is bytes else to_bytes(handle)
        self.connection = None

    def _validate_arguments(self, arguments: Any) -> None:
        if not isinstance(arguments, _ARGUMENT_TYPES):
            raise TypeError("arguments must be str (UTF-8) or bytes")

    @property
    def arguments(self) -> Any:
        return self._arguments

    @arguments.setter
    def arguments(self, value: Any) -> None:
        self._arguments = _require_bytes(value, "arguments")

    @property
    def unique(self) -> Any:
        return self._unique

    @unique.setter
    def unique(self, value: Any) -> None:
        self._unique = None if value is None else _require_bytes(value, "unique")

    @property
    def name(self) -> Any:
        return self._name.decode("utf-8")

    @name.setter
    def name(self, value: str | bytes) -> None:
        self._name = _require_bytes(value, "name")

    @property
    def binary_name(self) -> bytes:
        return self._name

    @property
    def binary_arguments(self) -> bytes:
        return self._arguments

    @property
    def binary_unique(self) -> bytes | None:
        return self._unique

    def __repr__(self) -> str:
        return (
            f"<gear.Job 0x{id(self):x} handle: {self.handle!r} name: {self.name!r} unique: {self.unique!r}>"
        )


class WorkerJob(BaseJob):
    """A job the server assigned to a Worker; returned by :py:meth:`Worker.getJob`.

    Results go back on the connection the job came from. The ``send*`` methods accept str (UTF-8) or bytes.

    **name** (str), **arguments** (bytes), **unique** (bytes or None; an empty unique is None),
    **handle** (bytes), **connection** (:py:class:`Connection`).
    """

    #: The prefetching Worker that counts this job as running (see Worker.prefetch), until its last packet.
    _gear_worker: Any = None

    def __init__(self, handle: Any, name: str | bytes, arguments: Any, unique: Any = None) -> None:
        super().__init__(name, arguments, unique, handle)

    def _send(self, ptype: int, *args: bytes) -> None:
        conn = self.connection
        if hasattr(conn, "_sendWork"):
            conn._sendWork(ptype, args)
        else:  # a connection of another kind (a test's stand-in): its own sendPacket
            conn.sendPacket(Packet._build(ptype, *args))
        if self._gear_worker is not None and ptype in _ENDING:
            self._gear_worker._jobEnded(self)

    def sendWorkData(self, data: Any = b"") -> None:
        """Send a WORK_DATA packet (a partial result) to the client."""
        self._send(constants.WORK_DATA, self.handle, _require_bytes(data, "data"))

    def sendWorkWarning(self, data: Any = b"") -> None:
        """Send a WORK_WARNING packet to the client."""
        self._send(constants.WORK_WARNING, self.handle, _require_bytes(data, "data"))

    def sendWorkStatus(self, numerator: Any, denominator: Any) -> None:
        """Send a WORK_STATUS packet: numerator/denominator is the fraction complete."""
        self._send(constants.WORK_STATUS, self.handle, _number(numerator), _number(denominator))

    def sendWorkComplete(self, data: Any = b"") -> None:
        """Send a WORK_COMPLETE packet with the final result."""
        data = data if type(data) is bytes else _require_bytes(data, "data")
        self._send(constants.WORK_COMPLETE, self.handle, data)

    def sendWorkFail(self) -> None:
        """Send a WORK_FAIL packet."""
        self._send(constants.WORK_FAIL, self.handle)

    def sendWorkException(self, data: Any = b"") -> None:
        """Send a WORK_EXCEPTION packet (clients that set the "exceptions" option receive it)."""
        self._send(constants.WORK_EXCEPTION, self.handle, _require_bytes(data, "data"))


class Job(BaseJob):
    """A job to submit with :py:meth:`Client.submitJob`; updated in place as the server reports on it.

    :arg name: the function name (str or bytes; read back as str).
    :arg arguments: the opaque data for the worker (bytes, or str which is sent as UTF-8).
    :arg unique: an optional unique id (str or bytes).

    Attributes: **handle** (bytes or None), **connection**, **data** (list of result chunks), **exception**,
    **warning**, **complete**, **failure**, **numerator**, **denominator**, **fraction_complete**,
    **known**, **running** (the last two from a status query), and **disconnect**: True when the server
    connection was lost before the job ended (then **failure** is True as well).

    Use :py:meth:`waitForCompletion` to block until the job ends instead of polling ``complete``.
    """

    data_type: type = list

    def __init__(self, name: str | bytes, arguments: Any, unique: Any = None) -> None:
        super().__init__(name, arguments, unique)
        self._data = self.data_type()
        self._exception = None
        self.warning = False
        self.complete = False
        self.failure = False
        self.disconnect = False
        self.numerator = None
        self.denominator = None
        self.fraction_complete = None
        self.known = None
        self.running = None
        self._gear_done = Flag()

    def waitForCompletion(self, timeout: float | None = None) -> bool:
        """Block until the job ends: completed, failed, raised an exception, or lost with its connection.

        Returns True once it has ended (check ``failure``, ``exception`` and ``disconnect``), False if
        ``timeout`` seconds passed first. Background jobs end only if their connection is lost.
        """
        return self._gear_done.wait(timeout)

    def _reset_for_submit(self) -> None:
        self.handle = None
        self.connection = None
        self.disconnect = False
        self._gear_done.clear()

    @property
    def binary_data(self):
        for value in self._data:
            yield to_bytes(value)

    @property
    def data(self) -> list:
        return self._data

    @data.setter
    def data(self, value: list) -> None:
        if not isinstance(value, self.data_type):
            raise ValueError(f"data attribute must be {self.data_type}")
        self._data = value

    @property
    def exception(self) -> Any:
        return self._exception

    @exception.setter
    def exception(self, value: Any) -> None:
        self._exception = value


class TextJobArguments:
    """Arguments are UTF-8 text: read back as str."""

    def _validate_arguments(self, arguments: Any) -> None:
        pass

    @property
    def arguments(self) -> Any:
        return _text(self._arguments)

    @arguments.setter
    def arguments(self, value: Any) -> None:
        self._arguments = _require_bytes(value, "arguments")


class TextJobUnique:
    """The unique id is UTF-8 text: read back as str."""

    @property
    def unique(self) -> Any:
        return _text(self._unique)

    @unique.setter
    def unique(self, value: Any) -> None:
        self._unique = None if value is None else _require_bytes(value, "unique")


class TextList(list):
    """A list that decodes bytes it is given as UTF-8."""

    def append(self, x: Any) -> None:
        super().append(_text(x))

    def extend(self, iterable: Any) -> None:
        super().extend(_text(value) for value in iterable)

    def insert(self, i: Any, x: Any) -> None:
        super().insert(i, _text(x))


class TextJob(TextJobArguments, TextJobUnique, Job):
    """A Job whose arguments, unique, data and exception are UTF-8 text (str)."""

    data_type = TextList

    @property
    def exception(self) -> Any:
        return _text(self._exception)

    @exception.setter
    def exception(self, value: Any) -> None:
        self._exception = to_bytes(value)


class TextWorkerJob(TextJobArguments, TextJobUnique, WorkerJob):
    """A WorkerJob whose arguments and unique are read as str; its ``send*`` methods take str."""

    def sendWorkData(self, data: Any = "") -> None:
        super().sendWorkData(data)

    def sendWorkWarning(self, data: Any = "") -> None:
        super().sendWorkWarning(data)

    def sendWorkComplete(self, data: Any = "") -> None:
        super().sendWorkComplete(data)

    def sendWorkException(self, data: Any = "") -> None:
        super().sendWorkException(data)


class BaseBinaryJob:
    """The job name stays bytes (for names that are not UTF-8)."""

    @property
    def name(self) -> Any:
        return self._name

    @name.setter
    def name(self, value: str | bytes) -> None:
        self._name = _require_bytes(value, "name")


class BinaryWorkerJob(BaseBinaryJob, WorkerJob):
    """A WorkerJob whose name stays bytes."""


class BinaryJob(BaseBinaryJob, Job):
    """A Job whose name stays bytes."""


def submit_args(job: BaseJob) -> tuple[bytes, bytes, bytes]:
    """The (name, unique, arguments) of a SUBMIT_JOB* packet; only the arguments may hold NUL bytes."""
    name = job.binary_name
    unique = job.binary_unique or b""
    if b"\x00" in name or b"\x00" in unique:
        raise InvalidDataError("a job name or unique may not contain NUL bytes")
    return name, unique, job.binary_arguments
