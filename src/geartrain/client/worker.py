"""Worker: registers functions with Gearman servers over asyncio, grabs jobs and runs their handlers.

Per server connection the worker keeps one GRAB_JOB_UNIQ in flight while fewer than ``concurrency`` jobs run,
sleeps with PRE_SLEEP after NO_JOB and grabs again on NOOP. After a reconnect it sends SET_CLIENT_ID and every
CAN_DO / CAN_DO_TIMEOUT again. WorkerJob is the handler's view of one assigned job.

With ``prefetch=True`` (off by default) the grab goes out while ``concurrency`` jobs run, so one more job
waits on the connection and starts when a slot frees, instead of one round trip to the server later. A held
job is never started once the worker is stopping (closing the connection gives it back: the server requeues
the jobs of a closed connection), and one whose function was unregistered meanwhile is given back the same way
as soon as no other job of that connection runs (WORK_FAIL would fail it for its clients).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..compiled import mypyc_attr
from ..protocol import constants as C
from ..protocol import to_bytes
from ..protocol.session import GRAB_WAIT, SLEEP, Assigned, NoJob, StillGrabbing, Unsolicited, Wake, WorkerSession
from .errors import ConnectionLost, JobFailed
from .link import Link, ServerSpec, parse_servers

log = logging.getLogger("geartrain.worker")

Result = bytes | bytearray | memoryview | str | None
Handler = Callable[["WorkerJob"], Awaitable[Result] | Result]


@mypyc_attr(allow_interpreted_subclasses=True)
class WorkerJob:
    """One job assigned to this worker: its handle, function, unique and input, and ways to report progress."""

    def __init__(self, link: Link, generation: int, handle: bytes, function: bytes, unique: bytes,
                 arguments: bytes) -> None:
        self.handle = handle
        self.function = function
        self.unique = unique
        #: The job's input bytes.
        self.arguments = arguments
        #: "host:port" of the server that assigned the job.
        self.server = link.name
        #: The worker's event loop: a plain-function handler (in an executor thread) reports progress with
        #: ``asyncio.run_coroutine_threadsafe(job.send_data(b"..."), job.loop).result()``.
        self.loop = asyncio.get_running_loop()
        self._link = link
        self._generation = generation

    def __repr__(self) -> str:
        return f"<WorkerJob {self.function!r} handle={self.handle!r} server={self.server}>"

    @property
    def connection_lost(self) -> bool:
        """Whether the connection that assigned this job is gone (the server has requeued the job)."""
        return self._link.generation != self._generation or not self._link.connected

    async def _send(self, ptype: int, *args: bytes) -> None:
        if self.connection_lost:
            raise ConnectionLost(f"the connection to {self.server} that assigned job {self.handle!r} was lost")
        self._link.write(self._link.conn.work(ptype, self.handle, *args))
        await self._link.drain()

    async def send_data(self, data: bytes | str) -> None:
        """WORK_DATA: a chunk of partial output for the waiting clients."""
        await self._send(C.WORK_DATA, to_bytes(data, "data"))

    async def send_warning(self, data: bytes | str) -> None:
        """WORK_WARNING: a warning for the waiting clients."""
        await self._send(C.WORK_WARNING, to_bytes(data, "data"))

    async def send_status(self, numerator: int, denominator: int) -> None:
        """WORK_STATUS: progress as numerator out of denominator."""
        await self._send(C.WORK_STATUS, str(int(numerator)).encode(), str(int(denominator)).encode())


@dataclass
class _Ability:
    handler: Handler
    timeout: float | None
    is_async: bool = False  # the handler is awaited in the loop (else run in the executor)

    def __post_init__(self) -> None:
        self.is_async = _is_async(self.handler)


class _Session:
    """The jobs running and held on one live connection (the grab machine itself is the link's WorkerSession)."""

    def __init__(self) -> None:
        self.running = 0
        #: Prefetched jobs waiting for a free slot, in the order assigned.
        self.held: deque[WorkerJob] = deque()
        #: Whether the grab in flight went out with every slot taken (its job, if any, is a prefetch).
        self.prefetching = False


def _is_async(handler: Handler) -> bool:
    """An async def function, a partial of one, or an object whose __call__ is one."""
    while isinstance(handler, functools.partial):
        handler = handler.func
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(type(handler).__call__)


def _result_bytes(value: Result) -> bytes:
    if type(value) is bytes:  # the usual case, without a call
        return value
    if value is None:
        return b""
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return to_bytes(value)
    raise TypeError(f"a handler must return bytes, str or None, not {type(value).__name__}")


@mypyc_attr(allow_interpreted_subclasses=True)
class Worker:
    """An asyncio Gearman worker over one or more servers; see the module docstring."""

    def __init__(
        self,
        servers: Sequence[ServerSpec] | ServerSpec,
        client_id: bytes | str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        prefetch: bool = False,
    ) -> None:
        self.addresses = parse_servers(servers)
        self.client_id = to_bytes(client_id, "client_id") if client_id is not None else None
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        #: Grab one job more than ``concurrency`` runs (see the module docstring).
        self.prefetch = prefetch
        self.abilities: dict[bytes, _Ability] = {}
        self.links: list[Link] = []
        self.concurrency = 1
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        #: One future per coroutine waiting for a change (a connection made or lost, a job ended), settled by
        #: _signal(): with none waiting, as while jobs run, a change costs one test.
        self._watchers: list[asyncio.Future[None]] = []
        self._done: asyncio.Event | None = None

    # ------------------------------------------------------------------ abilities

    def register(self, function: bytes | str, handler: Handler, timeout: float | None = None) -> None:
        """Handle ``function`` with ``handler``: an ``async def handler(job)``, or a plain function (run in the
        loop's default executor). Its return value is the WORK_COMPLETE data; raising JobFailed sends WORK_FAIL,
        any other exception WORK_EXCEPTION then WORK_FAIL. ``timeout`` in seconds goes out as CAN_DO_TIMEOUT
        (milliseconds)."""
        name = to_bytes(function, "function")
        self.abilities[name] = _Ability(handler, timeout)
        for link in self.links:
            data = link.conn.can_do(name, timeout)
            if link.connected:
                link.write(data)
                self._grab(link, wake=True)  # a sleeping worker is not woken for a new ability: ask

    def unregister(self, function: bytes | str) -> None:
        """Stop taking ``function`` (CANT_DO); jobs of it already running finish normally."""
        name = to_bytes(function, "function")
        if self.abilities.pop(name, None) is not None:
            for link in self.links:
                data = link.conn.cant_do(name)
                if link.connected:
                    link.write(data)

    def _session(self) -> WorkerSession:
        session = WorkerSession(self.client_id)
        for name, ability in self.abilities.items():
            session.can_do(name, ability.timeout)
        return session

    # ------------------------------------------------------------------ lifecycle

    async def run(self, concurrency: int = 1) -> None:
        """Connect to every server (retrying those down) and work until stop() is called."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self._done is not None and not self._done.is_set():
            raise RuntimeError("this Worker is already running: stop() it before run() again")
        self.concurrency = concurrency
        self._stopping = False
        self._done = asyncio.Event()
        self.links = [
            Link(address, self._session(), on_connected=self._connected, on_events=self._events,
                 on_lost=self._lost, ssl_context=self.ssl_context, connect_timeout=self.connect_timeout)
            for address in self.addresses
        ]
        for link in self.links:
            link.start()
        try:
            await self._done.wait()
            return
        except BaseException as exc:
            if self._done.is_set():
                raise
            stopped = exc
        # run() was cancelled: do not leave connections behind (awaited out of the except block: see
        # geartrain.compiled, no await in an except or finally block of a compiled coroutine).
        await self._shutdown()
        raise stopped

    async def wait_connected(self, count: int | None = None, timeout: float | None = None) -> None:
        """Wait until ``count`` servers (default: all) are connected and registered; for tests and start-up."""
        want = len(self.addresses) if count is None else count

        async def wait() -> None:
            while sum(1 for link in self.links if link.connected) < want:
                await self._wait_change()

        await asyncio.wait_for(wait(), timeout)

    async def _wait_change(self) -> None:
        watcher = asyncio.get_running_loop().create_future()
        self._watchers.append(watcher)
        await watcher

    def _signal(self) -> None:
        if self._watchers:
            watchers, self._watchers = self._watchers, []
            for watcher in watchers:
                if not watcher.done():
                    watcher.set_result(None)

    async def stop(self, timeout: float | None = None) -> None:
        """Take no more jobs, let running jobs finish and send their results (cancelled after ``timeout``),
        then close the connections and let run() return."""
        self._stopping = True

        async def drain() -> None:
            while self._tasks or any(link.connected and link.conn.state == GRAB_WAIT for link in self.links):
                await self._wait_change()

        try:
            await asyncio.wait_for(drain(), timeout)
            late = False
        except asyncio.TimeoutError:
            late = True
        if late:  # awaited out of the except block (geartrain.compiled)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()  # a task cancelled before its first step never ran _work's finally
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._stopping = True
        await asyncio.gather(*(link.close() for link in self.links))
        if self._done is not None:
            self._done.set()

    # ------------------------------------------------------------------ grab loop

    def _grab(self, link: Link, wake: bool = False) -> None:
        """Ask for a job when a slot is free (or, prefetching, one more), unless one grab is out or (unless woken)
        the link sleeps."""
        data = self._grab_bytes(link, wake)
        if data:
            link.write(data)

    def _grab_bytes(self, link: Link, wake: bool = False) -> bytes:
        """The grab _grab() sends (b"": none), for a caller that sends it with other bytes."""
        session: WorkerSession = link.conn
        state: _Session = link.state
        taken = state.running + len(state.held)
        if (self._stopping or taken >= self.concurrency + (1 if self.prefetch else 0) or not self.abilities
                or (session.state == SLEEP and not wake)):
            return b""
        if state.held and state.held[0].function not in self.abilities:
            return b""  # a job to give back: let the connection's running jobs end (see _pump)
        data = session.grab()
        if data:
            state.prefetching = taken >= self.concurrency
        return data

    def _pump(self, link: Link, state: _Session) -> None:
        """Start held jobs while slots are free; give back the first one that cannot start (see the module
        docstring) once no other job of the connection runs."""
        while state.held and state.running < self.concurrency and not self._stopping:
            job = state.held[0]
            if job.function not in self.abilities:
                if state.running == 0:
                    log.info("giving %r back to %s: its function is no longer registered", job, link.name)
                    link.reconnect()  # results written first; the server requeues the jobs of a closed link
                return
            state.held.popleft()
            self._start(link, state, job)

    def _connected(self, link: Link) -> None:
        link.state = _Session()
        link.write(link.conn.connect())  # SET_CLIENT_ID, every CAN_DO / CAN_DO_TIMEOUT
        self._grab(link)
        self._signal()

    def _lost(self, link: Link, exc: Exception | None) -> None:
        link.conn.lost()
        link.state = None
        self._signal()

    def _events(self, link: Link, events: list[Any]) -> None:
        session: _Session = link.state
        for event in events:
            kind = type(event)
            if kind is Assigned:
                handle, function, unique, arguments = event[0]  # Assigned(job, packet): the session's Assignment
                job = WorkerJob(link, link.generation, handle, function, unique, arguments)
                if session.prefetching:
                    session.held.append(job)
                    self._pump(link, session)
                else:
                    self._start(link, session, job)
                self._grab(link)
            elif kind is Wake:
                self._grab(link)
            elif kind is NoJob:
                if not self._stopping:
                    link.write(link.conn.pre_sleep())
                self._signal()
            elif kind is StillGrabbing:
                continue
            elif kind is Unsolicited:
                ptype, args = event.packet.ptype, event.packet.args
                if ptype == C.ERROR and args[0] == b"JOB_NOT_FOUND":
                    # gearmand ends a job on WORK_EXCEPTION, so the WORK_FAIL sent after it finds no job.
                    log.debug("ERROR from %s: %r %r", link.name, args[0], args[1])
                elif ptype == C.ERROR:
                    log.warning("ERROR from %s: %s %s", link.name, args[0].decode("utf-8", "replace"),
                                args[1].decode("utf-8", "replace"))
                elif ptype not in (C.ECHO_RES, C.OPTION_RES):
                    log.debug("ignoring %s from %s", event.packet.name, link.name)

    def _start(self, link: Link, session: _Session, job: WorkerJob) -> None:
        session.running += 1
        # No done callback (it would cost every job a loop pass): _work takes its task out of _tasks itself.
        self._tasks.add(asyncio.get_running_loop().create_task(self._work(link, session, job)))

    async def _work(self, link: Link, session: _Session, job: WorkerJob) -> None:
        result_packet = b""
        try:
            ability = self.abilities.get(job.function)
            if ability is None:
                log.warning("%s assigned %r, which this worker no longer does: failing it", link.name, job.function)
                if not job.connection_lost:
                    link.write(link.conn.work(C.WORK_FAIL, job.handle))
                return
            try:
                if ability.is_async:
                    result = await ability.handler(job)  # type: ignore[misc]
                else:
                    result = await self._call_sync(ability, job)
                conn: WorkerSession = link.conn
                packet = conn.complete(job.handle, _result_bytes(result))
            except asyncio.CancelledError:
                if not job.connection_lost:
                    link.write(link.conn.work(C.WORK_FAIL, job.handle))
                raise
            except JobFailed:
                # The handler's way to fail a job without an exception: WORK_FAIL alone.
                if not job.connection_lost:
                    link.write(link.conn.work(C.WORK_FAIL, job.handle))
                return
            except Exception as exc:
                if job.connection_lost:
                    log.info("job %r failed after its connection to %s was lost: %r", job.handle, link.name, exc)
                    return
                log.exception("handler for %r failed on job %r", job.function, job.handle)
                text = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")
                link.write(link.conn.work(C.WORK_EXCEPTION, job.handle, text))
                link.write(link.conn.work(C.WORK_FAIL, job.handle))
                return
            if job.connection_lost:
                log.info("job %r finished after its connection to %s was lost: result dropped (the server "
                         "requeued it)", job.handle, link.name)
                return
            result_packet = packet
        finally:
            session.running -= 1
            if link.state is session:
                if session.held or session.running:
                    # Queued: other jobs' results may come in this loop pass too (one write for all), and the
                    # result goes before _pump may close the link to give a held job back.
                    if result_packet:
                        link.write(result_packet)
                    self._pump(link, session)
                    self._grab(link)
                else:  # the connection's last job: its result and the next grab leave now, in one write
                    out = result_packet + self._grab_bytes(link)
                    if out:
                        link.send(out)
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._signal()

    async def _call_sync(self, ability: _Ability, job: WorkerJob) -> Result:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, functools.partial(ability.handler, job))
        if inspect.isawaitable(result):
            return await result
        return result  # type: ignore[return-value]

    async def __aenter__(self) -> Worker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

