"""A Gearman load generator: asyncio Protocols (on uvloop when installed) in several processes.

Clients and workers run in separate processes (``client_procs`` / ``worker_procs``) so that on a small
machine the generator is as little of a bottleneck as Python allows. Framing uses geartrain.protocol:
``Decoder(accept=RES)`` for what the server sends, ``encode_request`` for set-up packets and its hot-path twin
``pack`` for submits and results. Every connection sets TCP_NODELAY and batches what one read produces into
one write.

Correctness is part of every load: each job's data embeds its unique, the worker answers
``unique + b"|" + reversed(data)``, the client compares that with what it expects, and the parent checks
that every unique it planned was completed exactly once. Any mismatch is an error and the load is reported
as FAILED.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import queue as queue_mod
import random
import socket
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from geartrain.protocol import REQ, RES, Decoder, Packet, encode_request, pack
from geartrain.protocol import constants as C

HOST = "127.0.0.1"

try:  # uvloop roughly halves the per-packet cost of the event loop
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux CPython
    uvloop = None

LOOP_NAME = f"uvloop {uvloop.__version__}" if uvloop is not None else "asyncio"


def run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)


# --- payloads -------------------------------------------------------------------------------------

_FILLER_CACHE: dict[int, bytes] = {}


def _filler(size: int) -> bytes:
    """Deterministic pseudo-random bytes, NULs included (the last argument of a packet may hold them)."""
    data = _FILLER_CACHE.get(size)
    if data is None:
        data = random.Random(size).randbytes(size)
        _FILLER_CACHE[size] = data
    return data


def make_payload(unique: bytes, size: int) -> bytes:
    """The job data for a unique: it starts with the unique, so equal-looking jobs cannot be confused."""
    head = unique + b":"
    if size <= len(head):
        return head
    return head + _filler(size - len(head))


def transform(unique: bytes, data: bytes) -> bytes:
    """What the worker answers; the client recomputes it to check the result arrived intact."""
    return unique + b"|" + data[::-1]


def make_unique(tag: str, actor: int, seq: int) -> bytes:
    return f"{tag}-{actor}-{seq}".encode()


# --- results --------------------------------------------------------------------------------------


@dataclass
class ClientReport:
    actor: int
    submitted: int = 0
    created: int = 0
    completed: int = 0
    latencies: list[float] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    errors: list[str] = field(default_factory=list)
    handles: int = 0  # distinct handles seen


@dataclass
class WorkerReport:
    actor: int
    jobs: int = 0
    started: float = 0.0
    finished: float = 0.0
    uniques: list[bytes] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ready: bool = False


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _describe(ev: object) -> str:
    if isinstance(ev, Packet):
        args = ", ".join(repr(a[:60]) for a in ev.args)
        return f"{ev.name}({args})"
    return repr(ev)[:200]


# --- the foreground client ------------------------------------------------------------------------


class _LoadPeer(asyncio.Protocol):
    """What every load-generating connection shares: its report, its done future(s), failing, finishing."""

    report: ClientReport | WorkerReport
    done: asyncio.Future[None]
    transport: asyncio.Transport | None
    closing: bool  # we closed it: not the server's doing

    def _futures(self) -> tuple[asyncio.Future[None], ...]:
        return (self.done,)

    def _open(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport)
        self.report.started = time.perf_counter()

    def _fail(self, message: str) -> None:
        self.report.errors.append(message)
        for fut in self._futures():
            if not fut.done():
                fut.set_result(None)

    def _finish(self, handles: int) -> None:
        assert isinstance(self.report, ClientReport)
        self.report.finished = time.perf_counter()
        self.report.handles = handles
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done() and not self.closing:
            self._fail(f"server closed the connection ({exc!r})")


class ForegroundClient(_LoadPeer):
    """Keeps ``inflight`` SUBMIT_JOBs outstanding until ``quota`` jobs are submitted or time is up.

    With ``serial_submits`` only one submit at a time waits for its JOB_CREATED, as with an API whose submit
    call returns the job handle (gear's submitJob): the next one goes out when it arrives.
    """

    def __init__(self, funcs: list[bytes], tag: str, actor: int, payload: int, quota: int, inflight: int,
                 stop_submitting_at: float, done: asyncio.Future[None], serial_submits: bool = False) -> None:
        self.prefixes = [f + b"\x00" for f in funcs]
        self.tag = tag
        self.payload = payload
        self.quota = quota
        self.inflight = inflight
        self.stop_submitting_at = stop_submitting_at
        self.done = done
        self.report = ClientReport(actor)
        self.decoder = Decoder(accept=RES)
        self.awaiting_handle: deque[tuple[bytes, bytes, float]] = deque()
        self.running: dict[bytes, tuple[bytes, bytes, float]] = {}
        self.seen_handles: set[bytes] = set()
        self.transport: asyncio.Transport | None = None
        self.closing = False  # we closed it: not the server's doing
        self.seq = 0
        self.serial_submits = serial_submits

    def _submit(self) -> bytes:
        seq = self.seq
        unique = make_unique(self.tag, self.report.actor, seq)
        self.seq = seq + 1
        data = make_payload(unique, self.payload)
        self.awaiting_handle.append((unique, transform(unique, data), time.perf_counter()))
        self.report.submitted += 1
        prefixes = self.prefixes
        return pack(REQ, C.SUBMIT_JOB, prefixes[seq % len(prefixes)] + unique + b"\x00" + data)

    def _may_submit(self) -> bool:
        return self.report.submitted < self.quota and time.perf_counter() < self.stop_submitting_at

    def _window_open(self) -> bool:
        """Room for another submit now: under ``inflight`` and, serially, no submit awaiting its handle."""
        if self.serial_submits and self.awaiting_handle:
            return False
        return len(self.awaiting_handle) + len(self.running) < self.inflight and self._may_submit()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._open(transport)
        out = []
        while self._window_open():
            out.append(self._submit())
        transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        out: list[bytes] = []
        report = self.report
        try:
            events = self.decoder.feed(data)
        except Exception as exc:  # a broken stream is a failed load
            self._fail(f"undecodable stream from the server: {exc!r}")
            return
        for ev in events:
            if type(ev) is not Packet:
                self._fail(f"unexpected event {_describe(ev)}")
                return
            ptype = ev.ptype
            if ptype == C.JOB_CREATED:
                if not self.awaiting_handle:
                    self._fail("JOB_CREATED without a submit")
                    return
                handle = ev.args[0]
                if handle in self.running:
                    self._fail(f"handle {handle!r} given to two running jobs")
                    return
                self.running[handle] = self.awaiting_handle.popleft()
                self.seen_handles.add(handle)
                report.created += 1
                if self._window_open():  # only ever open here with serial submits
                    out.append(self._submit())
            elif ptype == C.WORK_COMPLETE:
                handle, result = ev.args
                item = self.running.pop(handle, None)
                if item is None:
                    self._fail(f"WORK_COMPLETE for unknown handle {handle!r}")
                    return
                now = time.perf_counter()
                unique, expected, t0 = item
                if result != expected:
                    report.errors.append(
                        f"job {unique!r}: wrong result ({len(result)} bytes, expected {len(expected)})"
                    )
                else:
                    report.completed += 1
                    report.latencies.append(now - t0)
                if self._window_open():
                    out.append(self._submit())
            elif ptype in (C.WORK_FAIL, C.WORK_EXCEPTION, C.ERROR):
                self._fail(f"server sent {_describe(ev)}")
                return
            # WORK_STATUS / WORK_DATA / WORK_WARNING: our workers send none; ignore them if a server does.
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        if not self.awaiting_handle and not self.running and not self._may_submit():
            self._finish(len(self.seen_handles))

# --- the background submitter ---------------------------------------------------------------------


class BackgroundSubmitter(_LoadPeer):
    """Pipelines SUBMIT_JOB_BG with up to ``window`` JOB_CREATED outstanding; counts the handles."""

    def __init__(self, funcs: list[bytes], tag: str, actor: int, payload: int, quota: int, window: int,
                 done: asyncio.Future[None]) -> None:
        self.prefixes = [f + b"\x00" for f in funcs]
        self.tag = tag
        self.payload = payload
        self.quota = quota
        self.window = window
        self.done = done
        self.report = ClientReport(actor)
        self.decoder = Decoder(accept=RES)
        self.outstanding = 0
        self.seen_handles: set[bytes] = set()
        self.transport: asyncio.Transport | None = None
        self.closing = False  # we closed it: not the server's doing

    def _submit_batch(self, count: int) -> bytes:
        out = []
        report = self.report
        for _ in range(count):
            seq = report.submitted
            unique = make_unique(self.tag, report.actor, seq)
            report.submitted += 1
            prefix = self.prefixes[seq % len(self.prefixes)]
            body = prefix + unique + b"\x00" + make_payload(unique, self.payload)
            out.append(pack(REQ, C.SUBMIT_JOB_BG, body))
        self.outstanding += count
        return b"".join(out)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._open(transport)
        transport.write(self._submit_batch(min(self.window, self.quota)))

    def data_received(self, data: bytes) -> None:
        try:
            events = self.decoder.feed(data)
        except Exception as exc:
            self._fail(f"undecodable stream from the server: {exc!r}")
            return
        created = 0
        for ev in events:
            if type(ev) is Packet and ev.ptype == C.JOB_CREATED:
                self.seen_handles.add(ev.args[0])
                created += 1
            else:
                self._fail(f"unexpected {_describe(ev)}")
                return
        self.outstanding -= created
        self.report.created += created
        report = self.report
        room = min(self.window - self.outstanding, self.quota - report.submitted)
        # Refill in chunks so that a write carries many packets, not one per JOB_CREATED.
        if room >= max(1, self.window // 4) or (room > 0 and self.outstanding == 0):
            assert self.transport is not None
            self.transport.write(self._submit_batch(room))
        if report.created >= self.quota:
            self._finish(len(self.seen_handles))

# --- the worker -----------------------------------------------------------------------------------


class Worker(_LoadPeer):
    """CAN_DO, then the GRAB_JOB_UNIQ / PRE_SLEEP / NOOP loop; answers WORK_COMPLETE with transform(data).

    In drain mode it stops at the first NO_JOB (the queue is empty: nothing new arrives during a drain) and,
    as it is the only checker of background jobs, verifies each job's data and keeps every unique it ran.
    """

    def __init__(self, funcs: list[bytes], actor: int, drain: bool, payload: int, ready: asyncio.Future[None],
                 done: asyncio.Future[None]) -> None:
        self.funcs = funcs
        self.func_set = frozenset(funcs)
        self.drain = drain
        self.payload = payload
        self.ready = ready
        self.done = done
        self.report = WorkerReport(actor)
        self.decoder = Decoder(accept=RES)
        self.transport: asyncio.Transport | None = None
        self.closing = False  # we closed it: not the server's doing
        self.grab = encode_request(C.GRAB_JOB_UNIQ)
        self.pre_sleep = encode_request(C.PRE_SLEEP)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._open(transport)
        transport.write(b"".join(encode_request(C.CAN_DO, f) for f in self.funcs) + self.grab)

    def _futures(self) -> tuple[asyncio.Future[None], ...]:
        return (self.ready, self.done)

    def data_received(self, data: bytes) -> None:
        out: list[bytes] = []
        report = self.report
        try:
            events = self.decoder.feed(data)
        except Exception as exc:
            self._fail(f"undecodable stream from the server: {exc!r}")
            return
        for ev in events:
            if type(ev) is not Packet:
                self._fail(f"unexpected event {_describe(ev)}")
                return
            ptype = ev.ptype
            if ptype == C.JOB_ASSIGN_UNIQ:
                handle, func, unique, job_data = ev.args
                if func not in self.func_set:
                    report.errors.append(f"assigned a job for {func!r}, which this worker never registered")
                if self.drain:
                    if job_data != make_payload(unique, self.payload):
                        report.errors.append(f"job {unique!r}: data corrupted in the queue")
                    report.uniques.append(unique)
                out.append(pack(REQ, C.WORK_COMPLETE, handle + b"\x00" + transform(unique, job_data)))
                out.append(self.grab)
                report.jobs += 1
            elif ptype == C.NO_JOB:
                if not self.ready.done():
                    self.ready.set_result(None)
                if self.drain:
                    report.finished = time.perf_counter()
                    if out and self.transport is not None:
                        self.transport.write(b"".join(out))
                        out = []
                    if not self.done.done():
                        self.done.set_result(None)
                    return
                out.append(self.pre_sleep)
            elif ptype == C.NOOP:
                out.append(self.grab)
            elif ptype == C.JOB_ASSIGN:
                self._fail("server answered GRAB_JOB_UNIQ with JOB_ASSIGN (no unique)")
                return
            else:
                self._fail(f"server sent {_describe(ev)}")
                return
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

# --- process entry points -------------------------------------------------------------------------


@dataclass
class Plan:
    """What one load asks of its processes; picklable (sent to forked children)."""

    port: int
    func: bytes
    tag: str
    mode: str  # "foreground" or "background"
    clients: int
    workers: int
    inflight: int
    payload: int
    jobs: int
    duration: float
    window: int = 1000
    functions: int = 1  # >1: jobs spread round-robin over this many functions, workers register them all
    client_procs: int = 1
    worker_procs: int = 1
    timeout: float = 120.0  # hard limit for the whole load
    serial_submits: bool = False  # foreground: one submit at a time awaits its JOB_CREATED (gear's shape)


def function_names(func: bytes, count: int) -> list[bytes]:
    """The functions of a load: ``func`` alone, or ``func-0`` .. ``func-(count-1)``."""
    if count <= 1:
        return [func]
    return [func + b"-%d" % i for i in range(count)]


def _split(items: int, parts: int, index: int) -> list[int]:
    return [i for i in range(items) if i % parts == index]


def _quota(plan: Plan, actor: int) -> int:
    base, extra = divmod(plan.jobs, plan.clients)
    return base + (1 if actor < extra else 0)


async def _connect(factory: Callable[[], asyncio.Protocol], port: int) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    for attempt in range(5):
        try:
            transport, _ = await loop.create_connection(factory, HOST, port)
            return transport
        except OSError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


async def _clients_async(plan: Plan, actors: list[int], start_at: float) -> list[ClientReport]:
    loop = asyncio.get_running_loop()
    delay = start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    stop_submitting_at = time.perf_counter() + plan.duration
    protocols: list[ForegroundClient | BackgroundSubmitter] = []
    transports: list[asyncio.Transport] = []
    futures: list[asyncio.Future[None]] = []
    for actor in actors:
        done: asyncio.Future[None] = loop.create_future()
        quota = _quota(plan, actor)
        proto: ForegroundClient | BackgroundSubmitter
        funcs = function_names(plan.func, plan.functions)
        if plan.mode == "foreground":
            proto = ForegroundClient(funcs, plan.tag, actor, plan.payload, quota, plan.inflight,
                                     stop_submitting_at, done, plan.serial_submits)
        else:
            proto = BackgroundSubmitter(funcs, plan.tag, actor, plan.payload, quota, plan.window, done)
        protocols.append(proto)
        futures.append(done)
        transports.append(await _connect(lambda p=proto: p, plan.port))  # type: ignore[misc]
    try:
        remaining = max(1.0, plan.timeout - plan.duration)
        _, pending = await asyncio.wait(futures, timeout=plan.duration + remaining)
        for proto, fut in zip(protocols, futures, strict=True):
            if fut in pending:
                r = proto.report
                r.errors.append(
                    f"timed out: submitted {r.submitted}, created {r.created}, completed {r.completed}"
                )
    finally:
        for proto in protocols:
            proto.closing = True
        for transport in transports:
            transport.close()
    return [p.report for p in protocols]


async def _workers_async(plan: Plan, actors: list[int], drain: bool, stop: Any, results: Any,
                         index: int) -> list[WorkerReport]:
    loop = asyncio.get_running_loop()
    protocols: list[Worker] = []
    transports: list[asyncio.Transport] = []
    deadline = time.monotonic() + plan.timeout
    try:
        for actor in actors:
            ready: asyncio.Future[None] = loop.create_future()
            done: asyncio.Future[None] = loop.create_future()
            proto = Worker(function_names(plan.func, plan.functions), actor, drain, plan.payload, ready, done)
            protocols.append(proto)
            transports.append(await _connect(lambda p=proto: p, plan.port))  # type: ignore[misc]
        if not drain:
            _, pending = await asyncio.wait([p.ready for p in protocols], timeout=20)
            for proto in protocols:
                proto.report.ready = proto.ready.done() and not proto.report.errors
            results.put(("ready", index, all(p.report.ready for p in protocols)))
            while not stop.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        else:
            _, pending = await asyncio.wait([p.done for p in protocols], timeout=plan.timeout)
            for proto in protocols:
                if not proto.done.done():
                    proto.report.errors.append(f"drain timed out after {proto.report.jobs} jobs")
    finally:
        for proto in protocols:
            proto.closing = True
        for transport in transports:
            transport.close()
    return [p.report for p in protocols]


def _child(kind: str, plan: Plan, actors: list[int], index: int, results: Any, stop: Any,
           start_at: float, drain: bool) -> None:
    try:
        if kind == "clients":
            reports: list[Any] = run_coroutine(_clients_async(plan, actors, start_at))
        else:
            reports = run_coroutine(_workers_async(plan, actors, drain, stop, results, index))
        results.put((kind, index, reports))
    except BaseException:
        results.put((kind, index, traceback.format_exc()))


# --- the parent side ------------------------------------------------------------------------------


@dataclass
class Phase:
    clients: list[ClientReport] = field(default_factory=list)
    workers: list[WorkerReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Harness:
    """Starts the client and worker processes of one load and always reaps them."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.ctx = mp.get_context("fork")
        self.results = self.ctx.Queue()
        self.stop = self.ctx.Event()
        self.procs: list[Any] = []
        self.deadline = time.monotonic() + plan.timeout + 30

    def spawn(self, kind: str, nprocs: int, actors: int, drain: bool = False, start_at: float = 0.0) -> int:
        nprocs = max(1, min(nprocs, actors))
        for index in range(nprocs):
            proc = self.ctx.Process(
                target=_child,
                args=(kind, self.plan, _split(actors, nprocs, index), index, self.results, self.stop,
                      start_at, drain),
                daemon=True,
            )
            proc.start()
            self.procs.append(proc)
        return nprocs

    def collect(self, phase: Phase, want: dict[str, int], timeout: float) -> None:
        """Wait for ``want[kind]`` messages of each kind, filling phase; errors for what never came."""
        end = min(time.monotonic() + timeout, self.deadline)
        while any(v > 0 for v in want.values()):
            left = end - time.monotonic()
            if left <= 0:
                phase.errors.append(f"timed out waiting for {want}")
                return
            try:
                kind, index, payload = self.results.get(timeout=min(left, 1.0))
            except queue_mod.Empty:
                if not any(p.is_alive() for p in self.procs) and self.results.empty():
                    phase.errors.append(f"load processes exited without reporting {want}")
                    return
                continue
            if kind not in want:
                phase.errors.append(f"unexpected message {kind} from process {index}")
                continue
            want[kind] -= 1
            if isinstance(payload, str):
                phase.errors.append(f"{kind} process {index} crashed:\n{payload}")
            elif kind == "ready":
                if not payload:
                    phase.errors.append(f"workers of process {index} never got ready (no NO_JOB)")
            elif kind == "clients":
                phase.clients.extend(payload)
            else:
                phase.workers.extend(payload)

    def close(self) -> None:
        self.stop.set()
        for proc in self.procs:
            proc.join(timeout=max(0.1, min(5.0, self.deadline - time.monotonic())))
        for proc in self.procs:
            if proc.is_alive():  # our own child, by its handle
                proc.kill()
                proc.join(timeout=5)
        self.results.close()
        self.results.join_thread()


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


@dataclass
class LoadOutcome:
    jobs: int
    seconds: float
    jobs_per_s: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    extra: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _errors_of(phase: Phase) -> list[str]:
    errors = list(phase.errors)
    for c in phase.clients:
        errors += [f"client {c.actor}: {e}" for e in c.errors[:5]]
    for w in phase.workers:
        errors += [f"worker {w.actor}: {e}" for e in w.errors[:5]]
    return errors


def run_foreground(plan: Plan) -> LoadOutcome:
    """Workers first (registered and asleep), then the clients; stop the workers once all clients reported."""
    harness = Harness(plan)
    phase = Phase()
    try:
        nworker = harness.spawn("workers", plan.worker_procs, plan.workers)
        harness.collect(phase, {"ready": nworker}, timeout=30)
        if phase.errors:
            return LoadOutcome(0, 0.0, 0.0, errors=_errors_of(phase))
        # A common start time lets the client processes begin together after their fork and connect.
        nclient = harness.spawn("clients", plan.client_procs, plan.clients, start_at=time.time() + 0.3)
        harness.collect(phase, {"clients": nclient}, timeout=plan.timeout)
        harness.stop.set()
        harness.collect(phase, {"workers": nworker}, timeout=15)
    finally:
        harness.close()
    errors = _errors_of(phase)
    clients = phase.clients
    completed = sum(c.completed for c in clients)
    submitted = sum(c.submitted for c in clients)
    if len(clients) == plan.clients:
        if completed != submitted:
            errors.append(f"{submitted} jobs submitted but {completed} completed correctly")
        handles = sum(c.handles for c in clients)
        if handles != submitted:
            errors.append(f"{submitted} jobs submitted but {handles} distinct handles given")
        worked = sum(w.jobs for w in phase.workers)
        if len(phase.workers) == plan.workers and worked != submitted:
            errors.append(f"{submitted} jobs submitted but the workers ran {worked}")
    if not clients or completed == 0:
        errors.append("no job completed")
        return LoadOutcome(0, 0.0, 0.0, errors=errors)
    start = min(c.started for c in clients)
    end = max(c.finished for c in clients if c.finished) if any(c.finished for c in clients) else start
    seconds = max(end - start, 1e-9)
    latencies = sorted(x for c in clients for x in c.latencies)
    return LoadOutcome(
        jobs=completed, seconds=seconds, jobs_per_s=completed / seconds,
        p50_ms=percentile(latencies, 0.50) * 1000, p99_ms=percentile(latencies, 0.99) * 1000,
        errors=errors,
    )


def run_background(plan: Plan, between: Callable[[], dict[str, float]] | None = None) -> LoadOutcome:
    """Submit every job with no worker connected, then drain with the workers; check every unique ran once.

    ``between`` runs after the submits and before the drain (to measure memory of the full queue, say); the
    numbers it returns are added to the outcome's extras.
    """
    harness = Harness(plan)
    submit = Phase()
    drain = Phase()
    extra: dict[str, float] = {}
    try:
        nclient = harness.spawn("clients", plan.client_procs, plan.clients)
        harness.collect(submit, {"clients": nclient}, timeout=plan.timeout)
        if not submit.errors and between is not None:
            extra.update(between())
        if not _errors_of(submit):
            nworker = harness.spawn("workers", plan.worker_procs, plan.workers, drain=True)
            harness.collect(drain, {"workers": nworker}, timeout=plan.timeout)
    finally:
        harness.close()
    errors = _errors_of(submit) + _errors_of(drain)
    created = sum(c.created for c in submit.clients)
    if len(submit.clients) == plan.clients:
        if created != plan.jobs:
            errors.append(f"{plan.jobs} background jobs submitted, {created} JOB_CREATED")
        handles = sum(c.handles for c in submit.clients)
        if handles != created:
            errors.append(f"{created} JOB_CREATED but {handles} distinct handles")
    if errors or not submit.clients:
        return LoadOutcome(created, 0.0, 0.0, extra=extra, errors=errors or ["no submitter reported"])
    sub_start = min(c.started for c in submit.clients)
    sub_end = max(c.finished for c in submit.clients)
    submit_s = max(sub_end - sub_start, 1e-9)
    ran = [u for w in drain.workers for u in w.uniques]
    expected = {make_unique(plan.tag, actor, seq) for actor in range(plan.clients)
                for seq in range(_quota(plan, actor))}
    ran_set = set(ran)
    if len(ran) != len(ran_set):
        errors.append(f"{len(ran) - len(ran_set)} jobs ran more than once")
    if ran_set != expected:
        missing = expected - ran_set
        stray = ran_set - expected
        errors.append(f"drain: {len(missing)} jobs never ran, {len(stray)} unknown jobs ran")
    drain_start = min(w.started for w in drain.workers) if drain.workers else 0.0
    drain_end = max(w.finished for w in drain.workers) if drain.workers else 0.0
    drain_s = max(drain_end - drain_start, 1e-9)
    extra.update({"submit_per_s": created / submit_s, "drain_per_s": len(ran_set) / drain_s,
                  "submit_s": submit_s, "drain_s": drain_s})
    return LoadOutcome(jobs=created, seconds=submit_s + drain_s, jobs_per_s=extra["submit_per_s"],
                       extra=extra, errors=errors)


@contextlib.contextmanager
def idle_connections(port: int, count: int, timeout: float = 60.0) -> Iterator[list[socket.socket]]:
    """Hold ``count`` connections open and silent; each answered one GET_STATUS first (geard has no ECHO)."""
    socks: list[socket.socket] = []
    probe = encode_request(C.GET_STATUS, b"H:idle:0")
    deadline = time.monotonic() + timeout
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                raise TimeoutError(f"opened only {len(socks)} of {count} idle connections in {timeout:g} s")
            sock = socket.create_connection((HOST, port), timeout=10)
            socks.append(sock)
            sock.sendall(probe)
            decoder = Decoder(accept=RES)
            events: list[Any] = []
            while not events:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("server closed an idle connection at once")
                events = decoder.feed(chunk)
            if not (isinstance(events[0], Packet) and events[0].ptype == C.STATUS_RES):
                raise ConnectionError(f"idle connection: expected STATUS_RES, got {_describe(events[0])}")
        yield socks
    finally:
        for sock in socks:
            sock.close()


def new_tag(label: str) -> str:
    """A run-unique prefix for uniques and function names, so loads never see each other's jobs."""
    return f"{label}{os.getpid() % 10000}{int(time.time() * 1000) % 100000}"
