"""A backlog bigger than memory: queued background jobs past --memory-jobs per function and priority stay only in
the durable store, and are read back in order, from the store's writer thread, as the queue drains.

What a spilled job costs in memory: its place in a SpillQueue, runs of consecutive refs and handle numbers with
the time the run was queued (four 8-byte slots per run; a run of jobs submitted back to back, within a
millisecond, to one function and priority costs one run however long), plus, when it has a unique, one entry
in its function's unique index (hashindex.py: a 30-bit fingerprint of the key's hash and the signed handle
number, 12 bytes a slot, 35-40% to 70-80% full as it grows: 15-34 bytes; no key: for "-" the key is the data). Its data,
reducer, time and unique stay in the store. 10M queued 64-byte jobs with 36-byte uniques: 328 MB RSS (1572 MB
with a dict of the keys; benchmarks/README.md).

A unique is looked up (a submit coalesces, GET_STATUS_UNIQUE, `show job unique`) by its hash; a new unique
almost always finds no entry and costs a hash and a probe (hashindex.py: 1 lookup in ~7,000 matches another
key's fingerprint at 10M entries). Each entry whose fingerprint matches is confirmed by reading the job's unique
(the data, for "-") back by ref (store.peek_uniques), so a hash collision never coalesces two different
uniques. That read is the one the event loop makes itself: while the store's writer thread is quiet (no commit
or other engine call runs or waits) it has the SQLite connection to itself, and a primary-key read of a
committed row from the page cache costs 5-8 us (1M rows, benchmarks/unique_index.py). While the writer is busy
the loop would wait for its statement, a commit's sync at worst (reads took a median 0.3-1.2 ms, p99 7-15 ms,
max 32-36 ms while 512-row batches were committed back to back), so a Gearman connection's request raises
Confirming instead: the read goes to the writer thread after what it has, the connection's requests from this
one on wait (not read, answers in order), and they are handled again with the rows at hand. Requests without a
connection (replay at start, schedules, the HTTP API) read at once. Only matches pay a read, once per spilled
job that a submit joins (it is then materialized, found in memory from then on); a status poll pays one each
time. The index costs ~2-3 us of CPU per spilled job with a unique in pure Python (a miss at its submit, an add, a
removal when it is loaded) where a dict took ~0.3; compiled, ~1.6 us (0.3 the miss, 0.6 the add with its share
of the doublings, 0.7 the removal, with 700,000 entries: mostly cache misses in the arrays).

Kept exact while jobs sit only in the store: counts (status, prioritystatus, maxqueue), coalescing by unique,
GET_STATUS and GET_STATUS_UNIQUE, `show jobs` and `show unique jobs` (the spilled uniques are read from the store
LISTING_CHUNK at a time as the listing is written, each read at once: ~4 ms a chunk, more while a commit runs),
`cancel job`, the HTTP API's lookups, and the order per priority (spilled jobs run after the in-memory ones of
their priority, in submission order). A spilled job that something must hold on to (a foreground client joins
it, `cancel job` or `show job` names it) is materialized: a Job in state SPILLED without its data (its unique is
read at once when only its handle was given), still in its place in the spill order, which gets its data when it
is loaded.

An engine spills when it says so (``can_spill``) and gives ``fetch(ranges, callback)``, ``peek_uniques``,
``peek_later`` and ``quiet``; others keep every job in memory. Jobs that never spill: scheduled ones (they wait
in the timer heap), ones a client waits on, requeued ones.
"""

from __future__ import annotations

import asyncio
import logging
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from ..compiled import runs_compiled
from .broker import QUEUED, SPILLED, Broker, Function, Job
from .hashindex import HashIndex, key_hash

if TYPE_CHECKING:
    from mypy_extensions import i64  # compiled: a native 64-bit int; interpreted, annotations are not evaluated

log = logging.getLogger("geartrain.spill")

#: Whether this module runs compiled (handle_number).
_COMPILED: Final = runs_compiled(__file__)

#: Queued jobs per function and priority held in memory when --memory-jobs is not given (ServerConfig's default).
DEFAULT_MEMORY_JOBS = 100_000
#: Jobs read back per fetch: one fetch's rows become jobs in one pass of the event loop, so it stays short.
LOAD_CHUNK = 4096
#: Spilled jobs whose uniques one store read gives to `show unique jobs` (one chunk of the streamed listing).
LISTING_CHUNK = 4096
#: Seconds before a failed load is tried again.
RETRY_DELAY = 1.0
#: Seconds between the queueing of the first and the last job of one run: a spilled job's queue wait is counted
#: from its run's first job (at most this much early; the first bucket of the wait histogram is 1 ms).
STAMP_SPAN: Final = 0.001


