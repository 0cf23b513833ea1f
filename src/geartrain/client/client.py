"""Client: submits jobs to a set of Gearman servers over asyncio and follows them to their result.

Each server is a Link that reconnects by itself. Per connection a _Session matches the server's in-order replies
(JOB_CREATED, STATUS_RES, ECHO_RES, OPTION_RES, ERROR) to the requests in one FIFO and routes WORK_* packets to
the Jobs by handle. On loss, submits not yet acknowledged are sent again (to the next live server if need be),
acknowledged foreground jobs fail with JobLost, other waiting requests get ConnectionLost.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import uuid
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..protocol import AdminResponse, ClientEvent, Packet, PacketError, to_bytes
from ..protocol import constants as C
from .errors import ConnectionLost, GearmanError, JobLost, NoServerAvailable, ServerError
from .job import CREATED, LOST, PENDING, Job, JobStatus, UniqueStatus, to_int
from .link import Link, ServerSpec, parse_servers

log = logging.getLogger("geartrain.client")

_PRIORITIES = {"high": C.PRIORITY_HIGH, "normal": C.PRIORITY_NORMAL, "low": C.PRIORITY_LOW}
_REPLIES = frozenset({C.JOB_CREATED, C.ERROR, C.OPTION_RES, C.STATUS_RES, C.STATUS_RES_UNIQUE, C.ECHO_RES})
_WORK = frozenset({C.WORK_DATA, C.WORK_WARNING, C.WORK_STATUS, C.WORK_COMPLETE, C.WORK_FAIL, C.WORK_EXCEPTION})


@dataclass
class _Request:
    """One request waiting for its in-order reply: a submit (job) or a future for anything else."""

    kind: int
    job: Job | None = None
    future: asyncio.Future[Any] | None = None


@dataclass
class _Session:
    """What one live connection is waiting for; replaced on every reconnect."""

    pending: deque[_Request] = field(default_factory=deque)
    jobs: dict[bytes, list[Job]] = field(default_factory=dict)
    admin: deque[asyncio.Future[AdminResponse]] = field(default_factory=deque)
    #: Whether the server confirmed the "exceptions" option on this connection.
    exceptions: bool = False


class Client:
    """An asyncio Gearman client over one or more servers; see the module docstring."""

    def __init__(
        self,
        servers: Sequence[ServerSpec] | ServerSpec,
        client_id: bytes | str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.addresses = parse_servers(servers)
        self.client_id = to_bytes(client_id, "client_id") if client_id is not None else None
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.links: list[Link] = []
        self._unrouted: deque[Job] = deque()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Connect to every server; those down keep being retried in the background.

        Raises NoServerAvailable (and closes) when not one server could be reached.
        """
        if not self.links:
            self.links = [
                Link(address, on_connected=self._connected, on_events=self._events, on_lost=self._lost,
                     ssl_context=self.ssl_context, connect_timeout=self.connect_timeout)
                for address in self.addresses
            ]
            for link in self.links:
                link.start()
        results = await asyncio.gather(*(link.first_attempt() for link in self.links))
        if not any(results):
            names = ", ".join(link.name for link in self.links)
            await self.close()
            raise NoServerAvailable(f"no Gearman server could be reached ({names})")

    async def close(self) -> None:
        """Close every connection; jobs still waiting fail (JobLost, or ConnectionLost for unsent submits)."""
        self._closed = True
        await asyncio.gather(*(link.close() for link in self.links))
        while self._unrouted:
            self._unrouted.popleft()._reject(ConnectionLost("the client was closed before the job was submitted"))

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def connected_servers(self) -> list[str]:
        """"host:port" of every server connected now."""
        return [link.name for link in self.links if link.connected]

    # ------------------------------------------------------------------ submitting

    async def submit(
        self,
        function: bytes | str,
        data: bytes | str = b"",
        unique: bytes | str | None = None,
        priority: str = "normal",
        background: bool = False,
    ) -> Job:
        """Submit a job and return its Job once the server acknowledged it (JOB_CREATED).

        Raises ServerError when the server refused it (QUEUE_ERROR, ARGUMENT_TOO_LARGE, ...).
        """
        try:
            level = _PRIORITIES[priority.lower()]
        except (KeyError, AttributeError):
            raise ValueError(f"priority must be 'high', 'normal' or 'low', not {priority!r}") from None
        fn = to_bytes(function, "function")
        body = to_bytes(data, "data")
        uq = to_bytes(unique, "unique") if unique is not None else uuid.uuid4().hex.encode()
        ptype = C.submit_type(background, level)
        job = Job(fn, body, uq, ptype, (fn, uq, body), background, priority.lower())
        return await self._submit(job)

    async def submit_epoch(
        self,
        function: bytes | str,
        data: bytes | str,
        when: float | datetime.datetime,
        unique: bytes | str | None = None,
    ) -> Job:
        """Submit a background job that the server hands out no earlier than ``when`` (epoch seconds or datetime)."""
        if isinstance(when, datetime.datetime):
            when = when.timestamp()
        fn = to_bytes(function, "function")
        body = to_bytes(data, "data")
        uq = to_bytes(unique, "unique") if unique is not None else uuid.uuid4().hex.encode()
        epoch = str(int(when)).encode()
        job = Job(fn, body, uq, C.SUBMIT_JOB_EPOCH, (fn, uq, epoch, body), True, "normal")
        return await self._submit(job)

    async def run(
        self,
        function: bytes | str,
        data: bytes | str = b"",
        unique: bytes | str | None = None,
        priority: str = "normal",
    ) -> bytes:
        """Submit a foreground job and wait for its result."""
        job = await self.submit(function, data, unique=unique, priority=priority)
        return await job.result()

    async def _submit(self, job: Job) -> Job:
        if self._closed:
            raise GearmanError("the client is closed")
        if not self.links:
            await self.connect()
        self._route(job)
        try:
            await asyncio.shield(job._created)
        except asyncio.CancelledError:
            job._abandoned = True
            raise
        return job

    def _order(self, key: bytes) -> list[Link]:
        """The servers in the order a key tries them: a stable hash picks the first, the rest follow."""
        start = zlib.crc32(key) % len(self.links)
        return self.links[start:] + self.links[:start]

    def _route(self, job: Job) -> None:
        """Send a submit to the first live server in its unique's order, or hold it until one connects."""
        for link in self._order(job.unique):
            if link.connected:
                link.write(link.conn.send_packet(job._ptype, *job._packet_args))
                link.state.pending.append(_Request(job._ptype, job=job))
                return
        self._unrouted.append(job)

    # ------------------------------------------------------------------ other requests

    def _pick(self, server: str | int | None, key: bytes | None = None) -> Link:
        if isinstance(server, int):
            link = self.links[server]
        elif server is not None:
            matches = [link for link in self.links if link.name == server]
            if not matches:
                raise ValueError(f"{server!r} is not one of this client's servers")
            link = matches[0]
        else:
            candidates = self._order(key) if key is not None else self.links
            live = [link for link in candidates if link.connected]
            if not live:
                raise ConnectionLost("no server is connected")
            return live[0]
        if not link.connected:
            raise ConnectionLost(f"{link.name} is not connected")
        return link

    async def _request(self, link: Link, ptype: int, *args: bytes) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        link.write(link.conn.send_packet(ptype, *args))
        link.state.pending.append(_Request(ptype, future=future))
        return await future

    async def echo(self, data: bytes | str = b"", server: str | int | None = None) -> bytes:
        """ECHO_REQ to a server (the first connected unless named): the data it echoes back."""
        link = self._pick(server)
        return await self._request(link, C.ECHO_REQ, to_bytes(data, "data"))

    async def get_status(self, handle: Job | bytes | str, server: str | int | None = None) -> JobStatus:
        """GET_STATUS for a Job or a handle; a bare handle is asked of each live server until one knows it."""
        if isinstance(handle, Job):
            if handle.handle is None or handle.server is None:
                raise ValueError("the job has no handle yet")
            server, handle = handle.server, handle.handle
        raw = to_bytes(handle, "handle")
        links = [self._pick(server)] if server is not None else [link for link in self.links if link.connected]
        if not links:
            raise ConnectionLost("no server is connected")
        status = None
        for link in links:
            args = await self._request(link, C.GET_STATUS, raw)
            status = JobStatus(args[0], args[1] == b"1", args[2] == b"1", to_int(args[3]), to_int(args[4]))
            if status.known:
                break
        assert status is not None
        return status

    async def get_status_unique(self, unique: bytes | str, server: str | int | None = None) -> UniqueStatus:
        """GET_STATUS_UNIQUE, asked first of the server the unique hashes to, then of the others."""
        raw = to_bytes(unique, "unique")
        if server is not None:
            links = [self._pick(server)]
        else:
            links = [link for link in self._order(raw) if link.connected]
        if not links:
            raise ConnectionLost("no server is connected")
        status = None
        for link in links:
            args = await self._request(link, C.GET_STATUS_UNIQUE, raw)
            status = UniqueStatus(args[0], args[1] == b"1", args[2] == b"1", to_int(args[3]), to_int(args[4]),
                                  to_int(args[5]))
            if status.known:
                break
        assert status is not None
        return status

    async def admin(self, command: bytes | str, server: str | int | None = None) -> AdminResponse:
        """One admin text command (e.g. "status") to a server, the first connected unless named."""
        link = self._pick(server)
        future: asyncio.Future[AdminResponse] = asyncio.get_running_loop().create_future()
        link.write(link.conn.send_admin(command))
        link.state.admin.append(future)
        return await future

    # ------------------------------------------------------------------ Link callbacks

    def _connected(self, link: Link) -> None:
        link.state = session = _Session()
        if self.client_id is not None:
            link.write(link.conn.send_packet(C.SET_CLIENT_ID, self.client_id))
        link.write(link.conn.send_packet(C.OPTION_REQ, b"exceptions"))
        session.pending.append(_Request(C.OPTION_REQ))
        held, self._unrouted = self._unrouted, deque()
        for job in held:
            if not job._abandoned:
                self._route(job)

    def _lost(self, link: Link, exc: Exception | None) -> None:
        session: _Session | None = link.state
        link.state = None
        if session is None:
            return
        reason = f"the connection to {link.name} was lost" + (f" ({exc})" if exc else "")
        resend: list[Job] = []
        for request in session.pending:
            if request.job is not None:
                if request.job.state == PENDING and not request.job._abandoned:
                    resend.append(request.job)
            elif request.future is not None and not request.future.done():
                request.future.set_exception(ConnectionLost(reason))
        for future in session.admin:
            if not future.done():
                future.set_exception(ConnectionLost(reason))
        for handle, jobs in session.jobs.items():
            for job in jobs:
                job._finish(LOST, exc=JobLost(
                    f"job {handle!r} on {link.name} was lost with its connection; its result cannot arrive", job))
        for job in resend:
            if self._closed:
                job._reject(ConnectionLost(reason))
            else:
                log.info("resubmitting unacknowledged job %r (unique %r) after losing %s",
                         job.function, job.unique, link.name)
                self._route(job)

    def _events(self, link: Link, events: list[ClientEvent]) -> None:
        session: _Session = link.state
        for event in events:
            if type(event) is Packet:
                ptype, args = event.ptype, event.args
                if ptype in _WORK:
                    jobs = session.jobs.get(args[0])
                    if jobs:
                        ended = False
                        for job in jobs:
                            ended = job._packet(ptype, args) or ended
                        if ended:
                            del session.jobs[args[0]]
                elif ptype in _REPLIES:
                    self._reply(link, session, ptype, args)
                else:
                    log.debug("ignoring %s from %s", event.name, link.name)
            elif type(event) is AdminResponse:
                if session.admin:
                    future = session.admin.popleft()
                    if not future.done():
                        future.set_result(event)
            elif type(event) is PacketError:
                log.warning("unusable packet from %s: %s", link.name, event.message)

    def _reply(self, link: Link, session: _Session, ptype: int, args: tuple[bytes, ...]) -> None:
        if not session.pending:
            if ptype == C.ERROR:
                log.warning("ERROR from %s: %s %s", link.name, args[0], args[1])
            else:
                log.warning("unexpected %s from %s", C.TYPE_NAMES[ptype], link.name)
            return
        request = session.pending.popleft()
        if ptype == C.ERROR:
            error = ServerError(args[0], args[1], link.name)
            if request.job is not None:
                request.job._reject(error)
            elif request.future is not None:
                if not request.future.done():
                    request.future.set_exception(error)
            else:
                log.warning("%s refused %s: %s", link.name, C.TYPE_NAMES.get(request.kind), error)
            return
        if request.job is not None:
            job = request.job
            if ptype != C.JOB_CREATED:
                log.warning("%s answered a submit with %s", link.name, C.TYPE_NAMES[ptype])
                job._reject(GearmanError(f"{link.name} answered a submit with {C.TYPE_NAMES[ptype]}"))
                return
            job._acknowledge(args[0], link.name)
            if not job.background and not job._abandoned and job.state == CREATED:
                session.jobs.setdefault(args[0], []).append(job)
        elif request.kind == C.OPTION_REQ:
            session.exceptions = ptype == C.OPTION_RES
        elif request.future is not None and not request.future.done():
            request.future.set_result(args[0] if ptype == C.ECHO_RES else args)
