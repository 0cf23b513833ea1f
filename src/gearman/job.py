"""GearmanJob (what a worker runs, what a request carries) and GearmanJobRequest (a client's view of it)."""

from __future__ import annotations

import collections
from typing import Any

from .constants import JOB_COMPLETE, JOB_CREATED, JOB_FAILED, JOB_UNKNOWN, PRIORITY_NONE


class GearmanJob:
    """One job: the connection it lives on, its handle, task, unique and data (decoded by the encoder)."""

    #: The worker's bookkeeping of a job it was assigned (GearmanWorker sets them): its handle and function as
    #: received, whether its WORK_COMPLETE or WORK_FAIL went out. A job built elsewhere has these defaults.
    _gearman_wire: tuple[bytes, bytes] | None = None
    _gearman_finished = False

    def __init__(self, connection: Any, handle: Any, task: Any, unique: Any, data: Any) -> None:
        self.connection = connection
        self.handle = handle
        self.task = task
        self.unique = unique
        self.data = data

    def to_dict(self) -> dict:
        return {"handle": self.handle, "task": self.task, "unique": self.unique, "data": self.data}

    def __repr__(self) -> str:
        return (
            f"<GearmanJob connection/handle=({self.connection!r}, {self.handle!r}), "
            f"task={self.task!r}, unique={self.unique!r}, data={self.data!r}>"
        )


class _Updates:
    """A request's deque of WORK_DATA or WORK_WARNING updates, made on first use: most requests get none, and
    every empty deque was one more object for the garbage collector to scan per job in flight (two of the five
    tracked objects of a request waiting among 5,000)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, request: Any, owner: type | None = None) -> Any:
        if request is None:
            return self
        updates = getattr(request, self.slot)
        if updates is None:
            updates = collections.deque()
            setattr(request, self.slot, updates)
        return updates

    def __set__(self, request: Any, value: collections.deque) -> None:
        setattr(request, self.slot, value)


class GearmanJobRequest:
    """A client's request for a job: its state, result and the updates the worker sent."""

    warning_updates = _Updates()
    data_updates = _Updates()

    def __init__(
        self,
        gearman_job: GearmanJob,
        initial_priority: Any = PRIORITY_NONE,
        background: bool = False,
        max_attempts: int = 1,
    ) -> None:
        self.gearman_job = gearman_job
        self.priority = initial_priority
        self.background = background
        self.connection_attempts = 0
        self.max_connection_attempts = max_attempts
        self.initialize_request()

    def initialize_request(self) -> None:
        """Forget everything the servers said: the request is about to be (re)sent."""
        self.result: Any = None
        self.exception: Any = None
        #: (code, text) of an ERROR the server answered to this request's submit (an addition).
        self.error: tuple[bytes, bytes] | None = None
        self._warning_updates: collections.deque | None = None  # see _Updates
        self._data_updates: collections.deque | None = None
        self.status: dict = {}
        self.state = JOB_UNKNOWN
        self.timed_out = False

    def reset(self) -> None:
        self.initialize_request()
        self.connection = None
        self.handle = None

    @property
    def job(self) -> GearmanJob:
        return self.gearman_job

    @property
    def unique(self) -> Any:
        return self.gearman_job.unique

    @property
    def handle(self) -> Any:
        return self.gearman_job.handle

    @handle.setter
    def handle(self, value: Any) -> None:
        self.gearman_job.handle = value

    @property
    def connection(self) -> Any:
        return self.gearman_job.connection

    @connection.setter
    def connection(self, value: Any) -> None:
        self.gearman_job.connection = value

    @property
    def complete(self) -> bool:
        """Background: accepted by the server. Foreground: the worker finished it (COMPLETE or FAILED)."""
        if self.background:
            return self.state == JOB_CREATED
        return self.state in (JOB_FAILED, JOB_COMPLETE)

    def __repr__(self) -> str:
        return (
            f"<GearmanJobRequest task={self.gearman_job.task!r}, unique={self.gearman_job.unique!r}, "
            f"priority={self.priority!r}, background={self.background!r}, state={self.state!r}, "
            f"timed_out={self.timed_out!r}>"
        )