class Confirming(Exception):  # noqa: N818 - a request put off, not an error
    """Raised by a lookup of a request that may wait (Peer.may_wait) when entries of the unique index must be
    confirmed: the read of their rows runs on the store's writer thread (`future`), and the transport holds the
    connection's requests from this one on, then handles them again with the rows in Spill.peeked: those read
    for it, and those read before for the same requests (`known`), so a request that needs several reads (one
    per function, say) gets them all however busy the store stays."""

    def __init__(self, refs: list[int], future: asyncio.Future,
                 known: dict[int, tuple[bytes, bytes | None] | None]) -> None:
        super().__init__(refs)
        self.refs = refs
        self.future = future
        self.known = known

    def rows(self) -> dict[int, tuple[bytes, bytes | None] | None]:
        """The rows read (once the future is done), by ref; None: no such row, or the read failed (the entry
        stays unconfirmed)."""
        future = self.future
        found: dict[int, tuple[bytes, bytes | None]] = {}
        if future.cancelled():
            pass
        elif future.exception() is not None:
            _read_failed(future.exception())
        else:
            found = future.result()
        rows = dict(self.known)
        rows.update((ref, found.get(ref)) for ref in self.refs)
        return rows


def _read_failed(exc: BaseException | None) -> None:
    log.error("reading the uniques of spilled jobs from the store failed: %s", exc)


def signed(num: int, unique: bytes) -> int:
    """A spilled job's value in its function's unique index: its handle number, negative when its unique is "-"
    (its key is then its data)."""
    return -num if unique == b"-" else num


def handle_number(handle: bytes, start: int) -> int:
    """The decimal number handle[start:] spells (the broker's handles are its prefix and a number), or -1 when it
    is not one (empty, or not only the digits 0-9). Compiled, read digit by digit in a native 64-bit int: the
    broker's numbers have 16 digits, past which a tagged int multiplies through Python's, and int() of bytes is
    a call of the type (with the isdigit() check 1.8k instructions per spilled job, 1.1k more than the loop)."""
    end = len(handle)
    if start >= end:
        return -1
    if end - start > 18 or not _COMPILED:  # past a 64-bit int; interpreted, int() is 7x faster than the loop
        digits = handle[start:]
        return int(digits) if digits.isdigit() else -1
    num: i64 = 0
    for i in range(start, end):
        digit: i64 = handle[i] - 48
        if digit < 0 or digit > 9:
            return -1
        num = num * 10 + digit
    return num


def row_key(row: tuple[bytes, bytes | None]) -> bytes:
    """The key of a job as store.peek_uniques gives it, (unique, data when the unique is "-")."""
    return (row[1] or b"") if row[0] == b"-" else row[0]


