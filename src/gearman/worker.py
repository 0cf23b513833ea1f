"""GearmanWorker: runs the tasks it registered for every server in one select loop (python-gearman 2.0.2).

Differences from the original, on purpose:
- a lost server is reconnected with the protocol's one backoff policy (exponential, with jitter), and gets the
  client id and tasks again; the grab / NO_JOB / PRE_SLEEP / NOOP machine is geartrain's WorkerSession;
  work() never dies because a server went away;
- a task returning None completes the job with empty data (the default DataEncoder encodes None as b"");
- a task that raises sends WORK_EXCEPTION (a one-line description of the error, through the data encoder),
  then WORK_FAIL, and the worker keeps working; so does one whose result the encoder cannot send;
- shutdown() may be called from another thread: it wakes work(), which closes its connections and returns;
- register_task takes an optional timeout (seconds, sent as CAN_DO_TIMEOUT);
- an opt-in prefetch (``GearmanWorker(hosts, prefetch=True)``, or the ``prefetch`` attribute; off by default):
  while a job runs, the grab for the next one is already out, so the next job is waiting when the current one
  ends instead of one round trip to the server later. The worker holds at most that one job beyond the running
  one and grabs nothing while it is stopping. A prefetched job it can no longer start (its task was
  unregistered meanwhile) goes back to the server, which requeues it when the worker closes that connection
  (reopened at once); jobs held when work() returns go back the same way, as work() closes its connections.
"""

from __future__ import annotations

import logging
import selectors
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from geartrain.protocol import Packet
from geartrain.protocol import constants as P
from geartrain.protocol.pool import Backoff
from geartrain.protocol.session import (
    GRAB_WAIT,
    IDLE,
    SLEEP,
    Assigned,
    NoJob,
    StillGrabbing,
    Wake,
    WorkerSession,
)

from .connection import GearmanConnection
from .connection_manager import GearmanConnectionManager
from .encoding import from_wire, to_wire, to_wire_lossless
from .errors import ConnectionError, InvalidWorkerState
from .job import GearmanJob

log = logging.getLogger("gearman.worker")

POLL_TIMEOUT_IN_SECONDS = 60.0

_FINAL = frozenset((P.WORK_COMPLETE, P.WORK_FAIL))


class _WorkerConnectionState:
    """One server: its WorkerSession (abilities and the grab machine), which of its grabs were prefetches, its
    backoff."""

    __slots__ = ("session", "prefetches", "backoff", "next_attempt")

    def __init__(self, backoff: Backoff) -> None:
        self.session = WorkerSession()
        #: Per grab waiting for its answer, in order: whether it went out while a job ran or waited to run.
        self.prefetches: deque[bool] = deque()
        self.backoff = backoff
        self.next_attempt = 0.0


