"""gear.Server: geartrain's job server behind gear's constructor, and gear's Server as a base class for test servers.

A plain ``gear.Server`` runs geartrain's broker (its fast path). A subclass that overrides one of gear's server
hooks (``getJobForConnection``, ``handlePacket``, any ``handle*`` or ``send*`` method, ``wakeConnection(s)``,
``reportTimingStats`` ...) gets gear 0.16's own server model instead: ``high_queue``/``normal_queue``/``low_queue``
lists of :py:class:`ServerJob`, ``jobs``, ``functions``, connections with ``functions`` and ``related_jobs``, and
gear's packet handlers, run on geartrain's listener, framing, TLS and write batching (the pattern of Zuul's
FakeGearmanServer, which holds jobs back and releases them). geartrain.server is imported only when a Server is
built, so that `import gear` stays light.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Any

from . import constants
from .base import _HANDLERS as CONNECTION_HANDLERS
from .constants import PRECEDENCE_HIGH, PRECEDENCE_LOW, PRECEDENCE_NORMAL
from .packet import Packet
from .server_records import ServerAdminRequest, ServerConnection, ServerJob

__all__ = ["Server", "ServerAdminRequest", "ServerConnection", "ServerJob"]

#: The handler method gear's handlePacket calls for each packet type: the connection's, and GRAB_JOB_ALL and
#: GET_STATUS_UNIQUE.
_HANDLERS = {**CONNECTION_HANDLERS, constants.GRAB_JOB_ALL: "handleGrabJobUniq",
             constants.GET_STATUS_UNIQUE: "handleGetStatusUnique"}

#: Methods whose override in a subclass selects gear's server model (see the module docstring).
_HOOK_PREFIXES = ("handle", "send", "_handle", "getJobForConnection", "wakeConnection", "reportTimingStats",
                  "_updateStats", "_removeJob", "_lostConnection", "_getFunctionStats", "_cancelJob")


def _hooked(cls: type) -> bool:
    """Whether a Server subclass overrides one of gear's server hooks."""
    for name, value in vars(Server).items():
        if callable(value) and name.startswith(_HOOK_PREFIXES) and getattr(cls, name) is not value:
            return True
    return False