class SpillQueue:
    """The jobs of one function and priority that wait in the store, oldest first, as runs of consecutive refs
    and handle numbers queued within STAMP_SPAN of each other. The first `loading` of them are being read back.

    The run being appended to stays in plain attributes (compiled, an array's items go through Python's item
    protocol: four reads and a write per appended job); it joins the arrays when a new run starts, or before
    anything reads them (_seal)."""

    __slots__ = ("refs", "nums", "lengths", "stamps", "head", "count", "loading", "gone", "live", "open_ref",
                 "open_num", "open_length", "open_stamp")

    def __init__(self) -> None:
        self.refs = array("q")
        self.nums = array("q")
        self.lengths = array("q")
        #: When the first job of each run was queued (Job.stamp): its jobs' queue wait counts from there.
        self.stamps = array("d")
        #: Index of the first run still spilled (runs before it are used up; cut off now and then).
        self.head = 0
        #: Jobs still spilled (cancelled ones excluded), loading ones included.
        self.count = 0
        self.loading = 0
        #: Handle numbers of spilled jobs that ended (cancelled) before they were loaded: skipped when loaded.
        self.gone: set[int] = set()
        #: Materialized jobs (state SPILLED) by handle number.
        self.live: dict[int, Job] = {}
        #: The open run, after the arrays' (open_length 0: none).
        self.open_ref = 0
        self.open_num = 0
        self.open_length = 0
        self.open_stamp = 0.0

    def append(self, ref: int, num: int, stamp: float) -> None:
        length = self.open_length
        if length and self.open_ref + length == ref and self.open_num + length == num \
                and stamp - self.open_stamp <= STAMP_SPAN:
            self.open_length = length + 1
        else:
            self._seal()
            self.open_ref = ref
            self.open_num = num
            self.open_length = 1
            self.open_stamp = stamp
        self.count += 1

    def _seal(self) -> None:
        """Move the open run into the arrays (the next append starts a new run)."""
        if self.open_length:
            self.refs.append(self.open_ref)
            self.nums.append(self.open_num)
            self.lengths.append(self.open_length)
            self.stamps.append(self.open_stamp)
            self.open_length = 0

    def find(self, num: int) -> int | None:
        """The ref of the spilled job with this handle number, or None."""
        self._seal()
        nums = self.nums
        i = bisect_right(nums, num, self.head) - 1
        if i < self.head or num >= nums[i] + self.lengths[i] or num in self.gone:
            return None
        return self.refs[i] + (num - nums[i])

    def front(self, most: int) -> list[tuple[int, int, int, float]]:
        """Up to `most` entries from the front as (first ref, first handle number, length, stamp) runs."""
        self._seal()
        runs = []
        i = self.head
        while most > 0 and i < len(self.lengths):
            n = min(most, self.lengths[i])
            runs.append((self.refs[i], self.nums[i], n, self.stamps[i]))
            most -= n
            i += 1
        return runs

    def advance(self, n: int) -> None:
        """The first n entries were loaded (or skipped): take them off the front."""
        self._seal()
        while n:
            i = self.head
            length = self.lengths[i]
            if n >= length:
                n -= length
                self.head = i + 1
            else:
                self.refs[i] += n
                self.nums[i] += n
                self.lengths[i] = length - n
                n = 0
        if self.head > 1024 and self.head * 2 > len(self.lengths):
            del self.refs[:self.head], self.nums[:self.head], self.lengths[:self.head], self.stamps[:self.head]
            self.head = 0

    def runs(self) -> list[tuple[int, int, int]]:
        """A copy of the runs still spilled, as (first ref, first handle number, length)."""
        self._seal()
        head = self.head
        return list(zip(self.refs[head:], self.nums[head:], self.lengths[head:], strict=True))

    def handles(self) -> Iterator[int]:
        """Handle numbers of the spilled jobs, in queue order: the runs are copied at the call, so the queue may
        change while the numbers are read (a streamed `show jobs`)."""
        self._seal()
        return self._numbers(self.nums[self.head:], self.lengths[self.head:], self.gone)

    @staticmethod
    def _numbers(nums: array[int], lengths: array[int], gone: set[int]) -> Iterator[int]:
        for start, length in zip(nums, lengths, strict=True):
            for num in range(start, start + length):
                if num not in gone:
                    yield num

    def memory(self) -> int:
        """Bytes the runs take (for the benchmark and tests)."""
        self._seal()
        return (len(self.refs) + len(self.nums) + len(self.lengths) + len(self.stamps)) * 8


