"""GearmanClient: submit jobs and wait for them in a single-threaded select loop, as python-gearman 2.0.2.

Differences from the original, on purpose:
- a job's server is chosen by its unique on a consistent-hash ring over the pool in a canonical order (the same
  server whatever order the host list gives), with failover to the next server on the ring, so coalescing and
  status queries work across a pool;
- replies are matched per connection by geartrain's session core (a reply only answers a request of its own
  kind), and an ERROR (e.g. QUEUE_ERROR for a full queue) fails the request it answers (state JOB_FAILED,
  ``request.error`` = (code, text)) instead of shifting handles; every request coalesced on one handle gets the
  job's updates;
- every connection asks for the "exceptions" option, so WORK_EXCEPTION reaches ``request.exception``; the
  request then ends as JOB_FAILED (gearmand ends a job on WORK_EXCEPTION and sends no WORK_FAIL after it);
- submit_job raises ServerUnavailable when no server can be reached; the batch calls leave such requests in
  state JOB_UNKNOWN (connection_attempts == 0) so they can be re-sent with submit_multiple_requests;
- connection_attempts counts the sends of one submit call: submit_multiple_requests starts a new round for
  requests in state JOB_UNKNOWN, so a failed batch can be retried as the seed document shows.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

from geartrain.protocol import Packet
from geartrain.protocol import constants as P
from geartrain.protocol.pool import Ring, server_name
from geartrain.protocol.session import ClientSession, Reply, Unanswered, Work

from .connection import GearmanConnection
from .connection_manager import GearmanConnectionManager
from .constants import (
    JOB_COMPLETE,
    JOB_CREATED,
    JOB_FAILED,
    JOB_PENDING,
    JOB_UNKNOWN,
    PRIORITY_HIGH,
    PRIORITY_LOW,
    PRIORITY_NONE,
)
from .encoding import from_wire, to_wire, to_wire_lossless
from .errors import ConnectionError, ExceededConnectionAttempts, ServerUnavailable
from .job import GearmanJob, GearmanJobRequest

log = logging.getLogger("gearman.client")

#: After a failed connect a server is tried after the others for this many seconds.
_DOWN_MEMORY = 1.0

#: Packets nobody waits for that need no warning (WORK_* for a job no request follows any more, ...).
_QUIET = frozenset((P.NOOP, P.ECHO_RES, P.STATUS_RES_UNIQUE, P.WORK_COMPLETE, P.WORK_FAIL, P.WORK_EXCEPTION,
                    P.WORK_DATA, P.WORK_WARNING, P.WORK_STATUS))
#: python-gearman's priorities as the protocol's (the submit types come from the protocol's one table).
_PRIORITY = {PRIORITY_NONE: P.PRIORITY_NORMAL, PRIORITY_HIGH: P.PRIORITY_HIGH, PRIORITY_LOW: P.PRIORITY_LOW}


def _normal_priority(priority: Any) -> Any:
    if priority is None:
        return PRIORITY_NONE
    if isinstance(priority, bytes):
        priority = priority.decode("ascii")
    if isinstance(priority, str):
        upper = priority.upper()
        if upper in (PRIORITY_HIGH, PRIORITY_LOW):
            return upper
        if upper in ("NONE", "NORMAL", ""):
            return PRIORITY_NONE
    raise ValueError(f"unknown priority {priority!r}: use PRIORITY_NONE, PRIORITY_LOW or PRIORITY_HIGH")


class _ConnectionState:
    """Client bookkeeping for one connection: its session (requests and handles), status waiters."""

    __slots__ = ("session", "status_waiters", "down_since", "events")

    def __init__(self) -> None:
        self.session = ClientSession()
        self.status_waiters: dict[bytes, list[GearmanJobRequest]] = {}
        self.down_since: float | None = None
        self.events: list[Any] = []


class GearmanClient(GearmanConnectionManager):
    """Submits jobs to a pool of servers; every call polls until done or its poll_timeout passes."""

    job_class = GearmanJob
    job_request_class = GearmanJobRequest

    def __init__(self, host_list: Iterable[Any] | None = None, random_unique_bytes: int = 16) -> None:
        self._states: dict[int, _ConnectionState] = {}
        self._ring: Ring[GearmanConnection] = Ring(())
        self._ring_size = 0  # len(self._ring), without a call per submit
        super().__init__(host_list)
        self.random_unique_bytes = random_unique_bytes
        self._unreachable: set[int] = set()
        #: Connections lost so far: a wait loop that sees it change looks at all its requests again.
        self._losses = 0

    def _state(self, connection: GearmanConnection) -> _ConnectionState:
        state = self._states.get(id(connection))
        if state is None:
            state = self._states[id(connection)] = _ConnectionState()
        return state

    # -- submitting ------------------------------------------------------------------------------------
    def submit_job(
        self,
        task: str | bytes,
        data: Any,
        unique: str | bytes | None = None,
        priority: Any = PRIORITY_NONE,
        background: bool = False,
        wait_until_complete: bool = True,
        max_retries: int = 0,
        poll_timeout: float | None = None,
    ) -> GearmanJobRequest:
        """Submit one job; by default block until it completes. ServerUnavailable if no server answers."""
        job_info = {"task": task, "data": data, "unique": unique, "priority": priority}
        (request,) = self.submit_multiple_jobs(
            [job_info],
            background=background,
            wait_until_complete=wait_until_complete,
            max_retries=max_retries,
            poll_timeout=poll_timeout,
        )
        if request.state == JOB_UNKNOWN and request.connection_attempts == 0:
            raise ServerUnavailable(f"Found no valid connections: {self.connection_list!r}")
        return request

    def submit_multiple_jobs(
        self,
        jobs_to_submit: Sequence[dict],
        background: bool = False,
        wait_until_complete: bool = True,
        max_retries: int = 0,
        poll_timeout: float | None = None,
    ) -> list[GearmanJobRequest]:
        """Submit dicts of task, data and optional unique and priority; requests come back in input order."""
        assert type(jobs_to_submit) in (list, tuple, set), "Expected multiple jobs, received 1?"
        requests = [
            self._create_request_from_dictionary(job_info, background=background, max_retries=max_retries)
            for job_info in jobs_to_submit
        ]
        return self.submit_multiple_requests(
            requests, wait_until_complete=wait_until_complete, poll_timeout=poll_timeout
        )

    def submit_multiple_requests(
        self,
        job_requests: Sequence[GearmanJobRequest],
        wait_until_complete: bool = True,
        poll_timeout: float | None = None,
    ) -> Sequence[GearmanJobRequest]:
        """Send the requests that are not on a server yet, wait until accepted, optionally until complete."""
        assert type(job_requests) in (list, tuple, set), "Expected multiple job requests, received 1?"
        deadline = None if poll_timeout is None else time.monotonic() + poll_timeout
        for request in job_requests:
            if request.state == JOB_UNKNOWN:
                request.connection_attempts = 0
        processed = self.wait_until_jobs_accepted(job_requests, poll_timeout=_remaining(deadline))
        remaining = _remaining(deadline)
        if wait_until_complete and remaining != 0.0:
            processed = self.wait_until_jobs_completed(processed, poll_timeout=remaining)
        return processed

    def _create_request_from_dictionary(
        self, job_info: dict, background: bool = False, max_retries: int = 0
    ) -> GearmanJobRequest:
        task = job_info["task"]
        to_wire(task, "task")
        unique = job_info.get("unique") or os.urandom(self.random_unique_bytes).hex()
        to_wire(unique, "unique")
        priority = _normal_priority(job_info.get("priority", PRIORITY_NONE))
        job = self.job_class(None, None, task, unique, job_info["data"])
        return self.job_request_class(
            job, initial_priority=priority, background=background, max_attempts=max_retries + 1
        )

    def wait_until_jobs_accepted(
        self, job_requests: Sequence[GearmanJobRequest], poll_timeout: float | None = None
    ) -> Sequence[GearmanJobRequest]:
        """Poll until every request left JOB_PENDING; requests lost before JOB_CREATED are re-sent."""
        assert type(job_requests) in (list, tuple, set), "Expected multiple job requests, received 1?"
        deadline = None if poll_timeout is None else time.monotonic() + poll_timeout
        self._unreachable = set()
        unsendable: set[int] = set()
        requests = list(job_requests)
        losses = -1
        index = 0  # requests before it have left JOB_PENDING (until a connection is lost: see _losses)
        while True:
            if losses != self._losses:  # first pass, or a connection broke: (re)send every request not sent
                losses, index = self._losses, 0
                self._send_unsent(requests, unsendable)
            while index < len(requests) and requests[index].state != JOB_PENDING:
                index += 1
            if index == len(requests):
                break
            remaining = _remaining(deadline)
            if remaining == 0.0 or not self._any_connected():
                break
            self.poll_connections_once(self.connection_list, remaining)
        for request in requests:
            request.timed_out = request.state == JOB_PENDING
        return job_requests

    def _send_unsent(self, requests: list[GearmanJobRequest], unsendable: set[int]) -> None:
        """Send every request in state JOB_UNKNOWN; the first goes out at once, so the server starts on it while
        the others are encoded (they go out together at the next poll)."""
        first = True
        for request in requests:
            if request.state == JOB_UNKNOWN and id(request) not in unsendable:
                try:
                    self.send_job_request(request)
                except ServerUnavailable as exc:
                    log.warning("%s: %s", request, exc)
                    unsendable.add(id(request))
                    continue
                if first:
                    first = False
                    self.flush_connection(request.job.connection)

    def wait_until_jobs_completed(
        self, job_requests: Sequence[GearmanJobRequest], poll_timeout: float | None = None
    ) -> Sequence[GearmanJobRequest]:
        """Poll until every request is complete, failed, or lost its connection (JOB_UNKNOWN)."""
        assert type(job_requests) in (list, tuple, set), "Expected multiple job requests, received 1?"
        deadline = None if poll_timeout is None else time.monotonic() + poll_timeout
        requests = list(job_requests)
        index = 0  # requests before it have stopped waiting (nothing here makes a request wait again)
        while True:
            while index < len(requests) and not _waiting(requests[index]):
                index += 1
            if index == len(requests):
                break
            remaining = _remaining(deadline)
            if remaining == 0.0 or not self._any_connected():
                break
            self.poll_connections_once(self.connection_list, remaining)
        for request in requests:
            request.timed_out = _waiting(request)
        return job_requests

    def _any_connected(self) -> bool:
        for connection in self.connection_list:
            if connection.connected:
                return True
        return False

    def send_job_request(self, current_request: GearmanJobRequest) -> GearmanJobRequest:
        """Send one request to its server (chosen by its unique); raises when its attempts are used up."""
        if current_request.connection_attempts >= current_request.max_connection_attempts:
            raise ExceededConnectionAttempts(
                f"Exceeded {current_request.max_connection_attempts} connection attempt(s) :: {current_request!r}"
            )
        job = current_request.gearman_job
        priority = current_request.priority
        if priority is not None:  # PRIORITY_NONE, the common case, needs no normalising
            priority = _normal_priority(priority)
        ptype = P.submit_type(current_request.background, _PRIORITY[priority])
        data = self.data_encoder.encode(job.data)
        task = to_wire(job.task, "task")
        unique = to_wire(job.unique, "unique")
        connection = self.establish_request_connection(current_request)  # a hook subclasses may override
        current_request.initialize_request()
        job.connection = connection
        job.handle = None
        current_request.connection_attempts += 1
        current_request.state = JOB_PENDING
        state = self._states.get(id(connection)) or self._state(connection)
        connection.send_raw(state.session.submit(ptype, (task, unique, data), current_request))
        return current_request

    def establish_request_connection(self, current_request: GearmanJobRequest) -> GearmanConnection:
        """The request's server: hash of its unique over the pool, then the next ones; failed ones last."""
        if not self.connection_list:
            raise ServerUnavailable("Found no valid connections: the host list is empty")
        ring = self._current_ring()
        key = to_wire(current_request.gearman_job.unique, "unique")
        owner = ring.pick(key)
        if owner is not None and owner.connected and id(owner) not in self._unreachable:
            return owner  # the common case: the unique's own server is up (a connected server is not down)
        ordered = ring.order(key)
        now = time.monotonic()

        def recently_down(connection: GearmanConnection) -> bool:
            since = self._state(connection).down_since
            return since is not None and now - since < _DOWN_MEMORY

        candidates = [c for c in ordered if not recently_down(c)] + [c for c in ordered if recently_down(c)]
        for connection in candidates:
            if id(connection) in self._unreachable:
                continue
            try:
                return self.establish_connection(connection)
            except ConnectionError as exc:
                log.info("server %s unavailable: %s", connection.address, exc)
                self._unreachable.add(id(connection))
                self._state(connection).down_since = time.monotonic()
        raise ServerUnavailable(f"Found no valid connections: {self.connection_list!r}")

    # -- status ----------------------------------------------------------------------------------------
    def get_job_status(
        self, current_request: GearmanJobRequest, poll_timeout: float | None = None
    ) -> GearmanJobRequest:
        """Ask the request's server for its status; the answer lands in request.status."""
        return self.get_job_statuses([current_request], poll_timeout=poll_timeout)[0]

    def get_job_statuses(
        self, job_requests: Sequence[GearmanJobRequest], poll_timeout: float | None = None
    ) -> Sequence[GearmanJobRequest]:
        """Ask for the status of several requests at once; unanswered ones get timed_out = True."""
        assert type(job_requests) in (list, tuple, set), "Expected multiple job requests, received 1?"
        deadline = None if poll_timeout is None else time.monotonic() + poll_timeout
        asked: list[GearmanJobRequest] = []
        for request in job_requests:
            request.status["last_time_received"] = request.status.get("time_received")
            connection = request.job.connection
            if connection is None or request.job.handle is None:
                continue
            try:
                self.establish_connection(connection)
            except ConnectionError as exc:
                log.info("cannot ask %s for a status: %s", connection.address, exc)
                continue
            handle = to_wire_lossless(request.job.handle)
            state = self._state(connection)
            waiters = state.status_waiters.setdefault(handle, [])
            if not waiters:
                connection.send_raw(state.session.get_status(handle, None))
            waiters.append(request)
            asked.append(request)

        def not_updated(request: GearmanJobRequest) -> bool:
            status = request.status
            return status.get("time_received") == status.get("last_time_received")

        while any(not_updated(r) and r.job.connection is not None and r.job.connection.connected for r in asked):
            remaining = _remaining(deadline)
            if remaining == 0.0:
                break
            self.poll_connections_once(self.connection_list, remaining)
        for request in job_requests:
            request.timed_out = not_updated(request)
        return job_requests

    def _current_ring(self) -> Ring[GearmanConnection]:
        """The ring over the host list (rebuilt when connections were added)."""
        if self._ring_size != len(self.connection_list):
            self._ring = Ring((c, server_name(c.gearman_host, c.gearman_port)) for c in self.connection_list)
            self._ring_size = len(self.connection_list)
        return self._ring

    # -- the server's side -----------------------------------------------------------------------------
    def on_connect(self, connection: GearmanConnection) -> None:
        state = self._state(connection)
        state.status_waiters.clear()
        state.down_since = None
        connection.send_raw(state.session.connect())  # OPTION_REQ exceptions, and its probe

    def on_connection_lost(self, connection: GearmanConnection, reason: Exception) -> None:
        self._losses += 1
        state = self._state(connection)
        loss = state.session.lost()
        for request in loss.unacknowledged:
            if request.state == JOB_PENDING:
                request.state = JOB_UNKNOWN
        for request in loss.acknowledged:
            if request.state == JOB_CREATED:
                request.state = JOB_UNKNOWN
        state.status_waiters.clear()
        state.down_since = time.monotonic()  # a re-send tries the other servers first for a while

    def handle_event(self, connection: GearmanConnection, event: Any) -> None:
        if type(event) is not Packet:
            log.warning("unexpected %r from %s", event, connection.address)
            return
        state = self._states.get(id(connection)) or self._state(connection)
        events = state.events
        state.session.receive(event, events)
        for matched in events:
            kind = type(matched)
            if kind is Work:
                ptype, args = matched.packet.ptype, matched.packet.args
                for request in matched.jobs:
                    self._work_update(request, ptype, args)
            elif kind is Reply:
                self._reply(connection, state, matched)
            elif kind is Unanswered:
                log.warning("%s did not answer %s", connection.address, P.TYPE_NAMES[matched.kind])
                if matched.kind in P.SUBMIT_TYPES:
                    matched.request.error = (b"UNANSWERED", b"the server passed this submit over")
                    matched.request.state = JOB_FAILED
            else:
                packet = matched.packet
                if packet.ptype == P.ERROR:
                    log.warning("%s sent ERROR %s: %s", connection.address, packet.args[0], packet.args[1])
                elif packet.ptype not in _QUIET:
                    log.warning("unexpected %s from %s", packet.name, connection.address)
        events.clear()

    def _reply(self, connection: GearmanConnection, state: _ConnectionState, reply: Reply) -> None:
        ptype, args = reply.packet.ptype, reply.packet.args
        if reply.kind == P.GET_STATUS:
            if ptype != P.STATUS_RES:
                log.warning("%s refused a status request: %s %s", connection.address, args[0], args[-1])
                return
            for request in state.status_waiters.pop(args[0], ()):
                request.status.update(
                    {
                        "handle": request.job.handle,
                        "known": args[1] == b"1",
                        "running": args[2] == b"1",
                        "numerator": float(args[3] or 0),
                        "denominator": float(args[4] or 0),
                        "time_received": time.time(),
                    }
                )
            return
        request = reply.request
        if ptype == P.ERROR:
            code, text = args
            log.info("%s refused %r: %s %s", connection.address, request, code, text)
            request.error = (code, text)
            request.state = JOB_FAILED
            return
        request.job.handle = from_wire(args[0])
        request.state = JOB_CREATED

    def _decode(self, data: bytes) -> Any:
        return self.data_encoder.decode(data)

    def _work_update(self, request: GearmanJobRequest, ptype: int, args: tuple[bytes, ...]) -> None:
        if ptype == P.WORK_COMPLETE:
            request.result = self._decode(args[1])
            request.state = JOB_COMPLETE
        elif ptype == P.WORK_FAIL:
            request.state = JOB_FAILED
        elif ptype == P.WORK_EXCEPTION:
            try:
                request.exception = self._decode(args[1])
            except Exception:  # a worker of another language sent plain text: keep its bytes
                request.exception = args[1]
            request.state = JOB_FAILED
        elif ptype == P.WORK_DATA:
            request.data_updates.append(self._decode(args[1]))
        elif ptype == P.WORK_WARNING:
            request.warning_updates.append(self._decode(args[1]))
        elif ptype == P.WORK_STATUS:
            request.status["numerator"] = float(args[1] or 0)
            request.status["denominator"] = float(args[2] or 0)
            request.status["time_received"] = time.time()


def _waiting(request: GearmanJobRequest) -> bool:
    """Whether a request still waits for the server: for its JOB_CREATED, or (foreground) for its outcome."""
    state = request.state
    return state == JOB_PENDING or (state == JOB_CREATED and not request.background)


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())
