"""Client: submits jobs to a set of Gearman servers over asyncio and follows them to their result.

Each server is a Link that reconnects by itself, with a geartrain.protocol ClientSession that matches the
server's replies to the requests (a reply only answers a request of its own kind) and names every job waiting on
a handle. A job goes to the server its unique hashes to on a ring over the pool in canonical order (the same
server whatever order the pool was given in; the next one on the ring while that one is down); jobs submitted
without a unique go round-robin. On loss, submits not yet acknowledged are sent again (to the next live server
if need be), acknowledged foreground jobs fail with JobLost, other waiting requests get ConnectionLost.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

from ..compiled import mypyc_attr
from ..protocol import AdminResponse, PacketError, to_bytes
from ..protocol import constants as C
from ..protocol.codec import join_body, pack
from ..protocol.constants import REQ
from ..protocol.pool import Ring, RoundRobin
from ..protocol.session import ClientSession, Reply, Unanswered, Unsolicited, Work
from .errors import ConnectionLost, GearmanError, JobLost, NoServerAvailable, ServerError
from .job import CREATED, LOST, PENDING, Job, JobStatus, UniqueStatus, to_int
from .link import Link, ServerSpec, parse_servers

log = logging.getLogger("geartrain.client")

_PRIORITIES: Final = {"high": C.PRIORITY_HIGH, "normal": C.PRIORITY_NORMAL, "low": C.PRIORITY_LOW}
#: The SUBMIT_JOB* type of each priority name, foreground and background.
_FOREGROUND: Final = {name: C.submit_type(False, level) for name, level in _PRIORITIES.items()}
_BACKGROUND: Final = {name: C.submit_type(True, level) for name, level in _PRIORITIES.items()}


def _is_up(link: Link) -> bool:
    return link.transport is not None


@mypyc_attr(allow_interpreted_subclasses=True)
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
        self._ring: Ring[Link] = Ring(())
        self._round_robin: RoundRobin[Link] = RoundRobin()
        #: Admin commands waiting for their answer, per link, in order.
        self._admin: dict[Link, deque[asyncio.Future[AdminResponse]]] = {}
        self._unrouted: deque[Job] = deque()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Connect to every server; those down keep being retried in the background.

        Raises NoServerAvailable (and closes) when not one server could be reached.
        """
        if not self.links:
            self.links = [
                Link(address, ClientSession(self.client_id), on_connected=self._connected, on_events=self._events,
                     on_lost=self._lost, ssl_context=self.ssl_context, connect_timeout=self.connect_timeout)
                for address in self.addresses
            ]
            self._ring = Ring((link, link.name) for link in self.links)
            self._admin = {link: deque() for link in self.links}
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
        return await self._submit(self._job(function, data, unique, priority, background))

    def _job(self, function: bytes | str, data: bytes | str, unique: bytes | str | None, priority: str,
             background: bool) -> Job:
        ptype = (_BACKGROUND if background else _FOREGROUND).get(priority) if type(priority) is str else None
        if ptype is None:  # not one of the three names as written: any case, or not a priority at all
            try:
                level = _PRIORITIES[priority.lower()]
            except (KeyError, AttributeError, TypeError):
                raise ValueError(f"priority must be 'high', 'normal' or 'low', not {priority!r}") from None
            priority = priority.lower()
            ptype = C.submit_type(background, level)
        # bytes as they are and str encoded without a call (the usual cases); to_bytes for the rest
        fn = function if type(function) is bytes else function.encode() if type(function) is str else to_bytes(
            function, "function")
        body = data if type(data) is bytes else to_bytes(data, "data")
        if unique is None:
            uq = uuid.uuid4().hex.encode()
        else:
            uq = unique if type(unique) is bytes else unique.encode() if type(unique) is str else to_bytes(
                unique, "unique")
        # The body joined here when the leading arguments hold no NUL; join_body otherwise (it refuses them). find(),
        # not `in`: bytes.__contains__ raises and clears a TypeError inside before it searches.
        joined = fn + b"\0" + uq + b"\0" + body if fn.find(b"\0") < 0 and uq.find(b"\0") < 0 else join_body(
            ptype, fn, uq, body)
        job = Job(fn, body, uq, ptype, pack(REQ, ptype, joined), background, priority)
        job._hashed = unique is not None
        return job

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
        request = pack(REQ, C.SUBMIT_JOB_EPOCH, join_body(C.SUBMIT_JOB_EPOCH, fn, uq, epoch, body))
        job = Job(fn, body, uq, C.SUBMIT_JOB_EPOCH, request, True, "normal")
        job._hashed = unique is not None
        return await self._submit(job)

    async def run(
        self,
        function: bytes | str,
        data: bytes | str = b"",
        unique: bytes | str | None = None,
        priority: str = "normal",
    ) -> bytes:
        """Submit a foreground job and wait for its result.

        The same as ``await (await submit(...)).result()``, awaiting one future instead of two: the Job stays
        inside, so its outcome needs no shield (a refused submit fails the outcome too, see Job._reject).
        """
        job = self._job(function, data, unique, priority, False)
        if self._closed or not self.links:
            await self._ready()
        self._route(job)
        try:
            return await job._outcome
        except asyncio.CancelledError:
            if job.state == PENDING:
                job._abandoned = True
            raise

    async def _ready(self) -> None:
        """Connect on first use; GearmanError once closed."""
        if self._closed:
            raise GearmanError("the client is closed")
        if not self.links:
            await self.connect()

    async def _submit(self, job: Job) -> Job:
        if self._closed or not self.links:
            await self._ready()
        created = job._created = asyncio.get_running_loop().create_future()
        self._route(job)
        try:
            await asyncio.shield(created)
        except asyncio.CancelledError:
            job._abandoned = True
            raise
        return job

    def _order(self, key: bytes) -> list[Link]:
        """The servers in the order a unique tries them: its place on the ring first, then along the ring."""
        return self._ring.order(key)

    def _route(self, job: Job) -> None:
        """Send a submit to its server (by unique, or round-robin without one), or hold it until one connects."""
        links = self.links
        if len(links) == 1:  # the one server, up or not: no call into the ring
            link: Link | None = links[0] if _is_up(links[0]) else None
        elif job._hashed:
            link = self._ring.pick(job.unique, _is_up)
        else:
            link = self._round_robin.pick(links, _is_up)
        if link is None:
            self._unrouted.append(job)
            return
        link.conn.track(job._ptype, job)
        link.write(job._request)

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

    async def _request(self, link: Link, ptype: int, arg: bytes) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        session: ClientSession = link.conn
        if ptype == C.GET_STATUS:
            link.write(session.get_status(arg, future))
        elif ptype == C.GET_STATUS_UNIQUE:
            link.write(session.get_status_unique(arg, future))
        else:
            link.write(session.echo(arg, future))
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
        self._admin[link].append(future)
        return await future

    # ------------------------------------------------------------------ Link callbacks

    def _connected(self, link: Link) -> None:
        link.write(link.conn.connect())  # SET_CLIENT_ID, the exceptions option
        held, self._unrouted = self._unrouted, deque()
        for job in held:
            if not job._abandoned:
                self._route(job)

    def _lost(self, link: Link, exc: Exception | None) -> None:
        loss = link.conn.lost()
        reason = f"the connection to {link.name} was lost" + (f" ({exc})" if exc else "")
        for future, _kind in loss.requests:
            if not future.done():
                future.set_exception(ConnectionLost(reason))
        admin = self._admin[link]
        while admin:
            future = admin.popleft()
            if not future.done():
                future.set_exception(ConnectionLost(reason))
        for job in loss.acknowledged:
            job._finish(LOST, exc=JobLost(
                f"job {job.handle!r} on {link.name} was lost with its connection; its result cannot arrive", job))
        for job in loss.unacknowledged:
            if job.state != PENDING or job._abandoned:
                continue
            if self._closed:
                job._reject(ConnectionLost(reason))
            else:
                log.info("resubmitting unacknowledged job %r (unique %r) after losing %s",
                         job.function, job.unique, link.name)
                self._route(job)

    def _events(self, link: Link, events: list[Any]) -> None:
        for event in events:
            kind = type(event)
            if kind is Work:  # Work(jobs, packet, final), Packet(magic, ptype, args): read by index, as the session
                packet = event[1]  # builds them (an index is cheaper than an attribute for compiled code)
                ptype, args = packet[1], packet[2]
                for job in event[0]:
                    job._packet(ptype, args)
            elif kind is Reply:
                self._reply(link, event)
            elif kind is Unanswered:
                self._unanswered(link, event)
            elif kind is AdminResponse:
                admin = self._admin[link]
                if admin:
                    future = admin.popleft()
                    if not future.done():
                        future.set_result(event)
            elif kind is Unsolicited:
                packet = event.packet
                if packet.ptype == C.ERROR:
                    log.warning("ERROR from %s: %s %s", link.name, packet.args[0], packet.args[1])
                elif packet.ptype != C.NOOP:
                    log.debug("ignoring %s from %s", packet.name, link.name)
            elif kind is PacketError:
                log.warning("unusable packet from %s: %s", link.name, event.message)

    def _reply(self, link: Link, reply: Reply) -> None:
        packet, request = reply.packet, reply.request
        if type(request) is Job:
            if packet.ptype == C.ERROR:
                request._reject(ServerError(packet.args[0], packet.args[1], link.name))
                return
            request._acknowledge(packet.args[0], link.name)
            if not request.background and (request._abandoned or request.state != CREATED):
                link.conn.forget(request)
        elif request.done():
            pass
        elif packet.ptype == C.ERROR:
            request.set_exception(ServerError(packet.args[0], packet.args[1], link.name))
        elif packet.ptype == C.ECHO_RES:
            request.set_result(packet.args[0])
        else:
            request.set_result(packet.args)

    def _unanswered(self, link: Link, event: Unanswered) -> None:
        what = C.TYPE_NAMES[event.kind]
        log.warning("%s passed over a %s: it does not support it", link.name, what)
        error = GearmanError(f"{link.name} did not answer {what} (a server that does not support it)")
        if type(event.request) is Job:
            event.request._reject(error)
        elif not event.request.done():
            event.request.set_exception(error)
