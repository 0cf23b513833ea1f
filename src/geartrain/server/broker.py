"""The job broker: an I/O-free state machine over functions, queues, jobs, workers and clients.

Packets come in through Broker.handle(peer, packet); answers are appended to peers' output lists. Every
operation is O(1) per job (dicts and deques; removals are lazy), so nothing scans all jobs or all workers.
"""

from __future__ import annotations

import heapq
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

from ..compiled import mypyc_attr
from ..protocol import constants as C
from ..protocol.codec import pack, pack_header
from .cron import CronError, CronSpec
from .stats import SHORTEST, FunctionStats, Stats

log = logging.getLogger("geartrain.broker")

RES: Final = C.RES
PRIORITIES: Final = (C.PRIORITY_HIGH, C.PRIORITY_NORMAL, C.PRIORITY_LOW)

# Job states.
QUEUED: Final = 0
RUNNING: Final = 1
SCHEDULED: Final = 2  # an epoch job waiting for its time
DONE: Final = 3
TIMER: Final = 4  # a callback timer (see Broker.add_timer)
STORING: Final = 5  # a durable job whose row is not committed yet: queued by stored(), or dropped by refuse()
SPILLED: Final = 6  # queued, but its data is only in the store (spill.py): materialized, waiting to be loaded

NO_CLIENTS: Final[tuple[()]] = ()
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z

_NOOP: Final = pack(RES, C.NOOP, b"")
_NO_JOB: Final = pack(RES, C.NO_JOB, b"")


#: Payloads at least this large travel as their own output chunk: never copied into a joined packet.
LARGE: Final = 16 * 1024


def frame(ptype: int, head: bytes, data: bytes = b"") -> tuple[bytes, ...]:
    """A response packet as output chunks: its header and leading arguments (`head`, NUL-terminated), then data."""
    header = pack_header(RES, ptype, len(head) + len(data))
    if len(data) >= LARGE:
        return (header + head, data)
    return (header + head + data,)


def error_packet(code: bytes, message: str) -> bytes:
    return pack(RES, C.ERROR, code + b"\x00" + message.encode("utf-8", "replace"))


#: gearmand's answer to a submit past a function's maxqueue, word for word.
QUEUE_FULL = error_packet(b"QUEUE_ERROR", "Job queue is full")


