"""The gear Client: submits jobs round-robin over its servers and updates them as the servers report."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from geartrain.protocol import constants as wire
from geartrain.protocol import pack
from geartrain.protocol.pool import Ring, server_name

from .base import BaseClient, OptionReqTask, SubmitJobTask, _fraction, _StatusWaiter
from .connection import Connection, _name
from .constants import PRECEDENCE_HIGH, PRECEDENCE_LOW, PRECEDENCE_NORMAL
from .errors import ConfigurationError, ConnectionError, GearmanError, NoConnectedServersError, TimeoutError
from .job import Job, submit_args, to_bytes
from .packet import Packet

__all__ = ["Client", "PRECEDENCE_HIGH", "PRECEDENCE_LOW", "PRECEDENCE_NORMAL"]


#: gear's precedences as the protocol's priorities (the submit types come from the protocol's one table).
_PRIORITY = {
    PRECEDENCE_NORMAL: wire.PRIORITY_NORMAL,
    PRECEDENCE_LOW: wire.PRIORITY_LOW,
    PRECEDENCE_HIGH: wire.PRIORITY_HIGH,
}


def _frame(ptype: int, job: Job) -> bytes:
    """The wire form of a submit of ``job`` (submit_args checks where NULs may be)."""
    return pack(wire.REQ, ptype, b"\x00".join(submit_args(job)))


def _submitType(background: bool, precedence: int) -> int:
    try:
        return wire.SUBMIT_BY_KIND[(bool(background), _PRIORITY[precedence])]
    except (KeyError, TypeError):
        raise ConfigurationError("Invalid precedence value") from None


class Client(BaseClient):
    """A Gearman client.

    Subclass it to react to events by overriding the handlers (handleWorkComplete, handleWorkFail,
    handleWorkException, handleWorkData, handleWorkWarning, handleWorkStatus, handleStatusRes,
    handleDisconnect, ...); call the superclass handler so the job is kept up to date. Each returns the job.
    Handlers run in the client's background thread, which reads every connection: they must not wait for
    the server themselves (no submitJob() or getStatus() from inside a handler).

    :arg str client_id: appended to the logger name (e.g. gear.Client.client_id). Defaults to 'unknown'.
    """

    #: New in this implementation (set it on the instance or a subclass). False, gear's behaviour: jobs go
    #: round-robin over the connected servers. True: a job with a unique goes to the server that unique hashes to
    #: on a ring over the pool in a canonical order (the next one on the ring while it is down), so clients that
    #: list the same servers in any order send a unique to the same server, which coalesces it; jobs without a
    #: unique still go round-robin.
    route_by_unique = False

    def __init__(self, client_id: Any = "unknown") -> None:
        super().__init__(client_id)
        self.log = logging.getLogger(f"gear.Client.{_name(self.client_id)}")
        self.options: set[bytes] = set()
        self._ring: Ring[Connection] = Ring(())

    def __repr__(self) -> str:
        return f"<gear.Client 0x{id(self):x}>"

    def _onConnect(self, conn: Connection) -> None:
        with self.broadcast_lock:
            super()._onConnect(conn)
            for name in self.options:
                self._setOptionConnection(name, conn)

    def _setOptionConnection(self, name: bytes, conn: Connection) -> OptionReqTask | None:
        task = OptionReqTask()
        try:
            conn._sendOption(name, task)
        except Exception:
            self.log.exception("Exception while sending an option request %s to %s", name, conn)
            self._lostConnection(conn)
            return None
        return task

    def setOption(self, name: Any, timeout: float | None = 30) -> bool:
        """Set an option (e.g. "exceptions") on every connection, now and after each reconnect.

        :returns: True if every connected server accepted it.
        """
        name = to_bytes(name)
        tasks: dict[OptionReqTask, Connection] = {}
        with self.broadcast_lock:
            self.options.add(name)
            for connection in list(self.active_connections):
                task = self._setOptionConnection(name, connection)
                if task is not None:
                    tasks[task] = connection
        success = True
        for task, conn in tasks.items():
            if not task.wait(timeout):
                self.log.error("Connection %s timed out waiting for a response to an option request: %s",
                               conn, name)
                self._lostConnection(conn)
                continue
            if name not in conn.options:
                success = False
        return success

    def _currentRing(self) -> Ring[Connection]:
        """The ring over every server added so far (servers are only ever added)."""
        ring = self._ring
        with self.connections_condition:
            pool = self.active_connections + self.inactive_connections
        if len(ring) != len(pool):
            ring = self._ring = Ring((conn, server_name(conn.host, conn.port)) for conn in pool)
        return ring

    def _pickConnection(self, job: Job, attempted: set[Connection]) -> Connection | None:
        """The server for a submit: by the unique's place on the ring when route_by_unique (and the job has a
        unique), else the next one round-robin; one not tried yet. NoConnectedServersError if none is up."""
        unique = job.binary_unique if self.route_by_unique else None
        if unique:
            conn = self._currentRing().pick(unique, lambda c: c.connected and c not in attempted)
            if conn is not None or attempted:
                return conn
            raise NoConnectedServersError("No connected Gearman servers")
        conn = self.getConnection()
        if conn in attempted:
            untried = [c for c in list(self.active_connections) if c not in attempted]
            return untried[0] if untried else None
        return conn

    def submitJob(
        self,
        job: Job,
        background: bool = False,
        precedence: int = PRECEDENCE_NORMAL,
        timeout: float | None = 30,
    ) -> None:
        """Submit a job to the next server in the round-robin pool; wait until the server created it.

        On return ``job.handle`` and ``job.connection`` are set; a foreground job is then updated as results
        arrive (see :py:meth:`Job.waitForCompletion`).

        :arg bool background: submit a background job.
        :arg int precedence: PRECEDENCE_NORMAL, PRECEDENCE_LOW or PRECEDENCE_HIGH.
        :arg timeout: seconds to wait for each server's JOB_CREATED before trying the next one.
        :raises ConfigurationError: on an invalid precedence.
        :raises NoConnectedServersError: if no server is connected.
        :raises GearmanError: if no connected server accepted the job.
        """
        ptype = _submitType(background, precedence)
        frame = _frame(ptype, job)
        if hasattr(job, "_reset_for_submit"):
            job._reset_for_submit()
        attempted: set[Connection] = set()
        while True:
            conn = self._pickConnection(job, attempted)
            if conn is None:
                break
            attempted.add(conn)
            task = SubmitJobTask(job)
            try:
                conn._sendRequest(frame, ptype, task)
            except Exception:
                self.log.exception("Exception while sending a submit job request to %s", conn)
                self._lostConnection(conn)
                continue
            if not task.wait(timeout):
                self.log.error("Connection %s timed out waiting for a response to a submit job request: %s",
                               conn, job)
                # Answers are matched in order: a late JOB_CREATED would be taken for the next submit's.
                self._lostConnection(conn)
                continue
            if not job.handle:
                self.log.error("Connection %s sent an error in response to a submit job request: %s",
                               conn, job)
                continue
            job.connection = conn
            return
        raise GearmanError("Unable to submit job to any connected servers")

    def submitJobs(
        self,
        jobs: list[Job],
        background: bool = False,
        precedence: int = PRECEDENCE_NORMAL,
        timeout: float | None = 30,
    ) -> None:
        """Submit several jobs at once: pipelined, one write per server, then wait for every JOB_CREATED.

        New in this implementation (gear has none). The jobs are spread round-robin over the servers as
        :py:meth:`submitJob` would; a job that a server did not accept (an ERROR answer, a lost connection, no
        answer within ``timeout``) is then submitted again with :py:meth:`submitJob`, which tries the others.
        On return every job has its ``handle`` and ``connection``.

        :raises ConfigurationError: on an invalid precedence.
        :raises NoConnectedServersError: if no server is connected.
        :raises GearmanError: if no connected server accepted one of the jobs.
        """
        ptype = _submitType(background, precedence)
        jobs = list(jobs)
        frames = [_frame(ptype, job) for job in jobs]  # all valid, or none sent
        batches: dict[Connection, list[tuple[Job, SubmitJobTask, bytes]]] = {}
        for job, frame in zip(jobs, frames, strict=True):
            if hasattr(job, "_reset_for_submit"):
                job._reset_for_submit()
            conn = self._pickConnection(job, set())
            if conn is None:
                raise NoConnectedServersError("No connected Gearman servers")
            batches.setdefault(conn, []).append((job, SubmitJobTask(job), frame))
        sent: list[tuple[Connection, Job, SubmitJobTask]] = []
        retry: list[Job] = []
        for conn, batch in batches.items():
            try:
                conn._sendRequests([frame for _, _, frame in batch], ptype, [task for _, task, _ in batch])
            except Exception:
                self.log.info("Sending %s jobs to %s failed", len(batch), conn)
                self._lostConnection(conn)
                retry += [job for job, _, _ in batch]
                continue
            sent += [(conn, job, task) for job, task, _ in batch]
        deadline = None if timeout is None else time.monotonic() + timeout
        for conn, job, task in sent:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not task.wait(remaining):
                self.log.error("Connection %s timed out waiting for a response to a submit job request: %s",
                               conn, job)
                self._lostConnection(conn)  # a late JOB_CREATED would be taken for a later submit's
            if job.handle:
                job.connection = conn
            else:
                retry.append(job)
        for job in retry:
            self.submitJob(job, background, precedence, timeout)

    def getStatus(self, job: Job, timeout: float | None = 30) -> Job:
        """Ask the job's server for its status (GET_STATUS) and wait for the answer (STATUS_RES).

        New in this implementation (gear has none). Updates and returns the job: ``known`` and ``running``
        (bools), ``numerator``, ``denominator`` and ``fraction_complete``. handleStatusRes is called as well.

        :raises ConfigurationError: if the job was not submitted.
        :raises TimeoutError: if no answer came within timeout seconds.
        :raises ConnectionError: if the connection was lost first.
        """
        conn = job.connection
        if conn is None or not job.handle:
            raise ConfigurationError("the job has not been submitted")
        waiter = _StatusWaiter(job)
        try:
            with conn.send_lock:
                conn._status_waiters.setdefault(job.handle, deque()).append(waiter)
                conn.sendRaw(conn._protocol.get_status(job.handle, waiter))
        except Exception:
            self._lostConnection(conn)
            raise
        if not waiter.event.wait(timeout):
            # Keep the waiter queued: the late STATUS_RES must not be taken as the answer to a later query.
            raise TimeoutError(f"no status answer within {timeout}s")
        if not waiter.answered:
            raise ConnectionError("connection lost before the status answer")
        return job

    def _oldestTask(self, packet: Packet, kind: type, what: str) -> Any:
        """The task the packet answers (as the session matched it; else the oldest pending one), which must be
        of `kind`; else drop the link."""
        conn = packet.connection
        task = packet._task
        if task is not None:
            conn._taskDone(task)
        else:
            task = conn.pending_tasks.pop(0) if conn.pending_tasks else None
        if not isinstance(task, kind):
            msg = f"Unexpected response received to {what}: {packet!r}"
            self.log.error(msg)
            self._lostConnection(conn)
            raise GearmanError(msg)
        return task

    def handleJobCreated(self, packet: Packet) -> Job:
        """Handle JOB_CREATED: the oldest pending submit on the connection gets its handle."""
        conn = packet.connection
        task = self._oldestTask(packet, SubmitJobTask, "submit job request")
        job = task.job
        job.handle = packet.data
        job.connection = conn
        conn.related_jobs[job.handle] = job
        task.setComplete()
        if self.log.isEnabledFor(logging.DEBUG):  # hot path: one call, not two, when off
            self.log.debug("Job created; %s", job)
        return job

    def handleWorkComplete(self, packet: Packet) -> Job:
        """Handle WORK_COMPLETE: append the data, mark the job complete and forget it."""
        job = packet.getJob()
        data = packet.getArgument(1, True)
        if data:
            job.data.append(data)
        job.complete = True
        job.failure = False
        packet.connection.related_jobs.pop(job.handle, None)
        if self.log.isEnabledFor(logging.DEBUG):  # hot path: one call, not two, when off
            self.log.debug("Job complete; %s data: %s", job, job.data)
        return job

    def handleWorkFail(self, packet: Packet) -> Job:
        """Handle WORK_FAIL: mark the job complete and failed and forget it."""
        job = packet.getJob()
        job.complete = True
        job.failure = True
        packet.connection.related_jobs.pop(job.handle, None)
        self.log.debug("Job failed; %s", job)
        return job

    def handleWorkException(self, packet: Packet) -> Job:
        """Handle WORK_EXCEPTION: store the exception data, mark the job complete and failed."""
        job = packet.getJob()
        job.exception = packet.getArgument(1, True)
        job.complete = True
        job.failure = True
        packet.connection.related_jobs.pop(job.handle, None)
        self.log.debug("Job exception; %s exception: %s", job, job.exception)
        return job

    def handleWorkData(self, packet: Packet) -> Job:
        """Handle WORK_DATA: append the data to the job."""
        job = packet.getJob()
        data = packet.getArgument(1, True)
        if data:
            job.data.append(data)
        self.log.debug("Job data; job: %s data: %s", job, job.data)
        return job

    def handleWorkWarning(self, packet: Packet) -> Job:
        """Handle WORK_WARNING: append the data and set ``warning``."""
        job = packet.getJob()
        data = packet.getArgument(1, True)
        if data:
            job.data.append(data)
        job.warning = True
        self.log.debug("Job warning; %s data: %s", job, job.data)
        return job

    def handleWorkStatus(self, packet: Packet) -> Job:
        """Handle WORK_STATUS: set numerator, denominator and fraction_complete."""
        job = packet.getJob()
        job.numerator = packet.getArgument(1)
        job.denominator = packet.getArgument(2, True)
        job.fraction_complete = _fraction(job.numerator, job.denominator)
        self.log.debug("Job status; %s complete: %s/%s", job, job.numerator, job.denominator)
        return job

    def handleStatusRes(self, packet: Packet) -> Job:
        """Handle STATUS_RES: set known, running (bools), numerator, denominator, fraction_complete."""
        job = packet.getJob()
        job.known = packet.getArgument(1) == b"1"
        job.running = packet.getArgument(2) == b"1"
        job.numerator = packet.getArgument(3)
        job.denominator = packet.getArgument(4, True)
        job.fraction_complete = _fraction(job.numerator, job.denominator)
        return job

    def handleOptionRes(self, packet: Packet) -> None:
        """Handle OPTION_RES: record the option on the connection."""
        conn = packet.connection
        task = self._oldestTask(packet, OptionReqTask, "option request")
        conn.handleOptionRes(packet.getArgument(0))
        task.setComplete()

    def handleDisconnect(self, job: Job) -> Job:
        """Called for each job of a server connection that was lost; returns the job.

        After it returns, unless the job was resubmitted meanwhile, ``job.disconnect`` and ``job.failure``
        are set and :py:meth:`Job.waitForCompletion` returns.
        """
        return job
