"""The machinery under Client and Worker: one background thread per object runs a poll loop (selectors)
over all its connections and a wake-up pipe, connects and reconnects them without blocking (exponential
backoff with jitter), reads, and calls the packet handlers."""

from __future__ import annotations

import logging
import os
import selectors
import threading
import time
from typing import Any

from geartrain.protocol import ProtocolError
from geartrain.protocol.pool import Backoff

from . import constants
from .connection import Connection, _Closed, _Connector, _name
from .errors import ConfigurationError, ConnectionError, NoConnectedServersError, TimeoutError, UnknownJobError
from .flag import Flag
from .job import to_bytes
from .packet import AdminRequest, Packet
from .poller import new_selector

__all__ = ["BaseClient", "BaseClientServer", "OptionReqTask", "SubmitJobTask", "Task"]


class Task(Flag):
    """Something waiting for a server's answer on one connection (answers come in order).

    It is its own flag (one object per request, not two): setComplete() sets it, wait() waits for it.
    """

    __slots__ = ("__dict__",)

    setComplete = Flag.set
    #: wait(timeout=None): wait for the answer; True once it came (or the connection was lost).
    wait = Flag.wait

    @property
    def _wait_event(self) -> Task:
        """gear's name for the event a task is waited on through."""
        return self


class SubmitJobTask(Task):
    __slots__ = ("job",)

    def __init__(self, job: Any) -> None:
        Flag.__init__(self)
        self.job = job


class OptionReqTask(Task):
    pass


class _StatusWaiter:
    __slots__ = ("event", "job", "answered")

    def __init__(self, job: Any) -> None:
        self.event = Flag()
        self.job = job
        self.answered = False


_HANDLERS = {
    constants.JOB_CREATED: "handleJobCreated",
    constants.WORK_COMPLETE: "handleWorkComplete",
    constants.WORK_FAIL: "handleWorkFail",
    constants.WORK_EXCEPTION: "handleWorkException",
    constants.WORK_DATA: "handleWorkData",
    constants.WORK_WARNING: "handleWorkWarning",
    constants.WORK_STATUS: "handleWorkStatus",
    constants.STATUS_RES: "handleStatusRes",
    constants.GET_STATUS: "handleGetStatus",
    constants.JOB_ASSIGN_UNIQ: "handleJobAssignUnique",
    constants.JOB_ASSIGN: "handleJobAssign",
    constants.NO_JOB: "handleNoJob",
    constants.NOOP: "handleNoop",
    constants.SUBMIT_JOB: "handleSubmitJob",
    constants.SUBMIT_JOB_BG: "handleSubmitJobBg",
    constants.SUBMIT_JOB_HIGH: "handleSubmitJobHigh",
    constants.SUBMIT_JOB_HIGH_BG: "handleSubmitJobHighBg",
    constants.SUBMIT_JOB_LOW: "handleSubmitJobLow",
    constants.SUBMIT_JOB_LOW_BG: "handleSubmitJobLowBg",
    constants.SUBMIT_JOB_SCHED: "handleSubmitJobSched",
    constants.SUBMIT_JOB_EPOCH: "handleSubmitJobEpoch",
    constants.GRAB_JOB_UNIQ: "handleGrabJobUniq",
    constants.GRAB_JOB: "handleGrabJob",
    constants.PRE_SLEEP: "handlePreSleep",
    constants.SET_CLIENT_ID: "handleSetClientID",
    constants.CAN_DO: "handleCanDo",
    constants.CAN_DO_TIMEOUT: "handleCanDoTimeout",
    constants.CANT_DO: "handleCantDo",
    constants.RESET_ABILITIES: "handleResetAbilities",
    constants.ECHO_REQ: "handleEchoReq",
    constants.ECHO_RES: "handleEchoRes",
    constants.ERROR: "handleError",
    constants.ALL_YOURS: "handleAllYours",
    constants.OPTION_REQ: "handleOptionReq",
    constants.OPTION_RES: "handleOptionRes",
}

_ENDING_TYPES = frozenset((constants.WORK_COMPLETE, constants.WORK_FAIL, constants.WORK_EXCEPTION))