class Spill:
    """Spilling and loading for one broker over one spill-capable store."""

    def __init__(self, broker: Broker, store: Any, memory_jobs: int = DEFAULT_MEMORY_JOBS) -> None:
        self.broker = broker
        self.store = store
        self.memory_jobs = max(1, memory_jobs)
        #: Loads start when fewer than this many jobs of a priority are queued in memory.
        self.low_water = max(1, self.memory_jobs // 2)
        self.prefix = broker.prefix
        #: Functions with spill queues: {function: (high, normal, low)}.
        self.queues: dict[Function, tuple[SpillQueue, SpillQueue, SpillQueue]] = {}
        #: Per function: key -> handle number of each spilled job with a key (negative: its unique was "-"), by
        #: hash only (hashindex.py): a match is confirmed by reading the job's unique back (_with_key).
        self.uniques: dict[Function, HashIndex] = {}
        #: Hash of the keys (a parameter for tests that force collisions).
        self.key_hash = key_hash
        #: Store reads that confirmed (or refuted) a match of the index (statistics, tests).
        self.confirms = 0
        #: Rows read for the requests being handled again after a Confirming (set by the transport meanwhile).
        self.peeked: dict[int, tuple[bytes, bytes | None] | None] = {}
        self.total = 0
        self.loads = 0
        #: Functions taken out of the ready lists while a priority of theirs is read back (see block()).
        self.blocked: set[Function] = set()
        #: Whether the last read failed (logged once until one works again).
        self.failing = False
        broker.spill = self

    # ------------------------------------------------------------------ spilling

    def take(self, job: Job) -> bool:
        """Called as a committed job would be queued: keep it only in the store when its queue is full in
        memory or has spilled jobs already (which must run first). True when it was spilled."""
        function = job.function
        priority = job.priority
        # Typed locals: Function.spill is Any, and a call through it would go through Python's method lookup.
        queues: tuple[SpillQueue, SpillQueue, SpillQueue] | None = function.spill
        if queues is None:
            if function.counts[priority] < self.memory_jobs:
                return False
        elif not queues[priority].count and function.counts[priority] < self.memory_jobs:
            return False
        handle = job.handle
        prefix = self.prefix
        if job.clients or job.store_ref is None or not handle.startswith(prefix):
            return False
        num = handle_number(handle, len(prefix))
        if num < 0:
            return False
        if queues is None:
            queues = function.spill = (SpillQueue(), SpillQueue(), SpillQueue())
            self.queues[function] = queues
        queue: SpillQueue = queues[priority]
        queue.append(job.store_ref, num, job.stamp)
        self.total += 1
        broker = self.broker
        del broker.jobs[handle]
        broker.queued_bytes -= len(job.data)
        key = job.key
        if key:
            uniques = function.uniques
            if uniques.get(key) is job:
                del uniques[key]
            unique = job.unique
            if broker.by_unique.get(unique) is job:
                del broker.by_unique[unique]
            index = self.uniques.get(function)
            if index is None:
                index = self.uniques[function] = HashIndex(self.key_hash)
            index.add(key, signed(num, unique))
        job.state = SPILLED  # the object itself is dropped: nothing refers to it any more
        return True

    def restored(self, job: Job) -> None:
        """A job replayed at start was queued in memory: spill it when its queue is past memory_jobs."""
        function = job.function
        priority = job.priority
        counts = function.counts
        queues = function.spill
        if counts[priority] <= self.memory_jobs and (queues is None or not queues[priority].count):
            return
        queue = function.queues[priority]
        if not queue or queue[-1] is not job:
            return
        queue.pop()
        counts[priority] -= 1
        if not counts[priority]:
            self.broker.ready[priority].pop(function, None)
        if not self.take(job):  # cannot be spilled after all (no ref): back in memory
            queue.append(job)
            counts[priority] += 1
            self.broker.ready[priority][function] = None

    # ------------------------------------------------------------------ lookups

    def _locate(self, handle: bytes) -> tuple[Function, int, int, int] | None:
        """(function, priority, handle number, ref) of a spilled job, or None."""
        if not self.total or handle[:len(self.prefix)] != self.prefix:
            return None
        num = handle_number(handle, len(self.prefix))
        if num < 0:
            return None
        for function, queues in self.queues.items():
            for priority, queue in enumerate(queues):
                if queue.count:
                    ref = queue.find(num)
                    if ref is not None:
                        return function, priority, num, ref
        return None

    def holds(self, handle: bytes) -> bool:
        return self._locate(handle) is not None

    def _ref(self, function: Function, num: int) -> int | None:
        """The ref of the spilled job of `function` with this handle number, or None."""
        for queue in function.spill or ():
            if queue.count:
                ref = queue.find(num)
                if ref is not None:
                    return ref
        return None

    def _with_key(self, function: Function, key: bytes, dash: bool = True, peer: Any = None) -> int | None:
        """The signed handle number (see uniques) of a spilled job of `function` whose key is `key` (with dash
        False: whose unique is `key`), or None. Each entry whose fingerprint matches is confirmed by the job's
        unique, or its data when the unique is "-", as read from the store: at once on the loop, or, for a peer
        that may wait while the writer thread is busy, on that thread (Confirming is raised). Stale entries
        (cancelled, loaded) are dropped on the way."""
        index = self.uniques.get(function)
        if index is None:
            return None
        found = index.find(key)
        if not found:  # the common case, a new unique
            return None
        store = self.store
        later = peer is not None and peer.may_wait and not store.quiet()
        need = []
        for value in found:
            ref = self._ref(function, abs(value))
            if ref is None:
                index.remove(key, value)
                continue
            if value < 0 and not dash:
                continue
            if ref in self.peeked:
                row = self.peeked[ref]
            elif later:
                need.append(ref)
                continue
            else:
                row = self._peek([(ref, ref)]).get(ref)
            if row is not None and row_key(row) == key:
                return value
        if need:
            self.confirms += 1
            try:
                future = store.peek_later([(ref, ref) for ref in need])
            except Exception as exc:  # closed: unconfirmed
                _read_failed(exc)
                return None
            raise Confirming(need, future, self.peeked)
        return None

    def _peek(self, ranges: list[tuple[int, int]]) -> dict[int, tuple[bytes, bytes | None]]:
        self.confirms += 1
        try:
            return self.store.peek_uniques(ranges)
        except Exception as exc:  # a lost or failing file: the job stays unconfirmed (a submit makes a new one)
            _read_failed(exc)
            return {}

    def holds_unique(self, unique: bytes, peer: Any = None) -> bool:
        """Whether a spilled job has this unique (GET_STATUS_UNIQUE; "-" uniques are keyed by data). `peer`: the
        connection asking, whose request may wait for a store read (see _with_key)."""
        return any(self._with_key(function, unique, peer=peer) is not None for function in list(self.uniques))

    def join(self, function: Function, key: bytes, peer: Any = None, dash: bool = True) -> Job | None:
        """The spilled job of the function with this key, materialized (a submit coalesces onto it); with dash
        False only a job whose unique is `key`. `peer`: as for holds_unique."""
        value = self._with_key(function, key, dash, peer)
        if value is None:
            return None
        self.uniques[function].remove(key, value)  # from now on function.uniques finds it
        return self.materialize(self.prefix + b"%d" % abs(value), b"-" if value < 0 else key, key)

    def with_unique(self, unique: bytes) -> Job | None:
        """A spilled job with this unique, of any function, materialized (the HTTP API's lookup by unique)."""
        for function in list(self.uniques):
            job = self.join(function, unique, dash=False)
            if job is not None:
                return job
        return None

    def materialize(self, handle: bytes, unique: bytes = b"", key: bytes = b"") -> Job | None:
        """A Job (state SPILLED, no data yet) for a spilled job something must hold: a client joins it, an admin
        cancels it. It keeps its place in the spill order and gets its data when loaded. Its unique, when not
        given, is read from the store (when that fails, it comes with the data)."""
        found = self._locate(handle)
        if found is None:
            return None
        function, priority, num, ref = found
        queue = function.spill[priority]  # type: ignore[index]
        broker = self.broker
        job = queue.live.get(num)
        if job is not None:
            if key and not job.key:  # materialized by handle before: now its unique is known
                job.unique, job.key = unique, key
                function.uniques[key] = job
                broker.by_unique[unique] = job
            return job
        index = self.uniques.get(function)
        if not key and index is not None:  # by handle, in a function with spilled uniques
            row = self._peek([(ref, ref)]).get(ref)
            if row is not None and row[0]:
                unique, key = row[0], row_key(row)
                index.remove(key, signed(num, unique))
        job = Job(handle, function, unique, key, b"", priority, True)
        job.store_ref = ref
        job.state = SPILLED
        queue.live[num] = job
        broker.jobs[handle] = job
        if key:
            function.uniques[key] = job
            broker.by_unique[unique] = job
        return job

    def discard(self, job: Job) -> None:
        """A materialized spilled job ended before it was loaded (cancel): skipped when its turn comes."""
        queue = job.function.spill[job.priority]  # type: ignore[index]
        num = handle_number(job.handle, len(self.prefix))
        queue.live.pop(num, None)
        queue.gone.add(num)
        index = self.uniques.get(job.function)
        if index is not None and job.key:
            index.remove(job.key, signed(num, job.unique))
        queue.count -= 1
        self.total -= 1
        self.drained(job.function, job.priority)

    def listing(self) -> Iterator[bytes]:
        """The handle of every spilled job, queue by queue (show jobs; materialized ones too, which `show jobs`
        skips in broker.jobs). The functions are taken at the call, each queue's runs as it is reached: jobs may
        come and go while a long listing is written."""
        prefix = self.prefix
        return (prefix + b"%d" % num for queues in list(self.queues.values()) for queue in queues
                for num in queue.handles())

    def unique_listing(self) -> Iterator[bytes]:
        """The unique of every spilled job that has one (show unique jobs): read from the store LISTING_CHUNK
        jobs at a time as the listing is written, only for functions with spilled uniques."""
        return self._uniques([function for function in self.queues if function in self.uniques])

    def _uniques(self, functions: list[Function]) -> Iterator[bytes]:
        broker = self.broker
        for function in functions:
            for queue in function.spill or ():
                for ref0, num0, length in queue.runs():
                    for start in range(0, length, LISTING_CHUNK):
                        n = min(LISTING_CHUNK, length - start)
                        rows = self._peek([(ref0 + start, ref0 + start + n - 1)])
                        for k in range(start, start + n):
                            num = num0 + k
                            if num in queue.gone:
                                continue
                            row = rows.get(ref0 + k)
                            if row is not None:
                                unique = row[0]
                            else:  # loaded since the listing began, and maybe ended (then it is not listed)
                                job = broker.jobs.get(self.prefix + b"%d" % num)
                                unique = job.unique if job is not None else b""
                            if unique:
                                yield unique

    # ------------------------------------------------------------------ loading

    def drained(self, function: Function, priority: int) -> None:
        """The memory queue of (function, priority) got shorter: read the next spilled jobs when it runs low."""
        queues = function.spill
        if queues is None:
            return
        queue = queues[priority]
        if queue.loading or queue.count <= 0 or function.counts[priority] >= self.low_water:
            return
        runs = queue.front(min(LOAD_CHUNK, self.memory_jobs - function.counts[priority]))
        queue.loading = sum(run[2] for run in runs)
        self.loads += 1
        self.store.fetch([(ref, ref + n - 1) for ref, _, n, _ in runs],
                         lambda rows, exc: self._loaded(function, priority, runs, rows, exc))

    def block(self, function: Function, priority: int) -> None:
        """Its memory queue of `priority` ran dry while spilled jobs of it are read back: the function is out of
        the ready lists until they are queued (so a job of lower priority does not jump ahead)."""
        for ready in self.broker.ready:
            ready.pop(function, None)
        self.blocked.add(function)
        self.drained(function, priority)

    def _loaded(self, function: Function, priority: int, runs: list[tuple[int, int, int, float]],
                rows: dict[int, tuple] | None, exc: BaseException | None) -> None:
        queue = function.spill[priority]  # type: ignore[index]
        if exc is not None or rows is None:
            queue.loading = 0
            if not self.failing:  # once per episode: it is tried again every RETRY_DELAY
                log.error("reading spilled jobs of %r back from the store failed: %s; trying again every %gs",
                          function.name, exc, RETRY_DELAY)
            self.failing = True
            self.broker.add_timer(self.broker.clock() + RETRY_DELAY, lambda: self.drained(function, priority))
            return
        if self.failing:
            log.warning("spilled jobs are read back from the store again")
            self.failing = False
        broker = self.broker
        gone = queue.gone
        live = queue.live
        index = self.uniques.get(function)
        prefix = self.prefix
        for ref0, num0, n, stamp in runs:
            for k in range(n):
                num = num0 + k
                if gone and num in gone:
                    gone.discard(num)
                    continue
                queue.count -= 1
                self.total -= 1
                row = rows.get(ref0 + k)
                job = live.pop(num, None) if live else None
                handle = prefix + b"%d" % num
                if row is None:
                    log.error("spilled job %r of %r has no row in the store any more: it is lost", handle,
                              function.name)
                    if job is not None:
                        job.store_ref = None
                        broker._fail_clients(job)
                        job.state = QUEUED
                        broker._end(job)
                    else:
                        function.jobs -= 1
                    continue
                _, _, unique, _, when, reducer, data = row
                key = data if unique == b"-" else unique
                if job is None:
                    job = Job(handle, function, unique, key, data, priority, True, when, reducer)
                    job.store_ref = ref0 + k
                    broker.jobs[handle] = job
                    if key:
                        if index is not None:
                            index.remove(key, signed(num, unique))
                        function.uniques[key] = job
                        if unique:
                            broker.by_unique[unique] = job
                else:
                    job.data, job.when, job.reducer = data, when, reducer
                    if key and not job.key:  # materialized by handle: its unique comes with the row
                        job.unique, job.key = unique, key
                        if index is not None:
                            index.remove(key, signed(num, unique))
                        function.uniques[key] = job
                        broker.by_unique[unique] = job
                job.stamp = stamp
                broker.queued_bytes += len(data)
                broker._enqueue(job)
            queue.advance(n)
        queue.loading = 0
        if function in self.blocked:
            self.blocked.discard(function)
            for p, ready in enumerate(broker.ready):
                if function.counts[p]:
                    ready[function] = None
        if not queue.count and not queue.gone and all(not q.count for q in function.spill):  # type: ignore[union-attr]
            function.spill = None
            del self.queues[function]
            self.uniques.pop(function, None)
        else:
            self.drained(function, priority)