class Server:
    """A Gearman job server (geartrain's), serving in a background thread as soon as it is constructed.

    :arg int port: the TCP port; 0 picks a free one, read back from :py:attr:`port`.
    :arg str ssl_key: path to the TLS private key; with ssl_cert the server speaks TLS, and with ssl_ca too
        it requires and verifies client certificates (their Common Name is the ACL subject).
    :arg str ssl_cert: path to the TLS certificate.
    :arg str ssl_ca: path to the CA certificate.
    :arg str statsd_host: send gear's statsd metrics there (None: off): gauges ``<prefix>.queue.total``,
        ``.queue.running``, ``.queue.waiting``, a timer and a counter ``<prefix>.packet.<NAME>`` per packet type.
    :arg int statsd_port: statsd's UDP port.
    :arg str statsd_prefix: the prefix of every key.
    :arg str server_id: appended to the logger name (gear.Server.server_id).
    :arg ACL acl: an :py:class:`ACL`; with one, everything not granted is denied.
    :arg str host: the address to listen on; None listens on all interfaces.
    :arg bool keepalive: TCP keepalives (with tcp_keepidle, tcp_keepintvl, tcp_keepcnt).

    WORK_EXCEPTION reaches every client, whether or not it set the exceptions option, as gear's Server does.
    Call :py:meth:`shutdown` to stop it. ``jobs`` maps each job handle to the server's job record; the queues,
    ``functions`` and the hook methods are gear's (see the module docstring).
    """

    def __init__(
        self,
        port: int = 4730,
        ssl_key: str | None = None,
        ssl_cert: str | None = None,
        ssl_ca: str | None = None,
        statsd_host: str | None = None,
        statsd_port: int = 8125,
        statsd_prefix: str | None = None,
        server_id: Any = None,
        acl: Any = None,
        host: str | None = None,
        keepalive: bool = False,
        tcp_keepidle: int = 7200,
        tcp_keepintvl: int = 75,
        tcp_keepcnt: int = 9,
        use_epoll: bool = True,
    ) -> None:
        from geartrain.server import Server as GeartrainServer
        from geartrain.server import ServerConfig

        self.client_id = server_id
        self.log = logging.getLogger(f"gear.Server.{server_id}" if server_id else "gear.Server")
        if host is None:
            # One address family for a picked port, so that .port names the only listener.
            host = "0.0.0.0" if port == 0 else ""
        self.host = host
        self.ssl_key = ssl_key
        self.ssl_cert = ssl_cert
        self.ssl_ca = ssl_ca
        self.acl = acl
        self.server_id = server_id
        self.use_ssl = bool(ssl_key and ssl_cert and ssl_ca)
        self._gear_model = _hooked(type(self))
        options: dict[str, Any] = dict(
            listen=[(host, port)], acl=acl, keepalive=keepalive, tcp_keepidle=tcp_keepidle,
            tcp_keepintvl=tcp_keepintvl, tcp_keepcnt=tcp_keepcnt, exceptions=True,
        )
        if ssl_key and ssl_cert:
            options.update(ssl_key=ssl_key, ssl_cert=ssl_cert, ssl_ca=ssl_ca)
        if statsd_host and not self._gear_model:
            options.update(statsd_host=statsd_host, statsd_port=statsd_port, statsd_prefix=statsd_prefix)
        self.config = ServerConfig(**options)
        self.server = GeartrainServer(self.config)
        self.statsd: Any = None
        self._reporter: Any = None
        if self._gear_model:
            self._installGearModel(statsd_host, statsd_port, statsd_prefix)
        elif self.server.statsd is not None:
            self.statsd = self.server.statsd.client
        self.server.start_in_thread()
        self.port: int = self.server.port
        self.running = True
        if self._reporter is not None:
            self.server.loop.call_soon_threadsafe(self._reporter.start, self.server.loop)

    # -- the fast path's views (geartrain's broker) -------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Only reached when the instance has no such attribute: the broker's views, without gear's model.
        if name == "jobs":
            return self.server.broker.jobs
        if name == "functions":
            return set(self.server.broker.functions)
        if name in ("high_queue", "normal_queue", "low_queue"):
            return self._brokerQueue(("high_queue", "normal_queue", "low_queue").index(name))
        if name == "active_connections":
            return self._retrying(self._brokerConnections)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @staticmethod
    def _retrying(copy: Any) -> list:
        for _ in range(10):  # the server thread may change what we copy meanwhile
            try:
                return copy()
            except RuntimeError:
                continue
        return []

    def _brokerQueue(self, priority: int) -> list:
        """Queued (not running) jobs of one precedence, oldest first (a copy)."""
        from geartrain.server.broker import QUEUED

        def copy() -> list:
            jobs: dict[int, Any] = {}
            for function in list(self.server.broker.functions.values()):
                for job in list(function.queues[priority]):
                    # The deques may hold stale entries of jobs that moved on.
                    if job.state == QUEUED and job.priority == priority:
                        jobs.setdefault(id(job), job)
            return list(jobs.values())

        return self._retrying(copy)

    def _brokerConnections(self) -> list[ServerConnection]:
        """A snapshot of every connection: its registered functions, client id, and the jobs it runs or
        waits on (read-only: changing it changes nothing on the server)."""
        connections = []
        for peer in list(self.server.broker.peers.values()):
            connection = ServerConnection._over_peer(peer, self)
            connection.functions = {function.name for function in list(peer.abilities)}
            connection.client_id = None if peer.client_id == b"-" else peer.client_id
            connection.related_jobs = {job.handle: job for job in list(peer.waiting)}
            connection.related_jobs.update(dict(peer.running))
            connections.append(connection)
        return connections

    def getQueue(self) -> list:
        """Every queued job, high precedence first (a copy)."""
        return self.high_queue + self.normal_queue + self.low_queue

    def shutdown(self) -> None:
        """Stop serving: close the listener and every connection. Idempotent."""
        if self.running:
            self.running = False
            self.server.stop()
            if self._reporter is not None:
                self._reporter.close()  # the server's thread has ended: the last batch goes from here

    def __repr__(self) -> str:
        return f"<gear.Server 0x{id(self):x} port: {self.port}>"

    # -- gear's model on the engine ---------------------------------------------------------------------

    def _installGearModel(self, statsd_host: str | None, statsd_port: int, statsd_prefix: str | None) -> None:
        from .server_engine import GearModelAdmin, GearModelBroker

        self.high_queue: list[ServerJob] = []
        self.normal_queue: list[ServerJob] = []
        self.low_queue: list[ServerJob] = []
        self.jobs: dict[bytes, ServerJob] = {}
        self.running_jobs = 0
        self.waiting_jobs = 0
        self.total_jobs = 0
        self.functions: set[bytes] = set()
        self.max_handle = 0
        self.active_connections: list[ServerConnection] = []
        self.connections_condition = threading.Condition()
        self.server.broker = self.server.state.broker = GearModelBroker(self)
        self.server.admin = self.server.state.admin = GearModelAdmin(self)
        if statsd_host:
            from geartrain.server.statsd_reporter import StatsdReporter

            self._reporter = StatsdReporter(
                statsd_host, statsd_port, statsd_prefix,
                gauges=lambda: (self.total_jobs, self.running_jobs, self.waiting_jobs))
            self.statsd = self._reporter.client

    def _inLoop(self, function: Any, *args: Any) -> None:
        """Run now if this is the server's thread, else soon in it (the engine's state is the loop's)."""
        loop = self.server.loop
        if loop is None or threading.current_thread() is self.server._thread or loop.is_closed():
            function(*args)
        else:
            try:
                loop.call_soon_threadsafe(function, *args)
            except RuntimeError:
                pass  # the loop closed meanwhile: nothing to send to

    def handlePacket(self, packet: Packet) -> None:
        """Handle a received packet: call the handler method for its type (handleSubmitJob, ...)."""
        self.log.debug("Received packet from %s: %s", packet.connection, packet)
        start = time.time()
        name = _HANDLERS.get(packet.ptype)
        if name is None:
            self.log.error("Received unknown packet: %s", packet)
            self.sendError(packet.connection, "INVALID_COMMAND", f"unknown packet type {packet.ptype}")
        else:
            getattr(self, name)(packet)
        self.reportTimingStats(packet.ptype, time.time() - start)

    def _defaultPacketHandler(self, packet: Packet) -> None:
        self.log.error("Received unhandled packet: %s", packet)
        name = constants.types.get(packet.ptype, str(packet.ptype))
        self.sendError(packet.connection, "INVALID_COMMAND", f"{name} is not a request this server takes")

    def handleJobCreated(self, packet: Packet) -> None:
        self._defaultPacketHandler(packet)

    def handleStatusRes(self, packet: Packet) -> None:
        self._defaultPacketHandler(packet)

    def handleJobAssignUnique(self, packet: Packet) -> None:
        self._defaultPacketHandler(packet)

    def handleJobAssign(self, packet: Packet) -> None:
        self._defaultPacketHandler(packet)

    def handleNoJob(self, packet: Packet) -> None:
        self._defaultPacketHandler(packet)

    def handleNoop(self, packet: Packet) -> None:
        self._defaultPacketHandler(packet)

    def handleSubmitJobSched(self, packet: Packet) -> None:
        self._defaultPacketHandler(packet)

    def handleSubmitJobEpoch(self, packet: Packet) -> None:
        self._defaultPacketHandler(packet)

    def handleEchoRes(self, packet: Packet) -> None:
        self._defaultPacketHandler(packet)

    def handleError(self, packet: Packet) -> None:
        self._defaultPacketHandler(packet)

    def handleOptionRes(self, packet: Packet) -> None:
        self._defaultPacketHandler(packet)

    def handleGetStatusUnique(self, packet: Packet) -> None:
        self._defaultPacketHandler(packet)

    def handleAllYours(self, packet: Packet) -> None:
        pass

    def handleEchoReq(self, packet: Packet) -> None:
        packet.connection.sendPacket(Packet(constants.RES, constants.ECHO_RES, packet.data))

    def handleOptionReq(self, packet: Packet) -> None:
        # Every client gets exceptions already (see the class docstring): the option is acknowledged.
        option = packet.getArgument(0)
        if option == b"exceptions":
            packet.connection.sendPacket(Packet(constants.RES, constants.OPTION_RES, option))
        else:
            self.sendError(packet.connection, "UNKNOWN_OPTION", f"unknown option {option[:64]!r}")

    # -- connections ---------------------------------------------------------------------------------------

    def _lostConnection(self, conn: ServerConnection) -> None:
        """A connection went away: its clients' jobs go, and the clients of jobs it ran get WORK_FAIL."""
        self.log.info("Marking %s as disconnected", conn)
        with self.connections_condition:
            jobs = list(conn.related_jobs.values())
            if conn in self.active_connections:
                self.active_connections.remove(conn)
            self.connections_condition.notify_all()
        for job in jobs:
            if job.worker_connection == conn and job.client_connection:
                job.client_connection.sendPacket(Packet(constants.RES, constants.WORK_FAIL, job.handle))
            self._removeJob(job)
        self._updateStats()

    def _removeJob(self, job: ServerJob, dequeue: Any = True) -> None:
        """Forget a job; `dequeue` is True (search every queue), False (not queued) or the queue holding it."""
        if job.client_connection:
            job.client_connection.related_jobs.pop(job.handle, None)
        if job.worker_connection:
            job.worker_connection.related_jobs.pop(job.handle, None)
        self.jobs.pop(job.handle, None)
        if dequeue is True:
            for queue in (self.high_queue, self.normal_queue, self.low_queue):
                try:
                    queue.remove(job)
                except ValueError:
                    pass
        elif dequeue is not False:
            dequeue.remove(job)
        self.total_jobs -= 1
        if job.running:
            self.running_jobs -= 1
        else:
            self.waiting_jobs -= 1

    # -- admin commands ------------------------------------------------------------------------------------

    def handleAdminRequest(self, request: ServerAdminRequest) -> None:
        """Answer one admin command (gear's commands, plus version, getpid and show [unique] jobs)."""
        self.log.info("Received admin request %s", request)
        command = request.command
        words = command.split()
        if command.startswith(b"cancel job"):
            self.handleCancelJob(request)
        elif command.startswith(b"status"):
            self.handleStatus(request)
        elif command.startswith(b"workers"):
            self.handleWorkers(request)
        elif words[:1] == [b"acl"]:
            from geartrain.server.acl import acl_admin_command

            request.connection.sendRaw(acl_admin_command(self.acl, request.connection.ssl_subject, words[1:]))
        elif words == [b"version"]:
            from geartrain import __version__

            request.connection.sendRaw(f"OK {__version__}\n".encode())
        elif words == [b"getpid"]:
            request.connection.sendRaw(b"OK %d\n" % os.getpid())
        elif words == [b"show", b"jobs"]:
            lines = b"".join(b"%s\t0\t0\t1\n" % handle for handle in list(self.jobs))
            request.connection.sendRaw(lines + b".\n")
        elif words == [b"show", b"unique", b"jobs"]:
            lines = b"".join(job.binary_unique + b"\n" for job in list(self.jobs.values()) if job.binary_unique)
            request.connection.sendRaw(lines + b".\n")
        else:
            request.connection.sendRaw(b"ERR UNKNOWN_COMMAND Unknown+server+command\n")
        self.log.debug("Finished handling admin request %s", request)

    def _cancelJob(self, request: ServerAdminRequest, job: ServerJob, queue: list) -> None:
        if self.acl and not self.acl.canInvoke(request.connection.ssl_subject, job.name):
            self.log.info("Rejecting cancel job from %s for %s due to ACL", request.connection.ssl_subject,
                          job.name)
            request.connection.sendRaw(b"ERR PERMISSION_DENIED\n")
            return
        self._removeJob(job, dequeue=queue)
        self._updateStats()
        request.connection.sendRaw(b"OK\n")

    def handleCancelJob(self, request: ServerAdminRequest) -> None:
        words = request.command.split()
        handle = words[2] if len(words) > 2 else b""
        if handle in self.jobs:
            for queue in (self.high_queue, self.normal_queue, self.low_queue):
                for job in queue:
                    if handle == job.handle:
                        return self._cancelJob(request, job, queue)
        request.connection.sendRaw(b"ERR UNKNOWN_JOB\n")

    def _getFunctionStats(self) -> dict[bytes, list[int]]:
        functions: dict[bytes, list[int]] = {name: [0, 0, 0] for name in self.functions}
        for job in list(self.jobs.values()):
            counts = functions.setdefault(job.name, [0, 0, 0])
            counts[0] += 1
            if job.running:
                counts[1] += 1
        for connection in list(self.active_connections):
            for name in connection.functions:
                functions.setdefault(name, [0, 0, 0])[2] += 1
        return functions

    def handleStatus(self, request: ServerAdminRequest) -> None:
        lines = [b"%s\t%d\t%d\t%d\n" % (name, *values) for name, values in self._getFunctionStats().items()]
        request.connection.sendRaw(b"".join(lines) + b".\n")

    def handleWorkers(self, request: ServerAdminRequest) -> None:
        lines = []
        for connection in list(self.active_connections):
            client_id = connection.client_id or b"-"
            lines.append(b"%d %s %s : %s\n" % (connection.conn.fileno(), str(connection.host).encode(), client_id,
                                               b" ".join(sorted(connection.functions))))
        request.connection.sendRaw(b"".join(lines) + b".\n")

    # -- waking workers ------------------------------------------------------------------------------------

    def wakeConnection(self, connection: ServerConnection) -> None:
        """Send NOOP to one sleeping worker."""
        if connection.state == "SLEEP":
            connection.changeState("AWAKE")
            connection.sendPacket(Packet(constants.RES, constants.NOOP, b""))

    def wakeConnections(self, job: ServerJob | None = None) -> None:
        """Wake sleeping workers: every one (job None, e.g. after releasing held jobs), or one that can do
        `job`. Safe to call from any thread: the work is done in the server's."""
        if self._gear_model:
            self._inLoop(self._wakeConnections, job)

    def _wakeConnections(self, job: ServerJob | None) -> None:
        connections = list(self.active_connections)
        random.shuffle(connections)
        for connection in connections:
            if connection.state == "SLEEP" and (job is None or job.name in connection.functions):
                self.wakeConnection(connection)
                if job is not None:
                    return

    # -- statistics ----------------------------------------------------------------------------------------

    def reportTimingStats(self, ptype: int, duration: float) -> None:
        """Called by handlePacket with each packet's processing time: counted for statsd (when configured) under
        ``<prefix>.packet.<NAME>``, sent batched."""
        if self._reporter is not None:
            self._reporter.record(ptype, duration)

    def _updateStats(self) -> None:
        """The queue gauges are read when the batch is sent; kept for subclasses that call it."""

    # -- submitting ----------------------------------------------------------------------------------------

    def _handleSubmitJob(self, packet: Packet, precedence: int, background: bool = False) -> None:
        name = packet.getArgument(0)
        unique = packet.getArgument(1) or None
        arguments = packet.getArgument(2, True)
        connection = packet.connection
        if self.acl and not self.acl.canInvoke(connection.ssl_subject, name):
            self.log.info("Rejecting SUBMIT_JOB from %s for %s due to ACL", connection.ssl_subject, name)
            self.sendError(connection, "PERMISSION_DENIED", "Permission denied by ACL")
            return
        self.max_handle += 1
        handle = f"H:{connection.host}:{self.max_handle}".encode()
        job = ServerJob(handle, name, arguments, None if background else connection, unique)
        connection.sendPacket(Packet(constants.RES, constants.JOB_CREATED, handle))
        self.jobs[handle] = job
        self.total_jobs += 1
        self.waiting_jobs += 1
        if not background:
            connection.related_jobs[handle] = job
        if precedence == PRECEDENCE_HIGH:
            self.high_queue.append(job)
        elif precedence == PRECEDENCE_NORMAL:
            self.normal_queue.append(job)
        else:
            self.low_queue.append(job)
        self._updateStats()
        self.wakeConnections(job)

    def handleSubmitJob(self, packet: Packet) -> None:
        self._handleSubmitJob(packet, PRECEDENCE_NORMAL)

    def handleSubmitJobHigh(self, packet: Packet) -> None:
        self._handleSubmitJob(packet, PRECEDENCE_HIGH)

    def handleSubmitJobLow(self, packet: Packet) -> None:
        self._handleSubmitJob(packet, PRECEDENCE_LOW)

    def handleSubmitJobBg(self, packet: Packet) -> None:
        self._handleSubmitJob(packet, PRECEDENCE_NORMAL, background=True)

    def handleSubmitJobHighBg(self, packet: Packet) -> None:
        self._handleSubmitJob(packet, PRECEDENCE_HIGH, background=True)

    def handleSubmitJobLowBg(self, packet: Packet) -> None:
        self._handleSubmitJob(packet, PRECEDENCE_LOW, background=True)

    # -- workers ---------------------------------------------------------------------------------------------

    def getJobForConnection(self, connection: ServerConnection, peek: bool = False) -> ServerJob | None:
        """The next job this worker can do, high precedence first; unless peeking, it is taken off its queue
        and assigned. Override to hold jobs back (then call wakeConnections() when releasing them)."""
        for queue in (self.high_queue, self.normal_queue, self.low_queue):
            for job in queue:
                if job.name in connection.functions:
                    if not peek:
                        queue.remove(job)
                        connection.related_jobs[job.handle] = job
                        job.worker_connection = connection
                        job.running = True
                        self.waiting_jobs -= 1
                        self.running_jobs += 1
                        self._updateStats()
                    return job
        return None

    def handleGrabJobUniq(self, packet: Packet) -> None:
        job = self.getJobForConnection(packet.connection)
        if job:
            self.sendJobAssignUniq(packet.connection, job)
        else:
            self.sendNoJob(packet.connection)

    def handleGrabJob(self, packet: Packet) -> None:
        job = self.getJobForConnection(packet.connection)
        if job:
            self.sendJobAssign(packet.connection, job)
        else:
            self.sendNoJob(packet.connection)

    def sendJobAssignUniq(self, connection: ServerConnection, job: ServerJob) -> None:
        data = b"\x00".join((job.handle, job.name, job.binary_unique or b"", job.arguments))
        connection.sendPacket(Packet(constants.RES, constants.JOB_ASSIGN_UNIQ, data))

    def sendJobAssign(self, connection: ServerConnection, job: ServerJob) -> None:
        data = b"\x00".join((job.handle, job.name, job.arguments))
        connection.sendPacket(Packet(constants.RES, constants.JOB_ASSIGN, data))

    def sendNoJob(self, connection: ServerConnection) -> None:
        connection.sendPacket(Packet(constants.RES, constants.NO_JOB, b""))

    def handlePreSleep(self, packet: Packet) -> None:
        packet.connection.changeState("SLEEP")
        if self.getJobForConnection(packet.connection, peek=True):
            self.wakeConnection(packet.connection)

    def handleWorkComplete(self, packet: Packet) -> None:
        self.handlePassthrough(packet, True)

    def handleWorkFail(self, packet: Packet) -> None:
        self.handlePassthrough(packet, True)

    def handleWorkException(self, packet: Packet) -> None:
        self.handlePassthrough(packet, True)

    def handleWorkData(self, packet: Packet) -> None:
        self.handlePassthrough(packet)

    def handleWorkWarning(self, packet: Packet) -> None:
        self.handlePassthrough(packet)

    def handleWorkStatus(self, packet: Packet) -> None:
        job = self.jobs.get(packet.getArgument(0))
        if not job:
            self.log.info("Received packet %s for unknown job", packet)
            return
        job.numerator = packet.getArgument(1)
        job.denominator = packet.getArgument(2)
        self.handlePassthrough(packet)

    def handlePassthrough(self, packet: Packet, finished: bool = False) -> None:
        """Relay a worker's packet to the job's client; a finishing one ends the job."""
        job = self.jobs.get(packet.getArgument(0))
        if not job:
            self.log.info("Received packet %s for unknown job", packet)
            return
        if job.client_connection:
            job.client_connection.sendPacket(Packet(constants.RES, packet.ptype, packet.data))
        if finished:
            self._removeJob(job, dequeue=False)
            self._updateStats()

    def handleSetClientID(self, packet: Packet) -> None:
        packet.connection.client_id = packet.getArgument(0)

    def sendError(self, connection: ServerConnection, code: Any, text: Any) -> None:
        data = str(code).encode("utf8") + b"\x00" + str(text).encode("utf8") + b"\x00"
        connection.sendPacket(Packet(constants.RES, constants.ERROR, data))

    def handleCanDo(self, packet: Packet) -> None:
        name = packet.getArgument(0)
        if self.acl and not self.acl.canRegister(packet.connection.ssl_subject, name):
            self.log.info("Ignoring CAN_DO from %s for %s due to ACL", packet.connection.ssl_subject, name)
            return
        self.log.debug("Adding function %s to %s", name, packet.connection)
        packet.connection.functions.add(name)
        self.functions.add(name)

    def handleCanDoTimeout(self, packet: Packet) -> None:
        # The timeout is not enforced by gear's model; the function is registered.
        self.handleCanDo(packet)

    def handleCantDo(self, packet: Packet) -> None:
        packet.connection.functions.discard(packet.getArgument(0))

    def handleResetAbilities(self, packet: Packet) -> None:
        packet.connection.functions = set()

    def handleGetStatus(self, packet: Packet) -> None:
        handle = packet.getArgument(0)
        job = self.jobs.get(handle)
        known = running = 0
        numerator = denominator = b""
        if job:
            known = 1
            running = 1 if job.running else 0
            numerator = job.numerator or b""
            denominator = job.denominator or b""
        data = b"\x00".join((handle, b"%d" % known, b"%d" % running, numerator, denominator))
        packet.connection.sendPacket(Packet(constants.RES, constants.STATUS_RES, data))