class BaseClientServer:
    """Connections, the background poll thread and packet dispatch shared by Client and Worker."""

    #: First reconnection delay in seconds; doubled after each failed attempt up to reconnect_delay_max,
    #: each actual delay drawn between half and all of it (jitter).
    reconnect_delay = 0.1
    reconnect_delay_max = 10.0
    #: A connection that stayed up this long starts again from reconnect_delay when it is lost.
    reconnect_stable_after = 10.0
    #: Seconds a connection attempt (TCP and TLS handshake) may take.
    connect_timeout: float | None = 10.0
    #: Seconds a send may block before its connection is considered lost.
    send_timeout: float | None = 30.0

    def __init__(self, client_id: Any = None) -> None:
        if client_id:
            self.client_id = to_bytes(client_id)
            self.log = logging.getLogger(f"gear.BaseClientServer.{_name(self.client_id)}")
        else:
            self.client_id = None
            self.log = logging.getLogger("gear.BaseClientServer")
        self.running = True
        self.active_connections: list[Connection] = []
        self.inactive_connections: list[Connection] = []
        self.connection_index = -1
        # Guards the connection lists; notified whenever a connection comes or goes.
        self.connections_condition = threading.Condition()
        # Serialises state sent to every connection (functions, options) with connections coming up.
        self.broadcast_lock = threading.RLock()
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        self._selector = new_selector()
        self._selector.register(self.wake_read, selectors.EVENT_READ, None)
        self._to_close: list[Any] = []
        self._cleaned = False
        self._wake_lock = threading.Lock()
        self.poll_thread = threading.Thread(name="Gearman client poll", target=self._run, daemon=True)
        self.poll_thread.start()

    # -- the poll loop (runs in poll_thread) ----------------------------------------------------------------

    def _wake(self) -> None:
        with self._wake_lock:
            if self._cleaned:
                return  # the pipe is closed (its descriptor number may already belong to another file)
            try:
                os.write(self.wake_write, b"\n")
            except OSError:  # full (the loop will wake anyway) or closed
                pass

    def _run(self) -> None:
        while self.running:
            try:
                self._pollOnce()
            except Exception:
                self.log.exception("Exception in poll loop:")
                time.sleep(0.05)
        self._closeSockets()

    def _pollOnce(self) -> None:
        # Both lists only grow under connections_condition, each time followed by _wake(): when both are empty
        # now, whatever is added meanwhile is seen on the next pass (the wake-up ends this one's select).
        if self._to_close or self.inactive_connections:
            now = time.monotonic()
            with self.connections_condition:
                closing, self._to_close = self._to_close, []
                inactive = list(self.inactive_connections)
            for sock in closing:
                self._forget(sock)
            timeout = 5.0
            for conn in inactive:
                if conn._connector is None and conn._retry_at <= now and self.running:
                    self._beginConnect(conn)
                if conn._connector is not None:
                    timeout = min(timeout, conn._connector.deadline - now)
                else:
                    timeout = min(timeout, conn._retry_at - now)
            timeout = max(timeout, 0.0)
        else:  # every connection is up (the common case): nothing to time but the 5 s idle pass
            inactive = []
            timeout = 5.0
        events = self._selector.select(timeout)
        for key, _mask in events:
            if not self.running:
                return
            data = key.data
            if data is None:
                try:
                    while os.read(self.wake_read, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
                continue
            kind, conn = data
            if kind == "connect":
                connector = conn._connector
                if connector is not None and connector.sock is key.fileobj:
                    self._stepConnect(conn)
            elif conn.conn is key.fileobj:
                self._readConnection(conn)
        if not inactive:
            return
        now = time.monotonic()
        for conn in inactive:
            connector = conn._connector
            if connector is not None and connector.deadline <= now:
                self.log.debug("Timed out connecting to %s", conn)
                self._connectFailed(conn)

    def _forget(self, sock: Any) -> None:
        if sock is None:
            return
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        try:
            sock.close()
        except OSError:
            pass

    def _closeSockets(self) -> None:
        with self.connections_condition:
            closing, self._to_close = self._to_close, []
            connections = self.active_connections + self.inactive_connections
        for sock in closing:
            self._forget(sock)
        for conn in connections:
            if conn._connector is not None:
                conn._connector.close()
                conn._connector = None

    def _beginConnect(self, conn: Connection) -> None:
        connector = _Connector(conn)
        conn._connector = connector
        try:
            events = connector.start()
        except Exception as exc:
            self.log.debug("Unable to connect to %s: %s", conn, exc)
            self._connectFailed(conn)
            return
        self._selector.register(connector.sock, events, ("connect", conn))

    def _stepConnect(self, conn: Connection) -> None:
        connector = conn._connector
        try:
            self._selector.unregister(connector.sock)
        except (KeyError, ValueError):
            pass
        try:
            events = connector.step()
        except Exception as exc:
            self.log.log(
                logging.DEBUG if isinstance(exc, ConnectionError) else logging.WARNING,
                "Unable to connect to %s: %s", conn, exc,
            )
            self._connectFailed(conn)
            return
        if events:
            self._selector.register(connector.sock, events, ("connect", conn))
            return
        sock = connector.sock
        connector.sock = None
        conn._connector = None
        self._activate(conn, sock)

    def _backoff(self, conn: Connection) -> Backoff:
        backoff = conn._backoff
        if backoff is None:
            backoff = conn._backoff = Backoff(self.reconnect_delay, self.reconnect_delay_max,
                                              self.reconnect_stable_after)
        return backoff

    def _scheduleRetry(self, conn: Connection) -> None:
        conn._retry_at = time.monotonic() + self._backoff(conn).next_delay()

    def _connectFailed(self, conn: Connection) -> None:
        connector = conn._connector
        if connector is not None:
            if connector.sock is not None:
                try:
                    self._selector.unregister(connector.sock)
                except (KeyError, ValueError):
                    pass
            connector.close()
        conn._connector = None
        self._scheduleRetry(conn)

    def _activate(self, conn: Connection, sock: Any) -> None:
        """A new socket is connected: run the on-connect tasks and put the connection in the pool."""
        if not self.running:
            sock.close()
            return
        conn._owner = self
        conn._attach(sock)
        self._backoff(conn).connected(time.monotonic())
        self._selector.register(sock, selectors.EVENT_READ, ("read", conn))
        with self.broadcast_lock:
            try:
                self._onConnect(conn)
            except Exception:
                self.log.exception("Exception while performing on-connect tasks for %s", conn)
                self._forget(conn._detach())
                self._scheduleRetry(conn)
                return
            with self.connections_condition:
                if conn in self.inactive_connections:
                    self.inactive_connections.remove(conn)
                if conn not in self.active_connections:
                    self.active_connections.append(conn)
                self.connections_condition.notify_all()
        try:
            self._onActiveConnection(conn)
        except Exception:
            self.log.exception("Exception while performing active connection tasks for %s", conn)

    def _readConnection(self, conn: Connection) -> None:
        sock = conn.conn
        try:
            objects = conn._receive(conn._recvSome())
        except _Closed:
            self.log.debug("Received no data on %s", conn)
            self._lostConnection(conn)
            return
        except (OSError, ProtocolError) as exc:
            self.log.debug("Error reading %s: %s", conn, exc)
            self._lostConnection(conn)
            return
        for obj in objects:
            if conn.conn is not sock:
                break
            try:
                if isinstance(obj, Packet):
                    self._dispatch(obj)
                else:
                    self.handleAdminRequest(obj)
            except UnknownJobError:
                self.log.warning("Received %s for a job this connection does not hold", obj)
            except Exception:
                self.log.exception("Exception while handling %s from %s:", obj, conn)

    def _dispatch(self, packet: Packet) -> None:
        ptype = packet.ptype
        job = None
        if ptype in _ENDING_TYPES:
            job = packet._job or packet.connection.related_jobs.get(packet.getArgument(0))
        try:
            self.handlePacket(packet)
        finally:
            if job is not None and hasattr(job, "_gear_done"):
                job._gear_done.set()
            if ptype == constants.STATUS_RES:
                self._answerStatus(packet)

    def _answerStatus(self, packet: Packet) -> None:
        handle = packet.getArgument(0)
        queue = packet.connection._status_waiters.get(handle)
        if not queue:
            return
        waiter = queue.popleft()
        if not queue:
            packet.connection._status_waiters.pop(handle, None)
        job = waiter.job
        job.known = packet.getArgument(1) == b"1"
        job.running = packet.getArgument(2) == b"1"
        job.numerator = packet.getArgument(3)
        job.denominator = packet.getArgument(4)
        job.fraction_complete = _fraction(job.numerator, job.denominator)
        waiter.answered = True
        waiter.event.set()

    def _lostConnection(self, conn: Connection) -> None:
        """Take a failed connection out of the pool (from any thread); the poll loop reconnects it."""
        with self.connections_condition:
            if not conn.connected:
                return
            self.log.debug("Marking %s as disconnected", conn)
            jobs = conn._waitingJobs()
            sock = conn._detach()
            if sock is not None:
                self._to_close.append(sock)
            if conn in self.active_connections:
                self.active_connections.remove(conn)
            if conn not in self.inactive_connections:
                self.inactive_connections.append(conn)
            self._backoff(conn).lost(time.monotonic())
            self._scheduleRetry(conn)
            self.connections_condition.notify_all()
        self._wake()
        for job in jobs:
            try:
                self.handleDisconnect(job)
            except Exception:
                self.log.exception("Exception in handleDisconnect for %s", job)
            if getattr(job, "connection", None) in (conn, None) and hasattr(job, "_gear_done"):
                job.disconnect = True
                job.failure = True
                job._gear_done.set()

    # -- packet dispatch ----------------------------------------------------------------------------------

    def handlePacket(self, packet: Packet) -> Any:
        """Handle a received packet: call the handler method for its type (handleWorkComplete, ...)."""
        if self.log.isEnabledFor(logging.DEBUG):  # hot path: one call, not two, when off
            self.log.debug("Received packet from %s: %s", packet.connection, packet)
        timed = type(self).reportTimingStats is not _reportNothing  # only a subclass's hook wants the time
        start = time.time() if timed else 0.0
        name = _HANDLERS.get(packet.ptype)
        if name is None:
            self.log.error("Received unknown packet: %s", packet)
            result = None
        else:
            result = getattr(self, name)(packet)
        if timed:
            self.reportTimingStats(packet.ptype, time.time() - start)
        return result

    def reportTimingStats(self, ptype: int, duration: float) -> None:
        """Called by handlePacket with each packet's processing time (when a subclass overrides it)."""

    def _defaultPacketHandler(self, packet: Packet) -> None:
        self.log.error("Received unhandled packet: %s", packet)

    def handleJobCreated(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleWorkComplete(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleWorkFail(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleWorkException(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleWorkData(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleWorkWarning(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleWorkStatus(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleStatusRes(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleGetStatus(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleJobAssignUnique(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleJobAssign(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleNoJob(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleNoop(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleSubmitJob(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleSubmitJobBg(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleSubmitJobHigh(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleSubmitJobHighBg(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleSubmitJobLow(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleSubmitJobLowBg(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleSubmitJobSched(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleSubmitJobEpoch(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleGrabJobUniq(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleGrabJob(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handlePreSleep(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleSetClientID(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleCanDo(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleCanDoTimeout(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleCantDo(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleResetAbilities(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleEchoReq(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleEchoRes(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleError(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleAllYours(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleOptionReq(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleOptionRes(self, packet: Packet) -> Any:
        return self._defaultPacketHandler(packet)

    def handleAdminRequest(self, request: AdminRequest) -> None:
        """Called with each answered admin request; wakes its :py:meth:`Connection.sendAdminRequest`."""
        self.log.debug("Received admin data %s", request)
        request.setComplete()

    def handleDisconnect(self, job: Any) -> Any:
        """Called for each job of a connection that was lost; returns the job."""
        return job

    # -- shutdown -----------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Close all connections and stop the background thread. The object may not be used afterwards."""
        if self.running:
            self.log.debug("Beginning shutdown")
            self._shutdown()
            self._cleanup()
            self.log.debug("Finished shutdown")
        else:
            self.log.warning("Shutdown called when not currently running. Ignoring.")

    def _shutdown(self) -> None:
        self.running = False
        with self.connections_condition:
            self.connections_condition.notify_all()
        self._wake()

    def _cleanup(self) -> None:
        if threading.current_thread() is not self.poll_thread:
            self.poll_thread.join()
        with self.connections_condition:
            connections = self.active_connections + self.inactive_connections
            self.active_connections = []
            self.inactive_connections = []
            self.connections_condition.notify_all()
        for conn in connections:
            jobs = conn._waitingJobs()
            conn._owner = None
            conn.disconnect()
            for job in jobs:
                if hasattr(job, "_gear_done") and not job._gear_done.is_set():
                    job.disconnect = True
                    job.failure = True
                    job._gear_done.set()
        if threading.current_thread() is not self.poll_thread:
            with self._wake_lock:
                if not self._cleaned:
                    self._cleaned = True
                    self._selector.close()
                    os.close(self.wake_read)
                    os.close(self.wake_write)


_reportNothing = BaseClientServer.reportTimingStats


def _fraction(numerator: Any, denominator: Any) -> float | None:
    try:
        return float(numerator) / float(denominator)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


class BaseClient(BaseClientServer):
    """Server pool management shared by Client and Worker."""

    def __init__(self, client_id: Any = "unknown") -> None:
        super().__init__(client_id)
        self.log = logging.getLogger(f"gear.BaseClient.{_name(self.client_id)}")

    def addServer(
        self,
        host: str,
        port: int = 4730,
        ssl_key: str | None = None,
        ssl_cert: str | None = None,
        ssl_ca: str | None = None,
        keepalive: bool = False,
        tcp_keepidle: int = 7200,
        tcp_keepintvl: int = 75,
        tcp_keepcnt: int = 9,
    ) -> None:
        """Add a server to the pool. Does not block: the background thread connects, and reconnects
        whenever the connection is lost. Use :py:meth:`waitForServer` to wait for a connection.

        TLS is used when all of ssl_key, ssl_cert and ssl_ca are given.

        :raises ConfigurationError: if this host and port were already added.
        """
        self.log.debug("Adding server %s port %s", host, port)
        with self.connections_condition:
            for conn in self.active_connections + self.inactive_connections:
                if conn.host == host and conn.port == port:
                    raise ConfigurationError("Host/port already specified")
            conn = Connection(
                host,
                port,
                ssl_key,
                ssl_cert,
                ssl_ca,
                self.client_id,
                keepalive,
                tcp_keepidle,
                tcp_keepintvl,
                tcp_keepcnt,
                connect_timeout=self.connect_timeout,
                send_timeout=self.send_timeout,
            )
            conn._owner = self
            if conn.use_ssl:
                try:
                    conn._sslContext()
                except Exception as exc:  # retried (and logged) by every connection attempt
                    self.log.warning("Unable to load the TLS files for %s: %s", conn, exc)
            self.inactive_connections.append(conn)
            self.connections_condition.notify_all()
        self._wake()

    def waitForServer(self, timeout: float | None = None) -> None:
        """Block until at least one server is connected.

        :raises TimeoutError: if none connected within timeout seconds (None waits forever).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.connections_condition:
            while self.running and not self.active_connections:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("no server connected")
                self.connections_condition.wait(remaining)

    def getConnection(self) -> Connection:
        """The next connected server in round-robin order.

        :raises NoConnectedServersError: if no server is connected.
        """
        condition = self.connections_condition
        condition.acquire()  # its lock's own method: no Python-level __enter__/__exit__ on every submit
        try:
            if not self.active_connections:
                raise NoConnectedServersError("No connected Gearman servers")
            self.connection_index += 1
            if self.connection_index >= len(self.active_connections):
                self.connection_index = 0
            return self.active_connections[self.connection_index]
        finally:
            condition.release()

    def broadcast(self, packet: Packet) -> None:
        """Send a packet to every connected server (failed connections are dropped from the pool)."""
        for connection in list(self.active_connections):
            try:
                self.sendPacket(packet, connection)
            except Exception:
                pass

    def sendPacket(self, packet: Packet, connection: Connection) -> None:
        """Send a packet on one connection; if that fails, the connection leaves the pool and the error
        is raised."""
        try:
            connection.sendPacket(packet)
        except Exception:
            self.log.exception("Exception while sending packet %s to %s", packet, connection)
            self._lostConnection(connection)
            raise

    def handleEchoRes(self, packet: Packet) -> None:
        """Wake the :py:meth:`Connection.echo` call waiting for this data."""
        packet.connection.handleEchoRes(packet.getArgument(0, True))

    def handleError(self, packet: Packet) -> None:
        """Log an ERROR packet and end the request it answers (the oldest pending one) on its connection."""
        self.log.error(
            "Received ERROR packet: %s: %s", packet.getArgument(0), packet.getArgument(1, True)
        )
        conn = packet.connection
        task = packet._task
        if task is None:
            if conn.pending_tasks:
                conn.pending_tasks.pop(0).setComplete()
        elif isinstance(task, Task):
            conn._taskDone(task)
            task.setComplete()
        elif isinstance(task, _StatusWaiter):
            queue = conn._status_waiters.get(task.job.handle)
            if queue and task in queue:
                queue.remove(task)
            task.event.set()

    def _onConnect(self, conn: Connection) -> None:
        """Called in the poll thread right after a (re)connection, before the pool sees it."""

    def _onActiveConnection(self, conn: Connection) -> None:
        """Called in the poll thread right after a connection joined the pool."""
