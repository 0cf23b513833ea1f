"""Job: the Client's handle on one submitted job, updated as the server relays the worker's packets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final, NamedTuple

from ..compiled import mypyc_attr
from ..protocol import constants as C
from .errors import JobError, JobException, JobFailed

PENDING: Final = "pending"  # submitted, no JOB_CREATED yet
CREATED: Final = "created"  # acknowledged, running or queued
COMPLETE: Final = "complete"
FAILED: Final = "failed"
EXCEPTION: Final = "exception"
LOST: Final = "lost"
FINAL_STATES: Final = (COMPLETE, FAILED, EXCEPTION, LOST)


class JobStatus(NamedTuple):
    """A STATUS_RES answer to GET_STATUS."""

    handle: bytes
    known: bool
    running: bool
    numerator: int
    denominator: int


class UniqueStatus(NamedTuple):
    """A STATUS_RES_UNIQUE answer to GET_STATUS_UNIQUE."""

    unique: bytes
    known: bool
    running: bool
    numerator: int
    denominator: int
    waiting: int


def to_int(value: bytes) -> int:
    """An integer field of a status packet; a value that is no number counts as 0."""
    try:
        return int(value)
    except ValueError:
        return 0


@mypyc_attr(allow_interpreted_subclasses=True)
class Job:
    """One submitted job: its handle once acknowledged, the data, warnings and status seen so far, its outcome."""

    def __init__(
        self, function: bytes, arguments: bytes, unique: bytes, ptype: int, request: bytes, background: bool,
        priority: str,
    ) -> None:
        self.function = function
        #: The job's input bytes (``data`` holds the WORK_DATA chunks received, as in gear).
        self.arguments = arguments
        self.unique = unique
        self.background = background
        self.priority = priority
        self.handle: bytes | None = None
        #: "host:port" of the server that acknowledged the job.
        self.server: str | None = None
        self.state = PENDING
        # data and warnings are made on first use: most jobs have none, and every list made is one more object
        # for the garbage collector's young generation, whose collections a batch in flight pays for.
        self._data: list[bytes] | None = None
        self._warnings: list[bytes] | None = None
        #: (numerator, denominator) of the last WORK_STATUS, None before the first.
        self.status: tuple[int, int] | None = None
        self.exception: bytes | None = None
        self._ptype = ptype
        #: The submit packet, framed once (sent again as it is if its connection is lost before JOB_CREATED).
        self._request = request
        loop = asyncio.get_running_loop()
        #: Made only for submit(), which awaits the acknowledgement (run() awaits the outcome alone).
        self._created: asyncio.Future[None] | None = None
        self._outcome: asyncio.Future[bytes] = loop.create_future()
        #: Futures of the streams waiting for the job's next change; made by the first one (most jobs have none).
        self._waiters: list[asyncio.Future[None]] | None = None
        self._abandoned = False
        #: Whether the job's server is chosen by its unique (False: the user gave none, round-robin).
        self._hashed = True

    def __repr__(self) -> str:
        return f"<Job {self.function!r} handle={self.handle!r} state={self.state}>"

    @property
    def data(self) -> list[bytes]:
        """The WORK_DATA chunks received so far, in order."""
        if self._data is None:
            self._data = []
        return self._data

    @data.setter
    def data(self, chunks: list[bytes]) -> None:
        self._data = chunks

    @property
    def warnings(self) -> list[bytes]:
        """The WORK_WARNING data received so far, in order."""
        if self._warnings is None:
            self._warnings = []
        return self._warnings

    @warnings.setter
    def warnings(self, chunks: list[bytes]) -> None:
        self._warnings = chunks

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    async def result(self) -> bytes:
        """The WORK_COMPLETE data; raises JobFailed, JobException or JobLost when the job ended otherwise."""
        if self.background:
            raise JobError("a background job sends its result to nobody: there is nothing to wait for", self)
        return await asyncio.shield(self._outcome)

    def stream(self) -> AsyncIterator[bytes]:
        """Every WORK_DATA chunk, the ones already received first, until the job ends (then await result())."""
        return JobStream(self)

    # ------------------------------------------------------------------ updates from the Client

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def _acknowledge(self, handle: bytes, server: str) -> None:
        self.handle = handle
        self.server = server
        self.state = CREATED
        created = self._created
        if created is not None and not created.done():
            created.set_result(None)

    def _reject(self, exc: BaseException) -> None:
        """The submit failed (refused, passed over, or never sent): it fails the outcome too (Client.run awaits
        only that one). Both exceptions count as retrieved: only one of them is awaited."""
        self.state = FAILED
        for future in (self._created, self._outcome):
            if future is not None and not future.done():
                future.set_exception(exc)
                future.exception()
        self._notify()

    def _finish(self, state: str, value: bytes | None = None, exc: BaseException | None = None) -> None:
        if self.state in FINAL_STATES:
            return
        self.state = state
        outcome = self._outcome
        if not outcome.done():
            if exc is not None:
                outcome.set_exception(exc)
                outcome.exception()  # retrieved: an unread outcome is no "never retrieved" warning
            else:
                outcome.set_result(value or b"")
        if self._waiters:
            self._notify()

    def _packet(self, ptype: int, args: tuple[bytes, ...]) -> bool:
        """Apply one WORK_* packet; True when it ended the job."""
        if ptype == C.WORK_COMPLETE:  # the usual packet first
            self._finish(COMPLETE, args[1])
            return True
        if ptype == C.WORK_DATA:
            self.data.append(args[1])
            self._notify()
        elif ptype == C.WORK_WARNING:
            self.warnings.append(args[1])
            self._notify()
        elif ptype == C.WORK_STATUS:
            self.status = (to_int(args[1]), to_int(args[2]))
            self._notify()
        elif ptype == C.WORK_EXCEPTION:
            self.exception = args[1]
            self._finish(EXCEPTION, exc=JobException(args[1], self))
            return True
        elif ptype == C.WORK_FAIL:
            self._finish(FAILED, exc=JobFailed(f"job {self.handle!r} on {self.server} failed", self))
            return True
        return False


class JobStream:
    """The async iterator of Job.stream(): an async generator's behaviour, as a class (mypyc compiles no async
    generators). It ends when the job has ended and every chunk was given, or once an await in it raised."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.index = 0
        self.ended = False

    def __aiter__(self) -> JobStream:
        return self

    async def __anext__(self) -> bytes:
        job = self.job
        while not self.ended:
            if self.index < len(job.data):
                self.index += 1
                return job.data[self.index - 1]
            if job.done or job.background:
                break
            waiter = asyncio.get_running_loop().create_future()
            if job._waiters is None:
                job._waiters = []
            job._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                self.ended = True
                raise
        self.ended = True
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """End the iteration, as an async generator's aclose() does."""
        self.ended = True