class Peer:
    """One connection as the broker sees it: what it may do, what it waits on, what it runs."""

    __slots__ = (
        "id", "address", "out", "large", "broker", "client_id", "abilities", "sleeping", "noop_sent",
        "woken_for", "exceptions", "running", "waiting", "subject", "closed", "last_exception", "conn", "held",
        "admin", "require_worker",
    )

    def __init__(self, broker: Broker, peer_id: int, address: str = "-", subject: str | None = None) -> None:
        self.broker = broker
        self.id = peer_id
        self.address = address
        self.subject = subject
        #: Output chunks waiting for the transport's flush, in order.
        self.out: list[bytes] = []
        #: Whether `out` holds a large payload chunk (then it is written without joining).
        self.large = False
        self.client_id = b"-"
        #: {Function: timeout in seconds or 0}
        self.abilities: dict[Function, float] = {}
        self.sleeping = False
        self.noop_sent = False
        self.woken_for: Function | None = None
        self.exceptions = False
        #: Jobs assigned to this worker connection, by handle.
        self.running: dict[bytes, Job] = {}
        #: Foreground jobs this client waits on.
        self.waiting: set[Job] = set()
        self.closed = False
        self.last_exception: bytes | None = None
        #: The transport's own handle on this connection.
        self.conn: Any = None
        #: Its output waits: the transport is writing it a long listing (see transport.GearmanProtocol._stream).
        self.held = False
        #: It sent an admin command (its connection kind is "admin" unless it registers a function).
        self.admin = False
        #: It sent OPTION_REQ require_worker: its submits to a function without workers are refused.
        self.require_worker = False

    @property
    def may_wait(self) -> bool:
        """Whether its requests may wait for a store read (spill.Confirming): a Gearman connection's may, as its
        transport handles them again once read; others (the HTTP API's submits) are answered at once."""
        return getattr(self.conn, "may_wait", False)

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.out:
            self.broker.dirty.append(self)
        self.out.append(data)

    def send_all(self, chunks: tuple[bytes, ...]) -> None:
        """Queue the chunks of one packet (see frame())."""
        if self.closed:
            return
        if not self.out:
            self.broker.dirty.append(self)
        if len(chunks) > 1:
            self.large = True
        self.out.extend(chunks)

    def take_output(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        self.large = False
        return data

    def take_chunks(self) -> list[bytes]:
        """The output as few chunks as possible without copying large payloads."""
        out = self.out
        self.out = []
        if self.large:
            self.large = False
            return out
        return [out[0] if len(out) == 1 else b"".join(out)]

    def __repr__(self) -> str:
        return f"<Peer {self.id} {self.address}>"


class Function:
    """One function name: its three priority queues, its workers and its unique index."""

    __slots__ = ("name", "queues", "counts", "running", "jobs", "workers", "sleepers", "uniques", "max_queue",
                 "stats", "spill")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.queues: tuple[deque[Job], deque[Job], deque[Job]] = (deque(), deque(), deque())
        #: Jobs really queued per priority (the deques may also hold stale entries, skipped when popped).
        self.counts = [0, 0, 0]
        self.running = 0
        #: Live jobs of this function in any state (queued, running, waiting for their epoch).
        self.jobs = 0
        #: Workers that registered this function (ordered set).
        self.workers: dict[Peer, None] = {}
        #: Workers that may be asleep waiting for this function (entries may be stale).
        self.sleepers: dict[Peer, None] = {}
        self.uniques: dict[bytes, Job] = {}
        #: Maximum queued jobs per priority; 0 is unlimited.
        self.max_queue = [0, 0, 0]
        #: This name's counters, kept by the broker's Stats across forget and re-create; None when not counting.
        self.stats: FunctionStats | None = None
        #: Jobs queued only in the store, per priority (spill.SpillQueue x 3), or None (all in memory).
        self.spill: Any = None

    @property
    def queued(self) -> int:
        """Queued jobs, in memory and spilled."""
        counts = self.counts
        if self.spill is None:
            return counts[0] + counts[1] + counts[2]
        return sum(counts) + sum(queue.count for queue in self.spill)

    def waiting(self, priority: int) -> int:
        """Queued jobs of one priority, in memory and spilled (maxqueue, prioritystatus)."""
        if self.spill is None:
            return self.counts[priority]
        return self.counts[priority] + self.spill[priority].count


class Job:
    """One job: what to run, who waits on it, who runs it."""

    __slots__ = (
        "handle", "function", "unique", "key", "data", "priority", "background", "clients", "worker",
        "numerator", "denominator", "retries", "when", "reducer", "state", "store_ref", "deadline", "stamp",
    )

    def __init__(
        self, handle: bytes, function: Function, unique: bytes, key: bytes, data: bytes, priority: int,
        background: bool, when: float = 0.0, reducer: bytes = b"",
    ) -> None:
        self.handle = handle
        self.function = function
        self.unique = unique
        self.key = key
        self.data = data
        self.priority = priority
        self.background = background
        #: Clients waiting on the job: a shared empty tuple until one joins (saves a list per background job).
        self.clients: list[Peer] | tuple[()] = NO_CLIENTS
        self.worker: Peer | None = None
        self.numerator = b"0"
        self.denominator = b"0"
        self.retries = 0
        self.when = when
        self.reducer = reducer
        self.state = QUEUED
        self.store_ref: Any = None
        self.deadline = 0.0
        #: When the job was queued, then when it started (kept by Stats for wait and run times).
        self.stamp = 0.0


class Timer:
    """A callback the broker runs at `when` from run_timers(); cancel() disarms it."""

    __slots__ = ("state", "when", "callback")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.state = TIMER
        self.when = when
        self.callback = callback

    def cancel(self) -> None:
        self.state = DONE


#: gear.Server's own server model subclasses the broker (gear/server_engine.py), also when it is compiled.
@mypyc_attr(allow_interpreted_subclasses=True)
class Broker:
    """The whole job server state and its packet handlers."""

    #: Whether packets of types the protocol does not define reach handle() (gear.Server subclasses add some).
    decode_unknown_types = False

    def __init__(
        self,
        handle_prefix: bytes = b"H:geartrain",
        *,
        job_retries: int = 0,
        worker_wakeup: int = 0,
        max_unique_length: int = 64,
        max_function_length: int = 512,
        max_queued_bytes: int = 0,
        max_queued_jobs: int = 0,
        max_idle_functions: int = 0,
        exceptions: bool = False,
        clock: Callable[[], float] = time.time,
        store: Any = None,
        acl: Any = None,
    ) -> None:
        self.functions: dict[bytes, Function] = {}
        self.jobs: dict[bytes, Job] = {}
        #: Every job with a non-empty unique, for GET_STATUS_UNIQUE.
        self.by_unique: dict[bytes, Job] = {}
        self.peers: dict[int, Peer] = {}
        #: Peers with output to flush; the transport drains it once per loop pass.
        self.dirty: list[Peer] = []
        #: Functions with queued jobs per priority, in round-robin order.
        self.ready: tuple[dict[Function, None], dict[Function, None], dict[Function, None]] = ({}, {}, {})
        self.timers: list[tuple[float, int, Any]] = []
        self.prefix = handle_prefix + b":"
        # Handles never repeat across restarts: the counter starts at the start time in microseconds.
        self.counter = int(clock() * 1_000_000)
        self.seq = 0
        self.job_retries = job_retries
        self.worker_wakeup = worker_wakeup
        self.max_unique_length = max_unique_length
        self.max_function_length = max_function_length
        self.max_queued_bytes = max_queued_bytes
        self.queued_bytes = 0
        #: Jobs held at most (in memory and spilled, any state); submits past it get QUEUE_ERROR. 0: no limit.
        self.max_queued_jobs = max_queued_jobs
        #: Spilling to the store (spill.Spill attaches itself), or None: every queued job stays in memory.
        self.spill: Any = None
        #: Functions with no job and no worker, longest idle first (entries may be stale); 0: no limit.
        self.idle: dict[bytes, Function] = {}
        self.max_idle_functions = max_idle_functions
        #: Every connection starts with the exceptions option set (gearmand's --exceptions; gear's Server).
        self.exceptions = exceptions
        self.clock = clock
        self.store = store
        self.acl = acl
        self.on_timer_change: Callable[[float], None] | None = None
        #: Retries, dead letters, kept results, schedules (geartrain.server.lifecycle.Lifecycle), when attached.
        self.lifecycle: Any = None
        #: Whether every job that ends must reach lifecycle.ended() (it keeps results or counts attempts); the
        #: lifecycle sets it, so that a server with neither makes no call per job.
        self.lifecycle_ends = False
        #: Counters behind metrics and the dashboard (geartrain.server.stats); None turns counting off.
        self.stats: Stats | None = Stats(clock)
        #: (function, unique) -> handle for background jobs with a unique (a cluster's nodes share it).
        self.unique_handle: Callable[[bytes, bytes], bytes] | None = None
        self.handlers: dict[int, Callable[[Peer, tuple[bytes, ...]], None]] = {
            C.CAN_DO: self._can_do,
            C.CAN_DO_TIMEOUT: self._can_do_timeout,
            C.CANT_DO: self._cant_do,
            C.RESET_ABILITIES: self._reset_abilities,
            C.PRE_SLEEP: self._pre_sleep,
            C.GRAB_JOB: self._grab_job,
            C.GRAB_JOB_UNIQ: self._grab_job_uniq,
            C.GRAB_JOB_ALL: self._grab_job_all,
            C.WORK_STATUS: self._work_status,
            C.WORK_COMPLETE: self._work_complete,
            C.WORK_FAIL: self._work_fail,
            C.WORK_EXCEPTION: self._work_exception,
            C.WORK_DATA: self._work_data,
            C.WORK_WARNING: self._work_warning,
            C.GET_STATUS: self._get_status,
            C.GET_STATUS_UNIQUE: self._get_status_unique,
            C.ECHO_REQ: self._echo,
            C.SET_CLIENT_ID: self._set_client_id,
            C.OPTION_REQ: self._option,
            C.ALL_YOURS: self._all_yours,
            C.SUBMIT_JOB_SCHED: self._submit_sched,
            C.SUBMIT_JOB_EPOCH: self._submit_epoch,
            C.SUBMIT_REDUCE_JOB: self._make_submit_reduce(False),
            C.SUBMIT_REDUCE_JOB_BACKGROUND: self._make_submit_reduce(True),
        }
        for ptype in (C.SUBMIT_JOB, C.SUBMIT_JOB_BG, C.SUBMIT_JOB_HIGH, C.SUBMIT_JOB_HIGH_BG,
                      C.SUBMIT_JOB_LOW, C.SUBMIT_JOB_LOW_BG):
            self.handlers[ptype] = self._make_submit(*C.SUBMIT_TYPES[ptype])

    # ----------------------------------------------------------------- connections

    def connect(self, peer_id: int, address: str = "-", subject: str | None = None) -> Peer:
        peer = Peer(self, peer_id, address, subject)
        peer.exceptions = self.exceptions
        self.peers[peer_id] = peer
        return peer

    def disconnect(self, peer: Peer) -> None:
        """A connection went away: requeue what it ran, drop what only it waited on."""
        if peer.closed:
            return
        peer.closed = True
        peer.out.clear()
        self.peers.pop(peer.id, None)
        for job in list(peer.running.values()):
            job.worker = None
            self._requeue(job, "worker disconnected")
        peer.running.clear()
        for function in peer.abilities:
            function.workers.pop(peer, None)
            function.sleepers.pop(peer, None)
            self._maybe_forget(function)
        peer.abilities.clear()
        for job in peer.waiting:
            if peer in job.clients:
                # Every entry: a connection that submitted one unique N times is N clients (see submit()).
                job.clients = [client for client in job.clients if client is not peer] or NO_CLIENTS
            if not job.clients and not job.background and job.state == QUEUED:
                self._drop_queued(job)
                self._end(job)
                log.debug("dropped job %r: every client left before it ran", job.handle)
        peer.waiting.clear()

    def handle(self, peer: Peer, ptype: int, args: tuple[bytes, ...]) -> None:
        """Handle one request packet from a peer."""
        handler = self.handlers.get(ptype)
        if handler is None:
            name = C.TYPE_NAMES.get(ptype, str(ptype))
            peer.send(error_packet(b"INVALID_COMMAND", f"{name} is not a request a server takes"))
            return
        handler(peer, args)

    # ----------------------------------------------------------------- functions

    def function(self, name: bytes) -> Function:
        function = self.functions.get(name)
        if function is None:
            function = self.functions[name] = Function(name)
            if self.stats is not None:
                function.stats = self.stats.of(name)
        return function

    def _maybe_forget(self, function: Function) -> None:
        """Note a function that has no job and no worker left. It stays listed (`status` shows `fn 0 0 0` and
        `drop function` finds it, as with gearmand); past max_idle_functions the longest idle are forgotten,
        which keeps memory bounded under churn of names (about 3 KB each)."""
        if function.jobs or function.workers:
            return
        idle = self.idle
        idle.pop(function.name, None)
        idle[function.name] = function
        limit = self.max_idle_functions
        while limit and len(idle) > limit:
            name = next(iter(idle))
            oldest = idle.pop(name)
            # Entries of functions busy again are stale: skipped, they come back when idle again.
            if not oldest.jobs and not oldest.workers and oldest.max_queue == [0, 0, 0] \
                    and self.functions.get(name) is oldest:
                del self.functions[name]

    def name_problem(self, name: bytes) -> tuple[bytes, str] | None:
        """Why a new function name is refused (error code, message), or None. Control characters are refused
        because names are written into admin listings, where they could forge lines."""
        if not name:
            return b"INVALID_FUNCTION_NAME", "function name is empty"
        if len(name) > self.max_function_length:
            return b"ARGUMENT_TOO_LARGE", f"function name of {len(name)} bytes exceeds the limit of " \
                                          f"{self.max_function_length}"
        if _CONTROL.search(name):
            return b"INVALID_FUNCTION_NAME", f"function name {name[:64]!r} holds control characters"
        return None

    def _check_name(self, peer: Peer, name: bytes) -> bool:
        if name in self.functions:
            return True  # validated when it was created
        problem = self.name_problem(name)
        if problem is not None:
            peer.send(error_packet(*problem))
            return False
        return True

    # ----------------------------------------------------------------- worker registration

    def _register(self, peer: Peer, name: bytes, timeout: float) -> None:
        if not self._check_name(peer, name):
            return
        if self.acl is not None and not self.acl.canRegister(peer.subject, name):
            log.info("%r (%s) may not register %r", peer, peer.subject, name)
            if self.stats is not None:
                self.stats.deny("register")
            peer.send(error_packet(b"PERMISSION_DENIED", f"{peer.subject} may not register {name!r}"))
            return
        function = self.function(name)
        peer.abilities[function] = timeout
        function.workers[peer] = None
        if peer.sleeping and not peer.noop_sent:
            if function.queued:
                self._wake(peer, function)
            else:
                function.sleepers[peer] = None  # asleep already: wake it for this function too

    def _can_do(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        self._register(peer, args[0], 0.0)

    def _can_do_timeout(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        try:
            milliseconds = int(args[1])
        except ValueError:
            milliseconds = -1
        if not 0 <= milliseconds < 2**32:
            peer.send(error_packet(b"INVALID_ARGUMENT",
                                   f"CAN_DO_TIMEOUT timeout {args[1][:40]!r} is no millisecond count below 2**32"))
            return
        # Milliseconds, at least one second, as gearmand; 0 or less means no timeout.
        self._register(peer, args[0], max(milliseconds / 1000.0, 1.0) if milliseconds > 0 else 0.0)

    def _unregister(self, peer: Peer, function: Function) -> None:
        peer.abilities.pop(function, None)
        function.workers.pop(peer, None)
        function.sleepers.pop(peer, None)
        self._maybe_forget(function)

    def _cant_do(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        # Jobs this worker runs stay assigned to it: its result is still accepted (gearmand loses it).
        function = self.functions.get(args[0])
        if function is not None and function in peer.abilities:
            self._unregister(peer, function)

    def _reset_abilities(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        for function in list(peer.abilities):
            self._unregister(peer, function)

    # ----------------------------------------------------------------- sleep and wake

    def _has_work(self, peer: Peer) -> Function | None:
        """A function this worker can do that has a queued job, or None (cost: min(abilities, ready))."""
        abilities = peer.abilities
        for ready in self.ready:
            if not ready:
                continue
            if len(ready) <= len(abilities):
                for function in ready:
                    if function in abilities:
                        return function
            else:
                for function in abilities:
                    if function in ready:
                        return function
        return None

    def _pre_sleep(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        peer.sleeping = True
        peer.noop_sent = False
        function = self._has_work(peer)
        if function is not None:
            self._wake(peer, function)
            return
        for function in peer.abilities:
            function.sleepers[peer] = None

    def _wake(self, peer: Peer, function: Function) -> None:
        peer.noop_sent = True
        peer.woken_for = function
        peer.send(_NOOP)

    def _wake_sleepers(self, function: Function, count: int) -> None:
        """Send NOOP to up to `count` sleeping workers of the function (0: all of them)."""
        sleepers = function.sleepers
        woken = 0
        while sleepers:
            peer = next(iter(sleepers))
            del sleepers[peer]
            if peer.sleeping and not peer.noop_sent and not peer.closed:
                self._wake(peer, function)
                woken += 1
                if count and woken >= count:
                    return

    # ----------------------------------------------------------------- submitting

    def _make_submit(self, background: bool, priority: int) -> Callable[[Peer, tuple[bytes, ...]], None]:
        def submit(peer: Peer, args: tuple[bytes, ...]) -> None:
            self.submit(peer, args[0], args[1], args[2], priority, background)

        return submit

    def _submit_epoch(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        try:
            epoch = int(args[2])
        except ValueError:
            epoch = -1
        if not 0 <= epoch <= MAX_EPOCH:
            peer.send(error_packet(b"INVALID_ARGUMENT", f"epoch {args[2][:40]!r} is no time in seconds up to 9999"))
            return
        when = float(epoch)
        self.submit(peer, args[0], args[1], args[3], C.PRIORITY_NORMAL, True, when=when)

    def _make_submit_reduce(self, background: bool) -> Callable[[Peer, tuple[bytes, ...]], None]:
        # Accepted and run as an ordinary job; the reducer name travels to GRAB_JOB_ALL workers.
        def submit(peer: Peer, args: tuple[bytes, ...]) -> None:
            self.submit(peer, args[0], args[1], args[4], C.PRIORITY_NORMAL, background, reducer=args[2])

        return submit

    def _submit_sched(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        """A background job for the next time the five cron fields match (empty is any), see cron.py."""
        try:
            spec = CronSpec.parse([field.decode("ascii", "replace") for field in args[2:7]])
        except CronError as exc:
            peer.send(error_packet(b"INVALID_ARGUMENT", f"SUBMIT_JOB_SCHED {exc}"))
            return
        when = spec.next_after(self.clock())
        self.submit(peer, args[0], args[1], args[7], C.PRIORITY_NORMAL, True, when=when or 0.0)

    def submit(
        self, peer: Peer | None, name: bytes, unique: bytes, data: bytes, priority: int, background: bool,
        when: float = 0.0, reducer: bytes = b"",
    ) -> Job | None:
        """Create or join a job and answer JOB_CREATED (or ERROR) to the submitting peer."""
        if peer is not None:
            if name not in self.functions and not self._check_name(peer, name):
                self._rejected("invalid")
                return None
            if len(unique) > self.max_unique_length:
                self._rejected("limit")
                peer.send(error_packet(
                    b"ARGUMENT_TOO_LARGE",
                    f"unique of {len(unique)} bytes exceeds the limit of {self.max_unique_length}"))
                return None
            if self.acl is not None and not self.acl.canInvoke(peer.subject, name):
                log.info("%r (%s) may not invoke %r", peer, peer.subject, name)
                self._rejected("acl")
                peer.send(error_packet(b"PERMISSION_DENIED", f"{peer.subject} may not invoke {name!r}"))
                return None
            if peer.require_worker:
                known = self.functions.get(name)
                if known is None or not known.workers:
                    peer.send(error_packet(b"NO_WORKER", f"no worker has registered function {name!r}"))
                    return None
        function = self.functions.get(name) or self.function(name)
        key = data if unique == b"-" else unique
        if key:
            job = function.uniques.get(key)
            if job is None and function.spill is not None:
                job = self.spill.join(function, key, peer)
            if job is not None:
                if peer is not None:
                    if not background:
                        # Once per submit, even from a connection that waits on the job already: gearmand
                        # answers each submit with its own JOB_CREATED and WORK_* packets, and libgearman
                        # clients that add one unique twice wait for both.
                        self._add_client(job, peer)
                    self._created(peer, job)
                return job
        if peer is not None:
            limit = function.max_queue[priority]
            if limit > 0 and function.waiting(priority) >= limit:
                peer.send(QUEUE_FULL)  # gearmand's words
                log.info("refused a job of %r: its maxqueue of %d is reached", name, limit)
                self._rejected("queue_full")
                self._maybe_forget(function)
                return None
            if self.max_queued_jobs and self.job_count() >= self.max_queued_jobs:
                peer.send(error_packet(b"QUEUE_ERROR", "Job queue is full: the server holds its maximum of "
                                                       f"{self.max_queued_jobs} jobs"))
                log.warning("refused a job of %r: --max-queued-jobs %d reached", name, self.max_queued_jobs)
                self._rejected("limit")
                self._maybe_forget(function)
                return None
            if self.max_queued_bytes and self.queued_bytes + len(data) > self.max_queued_bytes:
                peer.send(error_packet(b"QUEUE_ERROR", "the server holds its maximum of queued bytes"))
                log.warning("refused a job of %r: queued bytes limit reached", name)
                self._rejected("limit")
                self._maybe_forget(function)
                return None
        if background and key and self.unique_handle is not None:
            handle = self.unique_handle(name, key)
        else:
            self.counter += 1
            handle = b"%s%d" % (self.prefix, self.counter)
        job = Job(handle, function, unique, key, data, priority, background, when, reducer)
        self.jobs[handle] = job
        stats, counters = self.stats, function.stats
        if stats is not None and counters is not None:  # counted inline: see stats.py, "job events"
            clock = stats.clock
            job.stamp = clock()
            if background:
                counters.background += 1
            else:
                counters.foreground += 1
        function.jobs += 1
        self.queued_bytes += len(data)
        if key:
            function.uniques[key] = job
            self.by_unique[unique] = job
        if background and self.store is not None:
            # Durable: no worker sees it, and its JOB_CREATED waits, until its row is committed (see store/).
            job.store_ref = self.store.add(job, peer)  # and holds the JOB_CREATED queued below
            job.state = STORING
        elif peer is not None and not background:
            self._add_client(job, peer)
        if peer is not None:
            peer.send(pack_header(RES, C.JOB_CREATED, len(handle)) + handle)
        if job.state != STORING:
            self._queue(job)
        return job

    def stored(self, job: Job) -> None:
        """The store committed the job's row: queue it (or wait for its time), or leave it only in the store
        when its queue is full in memory (spill.py)."""
        if job.state == STORING:
            if self.spill is not None and not (job.when and job.when > self.clock()) and self.spill.take(job):
                return
            self._queue(job)

    def job_count(self) -> int:
        """Jobs the server holds (queued, scheduled, running, spilled)."""
        return len(self.jobs) + (self.spill.total if self.spill is not None else 0)

    def refuse(self, job: Job) -> bool:
        """The store could not write the job's row: it never runs; clients that joined it get WORK_FAIL.
        False when the job had ended already (cancelled while it was being stored)."""
        if job.state != STORING:
            return False
        job.store_ref = None
        self._fail_clients(job)
        job.state = DONE
        self._end(job)
        return True

    def _queue(self, job: Job) -> None:
        when = job.when
        if when and when > self.clock():
            self._schedule(job)
        else:
            self._enqueue(job)

    def _rejected(self, reason: str) -> None:
        if self.stats is not None:
            self.stats.reject(reason)
            if reason == "acl":
                self.stats.deny("invoke")

    @staticmethod
    def _add_client(job: Job, peer: Peer) -> None:
        if job.clients is NO_CLIENTS:
            job.clients = [peer]
        else:
            job.clients.append(peer)  # type: ignore[union-attr]
        peer.waiting.add(job)

    def _created(self, peer: Peer, job: Job) -> None:
        if job.state == STORING and self.store is not None:
            self.store.hold(peer, job)
        peer.send(pack(RES, C.JOB_CREATED, job.handle))

    def _schedule(self, job: Job) -> None:
        job.state = SCHEDULED
        self._push_timer(job.when, job)

    def _push_timer(self, when: float, item: Job | Timer) -> None:
        self.seq += 1
        heapq.heappush(self.timers, (when, self.seq, item))
        if self.on_timer_change is not None and self.timers[0][2] is item:
            self.on_timer_change(when)

    def add_timer(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run callback from run_timers() once the clock reaches `when`."""
        timer = Timer(when, callback)
        self._push_timer(when, timer)
        return timer

    def _enqueue(self, job: Job, tail: bool = True) -> None:
        job.state = QUEUED
        function = job.function
        priority = job.priority
        function.queues[priority].append(job)
        function.counts[priority] += 1
        self.ready[priority][function] = None
        if function.sleepers:
            self._wake_sleepers(function, self.worker_wakeup or 1)

    def _drop_queued(self, job: Job) -> None:
        """Take a queued or scheduled job out of the counts; its deque entry is skipped later."""
        if job.state == QUEUED:
            function = job.function
            function.counts[job.priority] -= 1
            if not function.counts[job.priority]:
                self.ready[job.priority].pop(function, None)
                function.queues[job.priority].clear()
            if function.spill is not None:
                self.spill.drained(function, job.priority)
        elif job.state == SPILLED:
            self.spill.discard(job)
        job.state = DONE

    # ----------------------------------------------------------------- timers

    def next_timer(self) -> float | None:
        """When the broker next needs run_timers() (epoch jobs and CAN_DO_TIMEOUT deadlines)."""
        return self.timers[0][0] if self.timers else None

    def run_timers(self) -> None:
        now = self.clock()
        timers = self.timers
        while timers and timers[0][0] <= now:
            when, _, job = heapq.heappop(timers)
            if job.state == SCHEDULED and job.when == when:
                self._enqueue(job)
            elif job.state == RUNNING and job.deadline == when and job.worker is not None:
                worker = job.worker
                worker.running.pop(job.handle, None)
                job.worker = None
                log.info("job %r ran past its CAN_DO_TIMEOUT on %r: requeued", job.handle, worker)
                self._requeue(job, "timed out", "timeout")
            elif job.state == TIMER:
                job.state = DONE
                job.callback()

    # ----------------------------------------------------------------- grabbing

    def _grab(self, peer: Peer) -> Job | None:
        peer.sleeping = False
        peer.noop_sent = False
        woken_for, peer.woken_for = peer.woken_for, None
        while True:
            function = self._has_work(peer)
            if function is None:
                return None
            job = self._pop(function)
            if job is not None:
                break
        job.state = RUNNING
        job.worker = peer
        peer.running[job.handle] = job
        function.running += 1
        stats, counters = self.stats, function.stats
        if stats is not None and counters is not None:  # its queue wait ends, its run begins (stats.py, "job events")
            clock = stats.clock
            now = clock()
            wait = now - job.stamp
            job.stamp = now
            histogram = counters.wait
            if wait <= SHORTEST:
                histogram.first += 1
            else:
                histogram.buckets[histogram.last if histogram.lo < wait <= histogram.hi
                                  else histogram.bucket(wait)] += 1
            histogram.total += wait
        timeout = peer.abilities.get(function)
        if timeout:
            job.deadline = self.clock() + timeout
            self._push_timer(job.deadline, job)
        if function.queued and function.sleepers:
            self._wake_sleepers(function, 1)
        if woken_for is not None and woken_for is not function and woken_for.queued and woken_for.sleepers:
            self._wake_sleepers(woken_for, 1)
        return job

    def _pop(self, function: Function) -> Job | None:
        for priority in PRIORITIES:
            if function.counts[priority]:
                queue = function.queues[priority]
                ready = self.ready[priority]
                while queue:
                    job = queue.popleft()
                    if job.state == QUEUED:
                        function.counts[priority] -= 1
                        if function in ready:  # `in` and `del`: compiled, no method call (so in _off_worker, _end)
                            del ready[function]
                        if function.counts[priority]:
                            ready[function] = None  # round robin: to the back of the line
                        if function.spill is not None:
                            self.spill.drained(function, priority)
                        return job
                # Counts said queued but only stale entries were left: repair.
                function.counts[priority] = 0
                ready.pop(function, None)
            if function.spill is not None and function.spill[priority].count:
                # Jobs of this priority are being read back from the store: none of a lower one goes first.
                self.spill.block(function, priority)
                return None
        return None

    def _grab_job(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        job = self._grab(peer)
        if job is None:
            peer.send(_NO_JOB)
        else:
            peer.send_all(frame(C.JOB_ASSIGN, job.handle + b"\x00" + job.function.name + b"\x00", job.data))

    def _grab_job_uniq(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        job = self._grab(peer)
        if job is None:
            peer.send(_NO_JOB)
        else:
            peer.send_all(frame(C.JOB_ASSIGN_UNIQ, b"\x00".join(
                (job.handle, job.function.name, job.unique, b"")), job.data))

    def _grab_job_all(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        job = self._grab(peer)
        if job is None:
            peer.send(_NO_JOB)
        elif job.reducer:
            peer.send_all(frame(C.JOB_ASSIGN_ALL, b"\x00".join(
                (job.handle, job.function.name, job.unique, job.reducer, b"")), job.data))
        else:
            peer.send_all(frame(C.JOB_ASSIGN_UNIQ, b"\x00".join(
                (job.handle, job.function.name, job.unique, b"")), job.data))

    # ----------------------------------------------------------------- work results

    def _held(self, peer: Peer, handle: bytes, ptype: int) -> Job | None:
        job = peer.running.get(handle)
        if job is None:
            if ptype == C.WORK_FAIL and handle == peer.last_exception:
                peer.last_exception = None  # WORK_EXCEPTION then WORK_FAIL: the Perl server's sequence
                return None
            peer.send(error_packet(b"JOB_NOT_FOUND", f"{C.TYPE_NAMES[ptype]}: no job {handle!r} is assigned "
                                                      "to this connection"))
        return job

    def _relay(self, job: Job, ptype: int, head: bytes, data: bytes = b"") -> None:
        if job.clients:
            chunks = frame(ptype, head, data)
            for client in job.clients:
                client.send_all(chunks)

    def _work_status(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        job = self._held(peer, args[0], C.WORK_STATUS)
        if job is not None:
            job.numerator = args[1]
            job.denominator = args[2]
            self._relay(job, C.WORK_STATUS, b"\x00".join(args))

    def _work_data(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        job = self._held(peer, args[0], C.WORK_DATA)
        if job is not None:
            self._relay(job, C.WORK_DATA, args[0] + b"\x00", args[1])

    def _work_warning(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        job = self._held(peer, args[0], C.WORK_WARNING)
        if job is not None:
            self._relay(job, C.WORK_WARNING, args[0] + b"\x00", args[1])

    def _work_complete(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        job = self._held(peer, args[0], C.WORK_COMPLETE)
        if job is not None:
            self._relay(job, C.WORK_COMPLETE, args[0] + b"\x00", args[1])
            # Its run time (stats.py, "job events"); complete = run.count - fail - exception.
            stats, counters = self.stats, job.function.stats
            if stats is not None and counters is not None:
                clock = stats.clock
                run = clock() - job.stamp
                histogram = counters.run
                if run <= SHORTEST:
                    histogram.first += 1
                else:
                    histogram.buckets[histogram.last if histogram.lo < run <= histogram.hi
                                      else histogram.bucket(run)] += 1
                histogram.total += run
            self._finish(job, "complete", args[1])

    def _work_fail(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        job = self._held(peer, args[0], C.WORK_FAIL)
        if job is not None:
            if self.lifecycle is not None and self.lifecycle.retry(job, "fail") == "retry":
                return
            self._relay(job, C.WORK_FAIL, args[0])
            if self.stats is not None:
                self.stats.failed(job, "fail")
            self._finish(job, "failed")

    def _work_exception(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        job = self._held(peer, args[0], C.WORK_EXCEPTION)
        if job is not None:
            peer.last_exception = job.handle
            if self.lifecycle is not None and self.lifecycle.retry(job, "exception", args[1]) == "retry":
                return
            if self.stats is not None:
                self.stats.failed(job, "exception", args[1])
            self._fail_clients(job, args[1])
            self._finish(job, "exception", exception=args[1])

    def _fail_clients(self, job: Job, exception: bytes | None = None) -> None:
        """WORK_EXCEPTION to clients that asked for exceptions (when there is one), WORK_FAIL to the rest."""
        fail = pack(RES, C.WORK_FAIL, job.handle)
        exc = pack(RES, C.WORK_EXCEPTION, job.handle + b"\x00" + exception) if exception is not None else None
        for client in job.clients:
            client.send(exc if exc is not None and client.exceptions else fail)

    def _finish(self, job: Job, state: str, data: bytes = b"", exception: bytes | None = None) -> None:
        """A job ended with a result: free its worker slot, its unique and its stored copy."""
        if self.lifecycle_ends:
            self.lifecycle.ended(job, state, data, exception)
        self._off_worker(job)
        job.state = DONE
        self._end(job)

    @staticmethod
    def _off_worker(job: Job) -> None:
        """The job no longer runs: its worker's slot and its function's running count are freed; the caller
        says where it goes next (done, queued, scheduled)."""
        worker = job.worker
        if worker is not None:
            running = worker.running
            if job.handle in running:
                del running[job.handle]
            job.worker = None
        if job.state == RUNNING:
            job.function.running -= 1
            job.state = QUEUED

    def _end(self, job: Job) -> None:
        jobs = self.jobs
        if job.handle not in jobs:
            return  # ended already
        del jobs[job.handle]
        self.queued_bytes -= len(job.data)
        function = job.function
        function.jobs -= 1
        if job.key and function.uniques.get(job.key) is job:
            del function.uniques[job.key]
        if job.unique and self.by_unique.get(job.unique) is job:
            del self.by_unique[job.unique]
        for client in job.clients:
            client.waiting.discard(job)
        job.clients = NO_CLIENTS
        if job.store_ref is not None and self.store is not None:
            self.store.remove(job)
            job.store_ref = None
        self._maybe_forget(function)

    def _requeue(self, job: Job, why: str, outcome: str = "worker_lost") -> None:
        """Put a job that lost its worker back at the tail of its queue (or after its retry policy's backoff), or
        fail it past --job-retries or its policy's attempts."""
        self._off_worker(job)
        job.numerator = job.denominator = b"0"
        job.retries += 1
        if not job.background and not job.clients:
            job.state = DONE
            self._end(job)
            return
        exhausted = bool(self.job_retries) and job.retries > self.job_retries
        if self.stats is not None:
            self.stats.requeued(job, exhausted)
        verdict = self.lifecycle.retry(job, outcome, exhausted=exhausted) if self.lifecycle is not None else None
        if verdict == "retry":
            return
        if exhausted or verdict == "dead":
            log.warning("job %r failed: %s, requeued %d times", job.handle, why, job.retries - 1)
            self._fail_clients(job)
            if self.lifecycle is not None:
                self.lifecycle.ended(job, "failed")
            job.state = DONE
            self._end(job)
            return
        self._enqueue(job)

    def retry_later(self, job: Job, when: float) -> None:
        """Run a job again at `when` (a retry policy's backoff): off its worker, kept with its handle and unique,
        and stored again with its new time."""
        self._off_worker(job)
        job.numerator = job.denominator = b"0"
        job.when = when
        if job.store_ref is not None and self.store is not None:
            self.store.remove(job)
            job.store_ref = self.store.add(job)
        self._schedule(job)

    # ----------------------------------------------------------------- status and misc

    def _get_status(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        handle = args[0]
        job = self.jobs.get(handle)
        if job is None and self.spill is not None and self.spill.holds(handle):
            body = b"\x00".join((handle, b"1", b"0", b"0", b"0"))
        elif job is None:
            body = b"\x00".join((handle, b"0", b"0", b"0", b"0"))
        else:
            body = b"\x00".join((handle, b"1", b"1" if job.state == RUNNING else b"0",
                                  job.numerator, job.denominator))
        peer.send(pack(RES, C.STATUS_RES, body))

    def _get_status_unique(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        unique = args[0]
        job = self.by_unique.get(unique)
        if job is None and self.spill is not None and self.spill.holds_unique(unique, peer):
            body = b"\x00".join((unique, b"1", b"0", b"0", b"0", b"0"))
        elif job is None:
            body = b"\x00".join((unique, b"0", b"0", b"0", b"0", b"0"))
        else:
            body = b"\x00".join((unique, b"1", b"1" if job.state == RUNNING else b"0", job.numerator,
                                  job.denominator, str(len(job.clients)).encode()))
        peer.send(pack(RES, C.STATUS_RES_UNIQUE, body))

    def _echo(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        peer.send(pack(RES, C.ECHO_RES, args[0]))

    def _set_client_id(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        client_id = _CONTROL.sub(b"_", args[0][:127].replace(b" ", b"_"))
        peer.client_id = client_id or b"-"

    def _option(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        if args[0] == b"exceptions":
            peer.exceptions = True
            peer.send(pack(RES, C.OPTION_RES, b"exceptions"))
        elif self.lifecycle is not None and self.lifecycle.set_option(peer, args[0]):
            peer.send(pack(RES, C.OPTION_RES, args[0]))
        else:
            peer.send(error_packet(b"UNKNOWN_OPTION", f"unknown option {args[0][:64]!r}"))

    def _all_yours(self, peer: Peer, args: tuple[bytes, ...]) -> None:
        # An advisory hint with no defined server behaviour; accepted silently like the other worker packets.
        pass

    # ----------------------------------------------------------------- admin operations

    def find(self, handle: bytes) -> Job | None:
        """The live job with this handle; a spilled one is materialized (see spill.py)."""
        job = self.jobs.get(handle)
        if job is None and self.spill is not None:
            job = self.spill.materialize(handle)
        return job

    def cancel(self, handle: bytes) -> bool:
        """Cancel a job that is queued or scheduled (not running): its clients get WORK_FAIL."""
        job = self.find(handle)
        if job is None or job.state == RUNNING:
            return False
        self._drop_queued(job)
        self._fail_clients(job)
        if self.lifecycle is not None:
            self.lifecycle.ended(job, "cancelled")
        self._end(job)
        return True

    def set_max_queue(self, name: bytes, limits: Iterable[int]) -> None:
        function = self.function(name)
        function.max_queue = [max(0, int(n)) for n in limits]
        self._maybe_forget(function)

    def drop_function(self, name: bytes) -> bool:
        function = self.functions.get(name)
        if function is None or function.workers or function.jobs:
            return False
        del self.functions[name]
        self.idle.pop(name, None)
        return True

    def restore(self, name: bytes, unique: bytes, data: bytes, priority: int, when: float,
                store_ref: Any, reducer: bytes = b"") -> Job:
        """Put back a background job read from the store at start (no peer, no answer).

        When (function, unique) coalesces onto a job restored earlier, that job comes back with its own
        store_ref kept: the caller sees a different ref and deletes its duplicate row.
        """
        store, self.store = self.store, None
        try:
            job = self.submit(None, name, unique, data, priority, True, when=when, reducer=reducer)
        finally:
            self.store = store
        assert job is not None
        if job.store_ref is None:
            job.store_ref = store_ref
            if self.spill is not None and job.state == QUEUED:
                self.spill.restored(job)
        return job