class GearmanWorker(GearmanConnectionManager):
    """Registers tasks with every server and runs their jobs, one at a time, in work()."""

    job_class = GearmanJob
    #: First reconnect delay after a server went away, doubled per failed attempt up to the maximum.
    reconnect_initial_delay = 0.1
    reconnect_max_delay = 5.0
    #: A connection that stayed up this long starts again from reconnect_initial_delay when it is lost.
    reconnect_stable_after = 10.0

    def __init__(self, host_list: Iterable[Any] | None = None, prefetch: bool = False) -> None:
        self._wstates: dict[int, _WorkerConnectionState] = {}
        super().__init__(host_list)
        #: Grab the next job while one runs (see the module docstring); may be changed between calls to work().
        self.prefetch = prefetch
        self.worker_abilities: dict[Any, Callable] = {}
        self.worker_client_id: Any = None
        self._tasks_by_wire: dict[bytes, Any] = {}
        self._timeouts: dict[bytes, float | None] = {}
        #: Jobs assigned and not yet started, in the order the servers assigned them.
        self._assigned: deque[tuple[GearmanConnection, GearmanJob]] = deque()
        self._current_job: GearmanJob | None = None
        self._task_returned = False  # the current job's task has returned: its result can wait for the loop
        self._rotation = 0
        self._shutdown = False
        self._working = False
        self._stop_after_job = False
        self._wake_lock = threading.Lock()
        self._wake_pair: tuple[socket.socket, socket.socket] | None = None

    def _wstate(self, connection: GearmanConnection) -> _WorkerConnectionState:
        state = self._wstates.get(id(connection))
        if state is None:
            backoff = Backoff(self.reconnect_initial_delay, self.reconnect_max_delay, self.reconnect_stable_after)
            state = self._wstates[id(connection)] = _WorkerConnectionState(backoff)
            state.session.abilities.update(self._timeouts)
            if self.worker_client_id is not None:
                state.session.client_id = to_wire(self.worker_client_id, "client id")
        return state

    # -- abilities -------------------------------------------------------------------------------------
    def register_task(self, task: str | bytes, callback_function: Callable, timeout: float | None = None) -> Any:
        """Run callback_function(worker, job) for jobs of task; its return value completes the job."""
        wire = to_wire(task, "task")
        self.worker_abilities[task] = callback_function
        self._tasks_by_wire[wire] = task
        self._timeouts[wire] = timeout
        for connection in self.connection_list:
            session = self._wstate(connection).session
            data = session.can_do(wire, timeout)
            if connection.connected:
                connection.send_raw(data)
                if session.state == SLEEP:  # a sleeping worker is not woken for a new ability: ask
                    session.state = IDLE
        self._schedule_grab()
        return task

    def unregister_task(self, task: str | bytes) -> Any:
        wire = to_wire(task, "task")
        known = self._tasks_by_wire.pop(wire, None)
        self._timeouts.pop(wire, None)
        if known is not None:
            self.worker_abilities.pop(known, None)
        self.worker_abilities.pop(task, None)
        for connection in self.connection_list:
            data = self._wstate(connection).session.cant_do(wire)
            if connection.connected:
                connection.send_raw(data)
        return task

    def set_client_id(self, client_id: str | bytes) -> Any:
        self.worker_client_id = client_id
        wire = to_wire(client_id, "client id")
        for connection in self.connection_list:
            data = self._wstate(connection).session.set_client_id(wire)
            if connection.connected:
                connection.send_raw(data)
        return client_id

    # -- the loop --------------------------------------------------------------------------------------
    def work(self, poll_timeout: float | None = POLL_TIMEOUT_IN_SECONDS) -> None:
        """Loop, running jobs from every server, until after_poll() returns False or shutdown() is called."""
        self._shutdown = False
        self._stop_after_job = False
        self._working = True
        with self._wake_lock:
            self._wake_pair = socket.socketpair()
            self._wake_pair[0].setblocking(False)
        try:
            self._schedule_grab()  # connections opened before work() get their first grab here
            while not self._shutdown:
                wait = poll_timeout
                if self._any_down():
                    self._reconnect_due()
                    retry_in = self._next_reconnect_in()
                    if retry_in is not None:
                        wait = retry_in if wait is None else min(wait, retry_in)
                any_activity = self.poll_connections_once(self.connection_list, wait, extra=self._wake_pair[0])
                self._run_assigned_jobs()
                if self._shutdown or self._stop_after_job:
                    break
                if not self.after_poll(any_activity):
                    break
        finally:
            self._working = False
            with self._wake_lock:
                for sock in self._wake_pair or ():
                    sock.close()
                self._wake_pair = None
            self._close_all()

    def _any_down(self) -> bool:
        for connection in self.connection_list:
            if not connection.connected:
                return True
        return False

    def shutdown(self) -> None:
        """Stop work() (from any thread) and close every connection."""
        self._shutdown = True
        with self._wake_lock:
            if self._wake_pair is not None:
                try:
                    self._wake_pair[1].send(b"x")
                except OSError:
                    pass
        if not self._working:
            self._close_all()

    def _close_all(self) -> None:
        for connection in self.connection_list:
            connection.close()
            state = self._wstate(connection)
            state.session.lost()
            state.prefetches.clear()
            state.backoff.reset()
            state.next_attempt = 0.0
        self._assigned.clear()  # closing their connections gave them back: the servers requeue them

    def _reconnect_due(self) -> None:
        now = time.monotonic()
        for connection in self.connection_list:
            state = self._wstate(connection)
            if connection.connected or state.next_attempt > now:
                continue
            try:
                self.establish_connection(connection)
            except ConnectionError as exc:
                delay = state.backoff.next_delay()
                state.next_attempt = time.monotonic() + delay
                log.info("server %s unavailable (%s); next attempt in %.2fs", connection.address, exc, delay)
        self._schedule_grab()

    def _next_reconnect_in(self) -> float | None:
        pending = [self._wstate(c).next_attempt for c in self.connection_list if not c.connected]
        if not pending:
            return None
        return max(0.0, min(pending) - time.monotonic())

    def on_connect(self, connection: GearmanConnection) -> None:
        state = self._wstate(connection)
        state.backoff.connected(time.monotonic())
        connection.send_raw(state.session.connect())  # SET_CLIENT_ID, every CAN_DO / CAN_DO_TIMEOUT
        log.info("connected to %s", connection.address)

    def on_connection_lost(self, connection: GearmanConnection, reason: Exception) -> None:
        state = self._forget(connection)
        state.backoff.lost(time.monotonic())
        state.next_attempt = time.monotonic() + state.backoff.next_delay()
        log.warning("lost %s: %s", connection.address, reason)

    def _forget(self, connection: GearmanConnection) -> _WorkerConnectionState:
        """The connection closed: the server requeues the jobs it assigned on it, so the ones held here go."""
        state = self._wstate(connection)
        state.session.lost()
        state.prefetches.clear()
        self._assigned = deque((c, job) for c, job in self._assigned if c is not connection)
        return state

    def _schedule_grab(self) -> None:
        """Grab while the worker has room for another job: one at a time, or with prefetch one more while a job
        runs (or waits to run); grabs waiting for their answer count as jobs. Servers take turns."""
        if not self._tasks_by_wire or self._shutdown or self._stop_after_job:
            return
        limit = 2 if self.prefetch else 1
        room = limit - len(self._assigned) - (self._current_job is not None)
        if room <= 0:
            return
        connections = self.connection_list
        wstates = self._wstates
        for connection in connections:
            room -= (wstates.get(id(connection)) or self._wstate(connection)).session.grabs
        count = len(connections)
        for step in range(count):
            if room <= 0:
                return
            index = (self._rotation + step) % count
            connection = connections[index]
            state = wstates.get(id(connection)) or self._wstate(connection)
            session = state.session
            if connection.connected and (session.state == IDLE or session.state == GRAB_WAIT):
                data = session.grab(limit)
                if data:
                    state.prefetches.append(room < limit)  # a job runs, waits, or was grabbed already
                    connection.send_raw(data)
                    self._rotation = index + 1
                    room -= 1

    def handle_event(self, connection: GearmanConnection, event: Any) -> None:
        if not isinstance(event, Packet):
            log.warning("unexpected %r from %s", event, connection.address)
            return
        state = self._wstates.get(id(connection)) or self._wstate(connection)
        session = state.session
        was_sleeping = session.state == SLEEP
        happened = session.receive(event)
        kind = type(happened)
        if kind is Assigned:
            job = self._make_job(connection, *happened.job)
            job._gearman_prefetched = bool(state.prefetches) and state.prefetches.popleft()  # type: ignore[attr-defined]
            self._assigned.append((connection, job))
        elif kind is Wake:
            if was_sleeping:
                self._schedule_grab()
        elif kind is NoJob:
            state.prefetches.clear()  # no grab waits any more
            connection.send_raw(session.pre_sleep())
            self._schedule_grab()
        elif kind is StillGrabbing:
            if state.prefetches:  # the other grab's answer decides
                state.prefetches.popleft()
        elif event.ptype == P.ERROR:
            log.info("%s answered ERROR %s: %s", connection.address, event.args[0], event.args[1])
        elif event.ptype in (P.ECHO_RES, P.OPTION_RES):
            return
        else:
            log.warning("unexpected %s from %s", event.name, connection.address)

    def _make_job(
        self, connection: GearmanConnection, handle: bytes, function: bytes, unique: bytes, data: bytes
    ) -> GearmanJob:
        task = self._tasks_by_wire.get(function)
        if task is None:
            task = from_wire(function)
        job_unique: Any = unique if isinstance(task, bytes) else from_wire(unique)
        job = self.job_class(connection, from_wire(handle), task, job_unique, data)
        job._gearman_raw = data  # type: ignore[attr-defined]
        job._gearman_wire = (handle, function)
        job._gearman_finished = False
        return job

    def _run_assigned_jobs(self) -> None:
        while self._assigned and not self._shutdown:
            connection, job = self._assigned.popleft()
            if not connection.connected:
                continue
            if job._gearman_prefetched and job._gearman_wire[1] not in self._tasks_by_wire:  # type: ignore[attr-defined,index]
                self._give_back(connection, job)
                continue
            self._current_job = job
            if self.prefetch:  # the next job's grab goes out with the last job's result, before this job runs
                self._schedule_grab()
                self._flush_all()
            self._run_job(connection, job)
            if self._stop_after_job or self._shutdown:
                self._drain(connection, None)  # work() closes the connections next: send the result first
                return
        self._schedule_grab()
        self._flush_all()

    def _flush_all(self) -> None:
        for connection in self.connection_list:
            if connection.connected and connection.writable:
                self.flush_connection(connection)

    def _give_back(self, connection: GearmanConnection, job: GearmanJob) -> None:
        """A prefetched job this worker cannot start goes back to its server, which requeues the jobs of a
        connection that closes (WORK_FAIL would fail it for its clients): send what is queued, close, reopen."""
        log.info("giving %r back to %s: its task is no longer registered", job, connection.address)
        self._drain(connection, None)
        connection.close()
        self._forget(connection).next_attempt = 0.0  # not a failure: reconnect at once

    def _run_job(self, connection: GearmanConnection, job: GearmanJob) -> None:
        self._current_job = job
        self._task_returned = False
        try:
            try:
                job.data = self.data_encoder.decode(job._gearman_raw)  # type: ignore[attr-defined]
                if job._gearman_wire[1] not in self._tasks_by_wire:  # type: ignore[index]
                    raise InvalidWorkerState(f"no task {job.task!r} registered (any more)")
                self.on_job_execute(job)
            except Exception:
                if not job._gearman_finished:
                    try:
                        self.on_job_exception(job, sys.exc_info())
                    except Exception:
                        log.exception("on_job_exception failed for %r", job)
            if not job._gearman_finished:
                log.warning("job %r ended without a result: sending WORK_FAIL", job)
                self.send_job_failure(job)
        finally:
            self._current_job = None
        if self.after_job() is False:
            self._stop_after_job = True

    # -- hooks, as in python-gearman -------------------------------------------------------------------
    def after_poll(self, any_activity: bool) -> bool:
        """Called after every poll; return False to leave work()."""
        return True

    def after_job(self) -> bool:
        """Called after every job; return False to leave work()."""
        return True

    def on_job_execute(self, current_job: GearmanJob) -> bool:
        try:
            function_callback = self.worker_abilities[current_job.task]
            job_result = function_callback(self, current_job)
        except Exception:
            self._task_returned = True
            return self.on_job_exception(current_job, sys.exc_info())
        self._task_returned = True
        return self.on_job_complete(current_job, job_result)

    def on_job_exception(self, current_job: GearmanJob, exc_info: Any) -> bool:
        """Report the error to the client (WORK_EXCEPTION, then WORK_FAIL) and keep working."""
        log.error("task %r raised:\n%s", current_job.task, "".join(traceback.format_exception(*exc_info)).rstrip())
        description = "".join(traceback.format_exception_only(exc_info[0], exc_info[1])).strip()
        try:
            self.send_job_exception(current_job, description)
        except Exception:
            self._send_for_job(current_job, P.WORK_EXCEPTION, description.encode("utf-8", "replace"))
        self.send_job_failure(current_job)
        return False

    def on_job_complete(self, current_job: GearmanJob, job_result: Any) -> bool:
        self.send_job_complete(current_job, job_result)
        return True

    # -- sending updates -------------------------------------------------------------------------------
    def send_job_status(
        self, current_job: GearmanJob, numerator: Any, denominator: Any, poll_timeout: float | None = None
    ) -> None:
        self._send_for_job(
            current_job,
            P.WORK_STATUS,
            str(int(numerator)).encode(),
            str(int(denominator)).encode(),
            poll_timeout=poll_timeout,
        )

    def send_job_complete(self, current_job: GearmanJob, data: Any, poll_timeout: float | None = None) -> None:
        if current_job._gearman_finished:
            log.debug("job %r already finished; result not sent", current_job)
            return
        encoded = self.data_encoder.encode(data)
        current_job._gearman_finished = True
        self._send_for_job(current_job, P.WORK_COMPLETE, encoded, poll_timeout=poll_timeout)

    def send_job_failure(self, current_job: GearmanJob, poll_timeout: float | None = None) -> None:
        if current_job._gearman_finished:
            return
        current_job._gearman_finished = True
        self._send_for_job(current_job, P.WORK_FAIL, poll_timeout=poll_timeout)

    def send_job_exception(self, current_job: GearmanJob, data: Any, poll_timeout: float | None = None) -> None:
        encoded = self.data_encoder.encode(data)
        self._send_for_job(current_job, P.WORK_EXCEPTION, encoded, poll_timeout=poll_timeout)

    def send_job_data(self, current_job: GearmanJob, data: Any, poll_timeout: float | None = None) -> None:
        self._send_for_job(current_job, P.WORK_DATA, self.data_encoder.encode(data), poll_timeout=poll_timeout)

    def send_job_warning(self, current_job: GearmanJob, data: Any, poll_timeout: float | None = None) -> None:
        self._send_for_job(current_job, P.WORK_WARNING, self.data_encoder.encode(data), poll_timeout=poll_timeout)

    def _send_for_job(
        self, current_job: GearmanJob, ptype: int, *args: bytes, poll_timeout: float | None = None
    ) -> None:
        """Send one WORK_* packet for the job now (its task may run long); lost connections are logged."""
        connection = current_job.connection
        if connection is None or not connection.connected:
            log.warning("connection of job %r is gone: %s not sent", current_job, P.TYPE_NAMES[ptype])
            return
        wire = current_job._gearman_wire
        handle = wire[0] if wire is not None else to_wire_lossless(current_job.handle)
        state = self._wstates.get(id(connection)) or self._wstate(connection)
        connection.send_raw(state.session.work(ptype, handle, *args))
        if self._task_returned and current_job is self._current_job and ptype in _FINAL:
            return  # the loop sends it at once, in one write with the next GRAB_JOB
        self._drain(connection, poll_timeout)

    def _drain(self, connection: GearmanConnection, poll_timeout: float | None) -> None:
        """Write the connection's queued output, waiting up to poll_timeout (None: until it is all out)."""
        deadline = None if poll_timeout is None else time.monotonic() + poll_timeout
        while connection.connected and connection.writable:
            self.flush_connection(connection)
            if not connection.connected or not connection.writable:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break  # the rest goes out from the poll loop
            with selectors.DefaultSelector() as selector:
                selector.register(connection.gearman_socket, selectors.EVENT_WRITE)
                selector.select(remaining)
