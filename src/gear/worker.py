"""The gear Worker: registers functions on every server and hands assigned jobs to threads in getJob()."""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from typing import Any

from geartrain.protocol.session import timeout_ms

from . import constants
from .base import BaseClient
from .connection import Connection, _name
from .errors import ConfigurationError, InterruptedError, InvalidDataError
from .job import FunctionRecord, TextWorkerJob, WorkerJob, to_bytes
from .packet import Packet

__all__ = ["TextWorker", "Worker"]


class Worker(BaseClient):
    """A Gearman worker.

    Register functions with :py:meth:`registerFunction` (or :py:meth:`setFunctions`), then call
    :py:meth:`getJob` to wait for work; it may be called from several threads at once. The client id and the
    functions are sent again after every reconnection, and the worker asks a server for work (GRAB_JOB_UNIQ)
    only while some thread waits in getJob(); after NO_JOB it sleeps (PRE_SLEEP) until the server's NOOP.

    :arg str client_id: the id the servers show for this worker ("workers" admin command); also appended to
        the logger name. Required.
    :arg str worker_id: deprecated alias of client_id.
    :arg bool prefetch: new in this implementation, off by default (gear's behaviour). On: while a job that
        getJob() returned runs, the worker already asks for the next one, so that it is waiting when that thread
        calls getJob() again. See :py:attr:`prefetch` for the rule that keeps it from taking a job it cannot start.
    """

    job_class: type = WorkerJob

    #: New in this implementation: ask for the next job while one runs (see the constructor's ``prefetch``).
    #:
    #: The rule: each job getJob() returns lends its thread one *credit*, one more grab than there are threads
    #: waiting, on the promise that the thread calls getJob() again when the job is done. A job that arrives on
    #: a credit is *prefetched*: it waits in the worker for that call. The worker never takes a job it cannot
    #: start: no credit is lent after shutdown(), stopWaitingForJobs() takes back every credit lent so far, and
    #: a prefetched job that can no longer start (its function was unregistered, or the worker stopped waiting
    #: for jobs or shut down) is handed back to the server, which gives it to another worker. Gearman has one way
    #: to hand a job back, the one servers use for a lost worker: the connection it came on is closed (once the
    #: jobs still running from it have ended, so that none of those is given out twice) and opened again; the
    #: other jobs queued from it go back with it. A thread that will not call getJob() again must say so with
    #: stopWaitingForJobs() or shutdown(); until then the job prefetched for it waits.
    prefetch = False

    def __init__(self, client_id: Any = None, worker_id: Any = None, *, prefetch: bool = False) -> None:
        client_id = client_id or worker_id
        if not client_id:
            raise ConfigurationError("A client_id must be provided")
        self.functions: dict[bytes, FunctionRecord] = {}
        self.job_lock = threading.Lock()
        #: Threads waiting in getJob(), plus prefetch credits, minus jobs queued for them (guarded by job_lock).
        self.waiting_for_jobs = 0
        #: Prefetch credits lent (see :py:attr:`prefetch`); part of waiting_for_jobs. A thread holds its credit
        #: in _holder.credit, as the _credit_round it was lent in (stopWaitingForJobs() starts a new round).
        self._credits = 0
        self._holder = threading.local()
        self._credit_round = 0
        if prefetch:
            self.prefetch = True
        # SimpleQueue: put/get are C calls, where queue.Queue takes a Condition round per job.
        self.job_queue: queue.SimpleQueue = queue.SimpleQueue()
        super().__init__(client_id)
        self.log = logging.getLogger(f"gear.Worker.{_name(self.client_id)}")
        self.worker_id = client_id

    def __repr__(self) -> str:
        return f"<gear.Worker 0x{id(self):x}>"

    # -- functions ------------------------------------------------------------------------------------------

    def registerFunction(self, name: Any, timeout: Any = None) -> None:
        """Register a function on every server (now and after each reconnection).

        :arg name: the function name (str or bytes).
        :arg timeout: optional seconds after which the server may hand the job to another worker;
            sent as CAN_DO_TIMEOUT (in milliseconds, as servers read it).
        """
        name = to_bytes(name)
        with self.broadcast_lock:
            self.functions[name] = FunctionRecord(name, timeout)
            if timeout:
                self._sendCanDoTimeout(name, timeout)
            else:
                self._sendCanDo(name)
        with self.job_lock:
            for connection in list(self.active_connections):
                if connection.state == "SLEEP":
                    connection.changeState("IDLE")
            self._updateStateMachines()

    def unRegisterFunction(self, name: Any) -> None:
        """Remove a function from every server (CANT_DO)."""
        name = to_bytes(name)
        with self.broadcast_lock:
            self.functions.pop(name, None)
            self._sendCantDo(name)
        self._handBackUnstartable()

    def setFunctions(self, functions: Any) -> None:
        """Replace the registered functions with a list of :py:class:`FunctionRecord` (RESET_ABILITIES,
        then CAN_DO or CAN_DO_TIMEOUT for each); an empty list unregisters everything."""
        records = list(functions)
        for record in records:
            if not isinstance(record, FunctionRecord):
                raise InvalidDataError("An iterable of FunctionRecords is required.")
        with self.broadcast_lock:
            self._sendResetAbilities()
            self.functions = {record.name: record for record in records}
            for record in self.functions.values():
                if record.timeout:
                    self._sendCanDoTimeout(record.name, record.timeout)
                else:
                    self._sendCanDo(record.name)
        self._handBackUnstartable()
        with self.job_lock:
            for connection in list(self.active_connections):
                if connection.state == "SLEEP":
                    connection.changeState("IDLE")
            self._updateStateMachines()

    def _sendCanDo(self, name: bytes) -> None:
        with self.broadcast_lock:
            self.broadcast(Packet._build(constants.CAN_DO, name))

    def _sendCanDoTimeout(self, name: bytes, timeout: Any) -> None:
        with self.broadcast_lock:
            self.broadcast(Packet._build(constants.CAN_DO_TIMEOUT, name, timeout_ms(timeout)))

    def _sendCantDo(self, name: bytes) -> None:
        with self.broadcast_lock:
            self.broadcast(Packet._build(constants.CANT_DO, name))

    def _sendResetAbilities(self) -> None:
        with self.broadcast_lock:
            self.broadcast(Packet(constants.REQ, constants.RESET_ABILITIES, b""))

    def _sendPreSleep(self, connection: Connection) -> None:
        self._sendWorker(connection, connection._worker.pre_sleep())

    def _sendGrabJobUniq(self, connection: Connection | None = None) -> None:
        if connection is None:  # every server, whatever its state
            self.broadcast(Packet(constants.REQ, constants.GRAB_JOB_UNIQ, b""))
            return
        session = connection._worker
        session.state = "IDLE"  # gear's hooks decide when to grab; the session builds it and moves to GRAB_WAIT
        self._sendWorker(connection, session.grab())

    def _sendWorker(self, connection: Connection, data: bytes) -> None:
        """Send bytes the connection's WorkerSession built; a failed send drops the connection and raises."""
        try:
            connection.sendRaw(data)
        except Exception:
            self.log.exception("Exception while sending to %s", connection)
            self._lostConnection(connection)
            raise

    # -- connections -----------------------------------------------------------------------------------------

    def _onConnect(self, conn: Connection) -> None:
        # Runs in the poll thread on every (re)connection, under broadcast_lock: id and abilities first.
        with self.broadcast_lock:
            session = conn._worker
            session.client_id = self.client_id
            session.abilities = {name: record.timeout for name, record in self.functions.items()}
            conn.sendRaw(session.connect())  # SET_CLIENT_ID, then CAN_DO / CAN_DO_TIMEOUT for each function
            super()._onConnect(conn)
            conn.changeState("IDLE")

    def _onActiveConnection(self, conn: Connection) -> None:
        with self.job_lock:
            if self.waiting_for_jobs > 0:
                self._updateStateMachines()

    def _updateStateMachines(self) -> None:
        # Call with job_lock held.
        waiting = self.waiting_for_jobs
        for connection in list(self.active_connections):
            if connection._handing_back:
                continue  # it closes once its running jobs end: nothing more is taken on it
            state = connection._worker.state  # what connection.state reads, without the property's call
            if state == "IDLE" and waiting > 0:
                try:
                    self._sendGrabJobUniq(connection)
                except Exception:
                    continue
                connection.changeState("GRAB_WAIT")
            elif state != "IDLE" and waiting < 1:
                connection.changeState("IDLE")

    # -- jobs ------------------------------------------------------------------------------------------------

    def getJob(self) -> WorkerJob:
        """Wait for a job (blocking). Safe to call from several threads: each job goes to one of them.

        :returns: the assigned :py:class:`WorkerJob` (of ``job_class``).
        :raises InterruptedError: when :py:meth:`stopWaitingForJobs` or :py:meth:`shutdown` is called.
        """
        with self.job_lock:
            # running is cleared by _shutdown() under job_lock: no window between the check and the count.
            if not self.running:
                raise InterruptedError()
            if self._credits and getattr(self._holder, "credit", None) == self._credit_round:
                self._holder.credit = None  # back for the job its credit asked for: counted in waiting_for_jobs
                self._credits -= 1
            else:
                self.waiting_for_jobs += 1
            if self.log.isEnabledFor(logging.DEBUG):  # hot path: one call, not two, when off
                self.log.debug("Get job; number of threads waiting for jobs: %s", self.waiting_for_jobs)
            job = None
            if self.job_queue.qsize():  # no Empty raised and caught on every job when none is queued yet
                try:
                    job = self.job_queue.get_nowait()
                except queue.Empty:  # a thread waiting outside job_lock took it
                    pass
            if job is None:
                self._updateStateMachines()
        while True:
            if job is None:
                job = self.job_queue.get()
            if self.log.isEnabledFor(logging.DEBUG):  # hot path: one call, not two, when off
                self.log.debug("Received job: %s", job)
            if job is None:
                raise InterruptedError()
            if not self.prefetch or self._lendCredit(job):
                return job
            job = None  # it went back to the server with its connection: wait for another

    # -- prefetch (see the prefetch attribute) ---------------------------------------------------------------

    def _lendCredit(self, job: WorkerJob) -> bool:
        """A thread got ``job``: count it as running on its connection and ask for its next job now. False if
        the job must not start: its connection was closed to hand jobs back (the thread waits on)."""
        with self.job_lock:
            conn = job.connection
            if conn is not None and conn._shut:
                self.waiting_for_jobs += 1
                self._updateStateMachines()
                return False
            if conn is not None and conn.conn is not None:
                conn._running_jobs += 1
                job._gear_worker = self
                job._gear_socket = conn.conn
            if self.running:
                self._holder.credit = self._credit_round
                self._credits += 1
                self.waiting_for_jobs += 1
                self._updateStateMachines()
            return True

    def _jobEnded(self, job: WorkerJob) -> None:
        """A job getJob() returned in prefetch mode has sent its last packet: close its connection if it was
        waiting for that to hand a prefetched job back."""
        with self.job_lock:
            conn = job.connection
            job._gear_worker = None
            if conn.conn is None or conn.conn is not job._gear_socket:
                return  # its connection was lost meanwhile: the server took the job back already
            conn._running_jobs -= 1
            if conn._handing_back and conn._running_jobs == 0 and not conn._shut:
                self._closeToHandBack(conn)

    def _prefetched(self) -> bool:
        """Whether a job arriving now would wait for a credit's thread rather than go to a waiting one.
        Call with job_lock held, before waiting_for_jobs counts the job."""
        return self.waiting_for_jobs - self._credits <= 0

    def _startable(self, job: WorkerJob) -> bool:
        return self.running and job.binary_name in self.functions

    def _handBackUnstartable(self, stopping: bool = False) -> None:
        """Hand back every prefetched job that can no longer start (all of them when ``stopping``)."""
        if not self.prefetch:
            return
        with self.job_lock:
            for job in self._takeQueued(lambda job: stopping or not self._startable(job)):
                self._handBack(job)
            self._updateStateMachines()

    def _takeQueued(self, condition: Any) -> list[WorkerJob]:
        """Take the queued jobs that meet ``condition`` out of the queue (with job_lock held)."""
        queued: list[Any] = []
        while True:
            try:
                queued.append(self.job_queue.get_nowait())
            except queue.Empty:
                break
        taken = []
        for job in queued:
            if job is not None and condition(job):
                self.waiting_for_jobs += 1  # it leaves the queue: wanted again
                taken.append(job)
            else:
                self.job_queue.put(job)
        return taken

    def _handBack(self, job: WorkerJob) -> None:
        """Give a prefetched job back to the server: close its connection once no job from it runs (with
        job_lock held). A server requeues the jobs of a worker connection that closes."""
        conn = job.connection
        self.log.debug("Handing back prefetched job %s", job)
        if conn is None or conn.conn is None:
            return  # the connection is gone: the server took the job back already
        conn._handing_back = True
        if conn._running_jobs == 0 and not conn._shut:
            self._closeToHandBack(conn)

    def _closeToHandBack(self, conn: Connection) -> None:
        """Shut the connection's sending side (with job_lock held): the server reads what was sent (results
        included), sees the end of the stream, requeues the jobs still assigned to it and closes; the poll loop
        then reconnects. The jobs from it still queued here went back with it."""
        conn._shut = True
        self._takeQueued(lambda job: job.connection is conn)
        try:
            conn.conn.shutdown(socket.SHUT_WR)
        except OSError:
            self._lostConnection(conn)

    def stopWaitingForJobs(self) -> None:
        """Make every thread waiting in :py:meth:`getJob` raise InterruptedError."""
        self.job_lock.acquire()
        try:
            while self.running:
                # A grab in flight may still bring a job: give the server a moment to answer it.
                now = time.time()
                busy = False
                for connection in list(self.active_connections):
                    if connection.state == "GRAB_WAIT":
                        if now - connection.state_time > 5:
                            self._lostConnection(connection)
                        else:
                            busy = True
                if not busy:
                    break
                self.job_lock.release()
                try:
                    time.sleep(0.05)
                finally:
                    self.job_lock.acquire()
            # Credits are promises of a getJob() call that will not come now: take them back, and the jobs
            # they already brought.
            self.waiting_for_jobs -= self._credits
            self._credits = 0
            self._credit_round += 1
        finally:
            self.job_lock.release()
        self._handBackUnstartable(stopping=True)
        with self.job_lock:
            while self.waiting_for_jobs > 0:
                self.waiting_for_jobs -= 1
                self.job_queue.put(None)
            self._updateStateMachines()

    def _shutdown(self) -> None:
        with self.job_lock:
            super()._shutdown()
        self.stopWaitingForJobs()

    def handleNoop(self, packet: Packet) -> None:
        """Handle NOOP: a sleeping connection has work; grab it (GRAB_JOB_UNIQ)."""
        with self.job_lock:
            if packet.connection.state == "SLEEP":
                self.log.debug("Sending GRAB_JOB_UNIQ")
                self._sendGrabJobUniq(packet.connection)
                packet.connection.changeState("GRAB_WAIT")
            else:
                self.log.debug("Received unexpected NOOP packet on %s", packet.connection)

    def handleNoJob(self, packet: Packet) -> None:
        """Handle NO_JOB: go to sleep on that connection (PRE_SLEEP) until the server sends NOOP."""
        with self.job_lock:
            if packet.connection.state == "GRAB_WAIT":
                self.log.debug("Sending PRE_SLEEP")
                self._sendPreSleep(packet.connection)
                packet.connection.changeState("SLEEP")
            else:
                self.log.debug("Received unexpected NO_JOB packet on %s", packet.connection)

    def handleJobAssign(self, packet: Packet) -> WorkerJob:
        """Handle JOB_ASSIGN: queue the job for a thread in :py:meth:`getJob`."""
        handle, name, arguments = packet._arguments(3)
        return self._handleJobAssignment(packet, handle, name, arguments, None)

    def handleJobAssignUnique(self, packet: Packet) -> WorkerJob:
        """Handle JOB_ASSIGN_UNIQ: queue the job (an empty unique becomes None) for :py:meth:`getJob`."""
        handle, name, unique, arguments = packet._arguments(4)
        return self._handleJobAssignment(packet, handle, name, arguments, unique or None)

    def _handleJobAssignment(self, packet: Packet, handle: bytes, name: bytes, arguments: bytes,
                             unique: bytes | None) -> WorkerJob:
        job = self.job_class(handle, name, arguments, unique)
        job.connection = packet.connection
        with self.job_lock:
            packet.connection.changeState("IDLE")
            if self.prefetch and self._prefetched() and not self._startable(job):
                self._handBack(job)  # e.g. its function was unregistered while the grab was on its way
                self._updateStateMachines()
                return job
            self.waiting_for_jobs -= 1
            if self.log.isEnabledFor(logging.DEBUG):  # hot path: one call, not two, when off
                self.log.debug("Job assigned; number of threads waiting for jobs: %s", self.waiting_for_jobs)
            self.job_queue.put(job)
            self._updateStateMachines()
        return job


class TextWorker(Worker):
    """A Worker whose jobs (TextWorkerJob) read arguments as str and send str results as UTF-8."""

    job_class = TextWorkerJob
