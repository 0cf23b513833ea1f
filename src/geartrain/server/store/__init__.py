"""The durable queue: the Store interface the broker talks to, and group commit on a writer thread (the engines
and the choice between them: sqlite.py, postgres.py, engines.py).

How the server uses a store (the contract every engine keeps):

- The broker calls ``ref = store.add(job)`` for each new background job and ``store.remove(job)`` when a stored
  job ends (WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION, ``cancel job``, retries exhausted). Both are cheap and
  synchronous on the event loop: they only record the change in the batch being gathered.
- A new durable job waits in state STORING: no worker sees it until its row is committed; then the store calls
  ``broker.stored(job)``, which queues it. A batch that fails is refused job by job: ``broker.refuse(job)``
  drops it (it never runs), and each JOB_CREATED that announced it is replaced by ``ERROR QUEUE_ERROR`` with
  the reason (disk full, I/O error, too many open files). The connection stays; nobody else is touched.
- Right before it queues the JOB_CREATED of a job that is STORING the broker calls ``store.hold(peer, job)``
  (for a new job, ``store.add(job, peer)`` does both).
  The peer's output from that JOB_CREATED on waits until that very job's batch is done: ``holds(peer)`` says
  whether some of it waits, ``release(peer)`` takes what may be written now. So every JOB_CREATED follows the
  commit of its own job's row, whatever batches come before or after, and replies keep their order.
- ``pending()`` tells whether any change is not durable yet; ``commit_then(cb)`` makes sure a commit covering
  every change made so far runs, and calls ``cb`` on the loop once it has (or failed).
- Changes are grouped: all the adds and removes that arrive while commits run go into the next one, so one
  sync serves many submits. An engine's ``writers`` says how many commits may be in flight together (SQLite: 1,
  one at a time on a single writer thread; PostgreSQL: several connections). Whatever order they land in, the
  store takes their outcomes in batch order (acknowledgements, queueing, refusals, callbacks), so a later batch
  never answers before an earlier one. A batch starts beside others only once it is as big as the last one
  started, and only when it cannot depend on them: not while a batch that inserts a row it removes is in
  flight, nor with server state changes, nor after a lost file. Engine calls besides commits (``run``, fetch,
  idle) wait until no commit is in flight, and commits wait for them. Removes of a failed batch, and the refs of
  its refused adds, are written again with the next batch.
- A failing store is logged once per episode (and once when it writes again) and counted: ``commits``,
  ``failed_commits``, ``refused_jobs``; ``fault`` holds the reason while the episode lasts.
- ``start(state)`` opens the store and replays every stored job into ``state.broker`` in the order they were
  added; ``close()`` commits what is left and closes.
- Beside the jobs a store may keep server state (dead letters, schedules, attempt counts of retried jobs):
  ``save_state(kind, key, value)`` records or (value None) forgets one item, in the batch being gathered and written
  just before that batch's jobs; ``stored_state()`` gives what start() read back. Both are optional: the defaults
  keep nothing, and the server then holds that state in memory only.

- A backlog bigger than memory (spill.py): an engine that sets ``can_spill`` lets queued jobs past --memory-jobs
  stay only in the store; ``fetch(ranges, callback)`` reads committed rows back by ref range on the writer thread
  (``read_rows``), in order with the commits, and calls ``callback(rows, None)`` or ``callback(None, exc)`` on the
  loop; ``peek_uniques(ranges)`` reads the uniques (and the data of "-" ones) of committed rows at once, on the
  loop, which has the engine to itself while ``quiet()``; ``peek_later(ranges)`` runs it on the writer thread
  after what that thread has (a future). An engine without them keeps every queued job in memory.

An engine (SQLite here; PostgreSQL or Redis later) implements the blocking methods of GroupCommitStore
(``open_engine``, ``load``, ``write``, ``close_engine``), which always run on the writer thread; it may also
give ``check_engine`` (raise StoreLost when its file is gone; run before every batch and every idle second),
``recreate_engine``, ``idle_engine`` (checkpoints) and ``discard`` (right after a failed write, so that nothing
of it survives a crash); the defaults suit an engine without a file of its own.
"""

from __future__ import annotations

import abc
import asyncio
import errno
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ...compiled import mypyc_attr
from ...protocol.codec import pack
from ...protocol.constants import JOB_CREATED, RES
from ..broker import SPILLED, STORING, Job, error_packet
from ..stats import COMMIT_SECONDS, Histogram
from .writers import Writers

log = logging.getLogger("geartrain.store")

#: Rows read per step of the replay at start (see load_chunk).
REPLAY_CHUNK = 10_000

__all__ = [
    "GroupCommitStore", "Store", "StoreError", "StoreLost", "StoredJob", "failure_reason",
]


@mypyc_attr(native_class=False)  # compiled: an exception class stays a Python class
class StoreError(RuntimeError):
    """The durable queue cannot be opened or used; the message says which file and what to do."""


@mypyc_attr(native_class=False)
class StoreLost(StoreError):
    """The store's file was deleted or replaced under the running server: it is recreated with the held jobs."""


def failure_reason(exc: BaseException) -> str:
    """Why a write failed, in the words a client and an operator need: disk full, I/O error, too many open files."""
    text = str(exc) or type(exc).__name__
    code = getattr(exc, "errno", None)
    name = getattr(exc, "sqlite_errorname", "") or ""
    if isinstance(exc, StoreError):
        return text
    if code == errno.ENOSPC or name == "SQLITE_FULL" or "disk is full" in text:
        return f"disk full ({text})"
    if code in (errno.EMFILE, errno.ENFILE) or (name.startswith("SQLITE_CANTOPEN") and _out_of_descriptors()):
        return f"too many open files ({text})"
    if code == errno.EIO or name.startswith("SQLITE_IOERR") or "I/O error" in text:
        return f"I/O error ({text})"
    return text


def _out_of_descriptors() -> bool:
    try:
        os.close(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    return False


@dataclass(frozen=True)
class StoredJob:
    """One background job as a store keeps it. ``ref`` orders jobs: replay follows ascending refs."""

    ref: int
    function: bytes
    unique: bytes
    priority: int
    when: float
    reducer: bytes
    data: bytes

    def as_row(self) -> tuple[int, bytes, bytes, int, float, bytes, bytes]:
        return (self.ref, self.function, self.unique, self.priority, self.when, self.reducer, self.data)


@mypyc_attr(allow_interpreted_subclasses=True)
class Store(abc.ABC):
    """What the broker and the Server call. All methods run on the event loop thread and never block."""

    #: Where the jobs live, for log lines ("replayed N jobs from <location>").
    location: str = ""
    #: How many jobs start() replayed (geard's start-up line).
    replayed: int = 0
    #: Whether queued jobs past --memory-jobs may stay only in the store (fetch() reads them back; spill.py).
    can_spill: bool = False

    @abc.abstractmethod
    async def start(self, server: Any) -> None:
        """Open the store and replay every stored job into server.broker (before the server listens)."""

    @abc.abstractmethod
    def add(self, job: Job, peer: Any = None) -> Any:
        """Record a new background job; returns the ref the broker keeps in job.store_ref. With a peer, also
        hold(peer, job): the broker queues the job's JOB_CREATED to it next (one call per submit, not two)."""

    @abc.abstractmethod
    def remove(self, job: Any) -> None:
        """Forget a stored job (reads job.store_ref)."""

    @abc.abstractmethod
    def pending(self) -> bool:
        """Whether some add or remove is not durable yet."""

    @abc.abstractmethod
    def commit_then(self, callback: Callable[[], None]) -> None:
        """Make every change so far durable (grouped with others), then call callback on the loop."""

    @abc.abstractmethod
    def hold(self, peer: Any, job: Any) -> None:
        """The peer's next output chunk is the JOB_CREATED of job (STORING): hold it, and what follows it, until
        the job's row is committed (or replace it with an ERROR if the commit fails)."""

    @abc.abstractmethod
    def holds(self, peer: Any) -> bool:
        """Whether some of the peer's output waits for a commit."""

    @abc.abstractmethod
    def release(self, peer: Any) -> list[bytes]:
        """Take (out of peer.out) the chunks of a held peer's output that may be written now."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Commit what is left and close."""

    def save_state(self, kind: str, key: str, value: bytes | None) -> None:  # noqa: B027 - optional, no-op
        """Keep (or with None forget) one item of server state; by default it is not kept."""

    def stored_state(self) -> dict[str, dict[str, bytes]]:
        """The state kept by earlier runs, {kind: {key: value}}, as read by start() (handed over once); by default
        none."""
        return {}

    def fetch(self, ranges: list[tuple[int, int]], callback: Callable[[Any, BaseException | None], None]) -> None:
        """Read the rows with refs in the (first, last) ranges back, then callback(rows by ref, None) or
        callback(None, exc) on the loop (stores with can_spill)."""
        raise StoreError("this store cannot read jobs back")

    def peek_uniques(self, ranges: list[tuple[int, int]]) -> dict[int, tuple[bytes, bytes | None]]:
        """At once, on the loop: the unique of each committed row with a ref in the (first, last) ranges, with its
        data when the unique is "-" (the key it coalesces by), else None. The one read that runs on the loop
        (spill.py: a unique that hashes like a spilled job's is confirmed before the submit is answered; `show
        unique jobs` lists spilled uniques); unless the store is quiet() it may wait for a statement of the
        writer thread (stores with can_spill)."""
        raise StoreError("this store cannot read jobs back")


Row = tuple[int, bytes, bytes, int, float, bytes, bytes]


@mypyc_attr(allow_interpreted_subclasses=True)
class GroupCommitStore(Store):
    """Batching, holds and replay for engines whose writes block: subclasses give the four blocking methods.

    The batch being gathered has a sequence number; each held acknowledgement waits for the batch that holds its
    job's row. Up to ``writers`` commits run at once on writer threads; their outcomes are taken in sequence
    order, and whatever gathers while they run is the next batch.
    """

    #: Seconds without a commit after which the engine may tidy up (idle_engine: checkpoint, file check).
    idle_delay = 1.0
    #: Commits that may be in flight together, each on a writer thread of its own (an engine whose write() may
    #: run on several threads at once says how many; the default writes one batch at a time).
    writers = 1

    def __init__(self, location: str) -> None:
        self.location = location
        self.loop: asyncio.AbstractEventLoop | None = None
        self.broker: Any = None
        self._executor: Writers | None = None
        self._next_ref = 1
        # The batch being gathered: its number, its adds (row and job) by ref (so a remove can cancel one), its
        # removes.
        self._seq = 1
        self._adds: dict[int, Row] = {}
        self._jobs: dict[int, Any] = {}
        self._removes: list[int] = []
        #: Refs to delete again with the next batch: removes of a failed batch, adds it may have left behind.
        self._retry: list[int] = []
        self._touched = False
        #: Batches started and not landed yet: seq -> their adds by ref (a remove of one of those refs must wait).
        self._flying: dict[int, dict[int, Row]] = {}
        #: Batches landed out of order, waiting for an earlier one: seq -> (future, adds, jobs, removes).
        self._landed: dict[int, tuple[asyncio.Future, list[Row], list[Any], list[int]]] = {}
        #: The last batch started, and the last whose outcome was taken (every one up to it, in order).
        self._started = 0
        self._committed = 0
        #: The open batch removes a row that this batch (still flying) inserts: it starts only after it lands.
        self._after = 0
        #: Changes in the last batch started (a batch starts beside others only once it has as many).
        self._last_size = 0
        #: Engine calls waiting for the commits in flight (run_exclusive), and whether one runs.
        self._exclusive: deque[tuple[Callable[..., Any], tuple, asyncio.Future]] = deque()
        self._exclusive_running = False
        self._kick_scheduled = False
        self._callbacks: dict[int, list[Callable[[], None]]] = {}
        #: peer -> gates on its output: [batch, index in peer.out of the first JOB_CREATED waiting for it], in
        #: output order with rising batches (a JOB_CREATED waiting for an earlier batch than one before it in
        #: the output needs no gate of its own: the earlier gate holds it, and batches commit in order).
        self._held: dict[Any, deque[list[int]]] = {}
        #: The engine's file was lost (StoreLost): the next commit recreates it with every stored job.
        self._lost = False
        self._closing = False
        self._idle: asyncio.Event | None = None
        # Server state changes of the batch being gathered ((kind, key) -> value or None), and what start() read.
        self._state: dict[tuple[str, str], bytes | None] = {}
        self._stored_state: dict[str, dict[str, bytes]] = {}
        #: Statistics for metrics: jobs in the store, jobs replayed at start, commit latency.
        self.stored = 0
        self.replayed = 0
        self.commit_seconds = Histogram(COMMIT_SECONDS)
        self._idle_timer: asyncio.TimerHandle | None = None
        self._tidy_failing = False
        self.commits = 0  # batches committed
        self.failed_commits = 0  # batches that could not be written
        self.refused_jobs = 0  # jobs refused with an ERROR because their batch failed
        #: Why the store cannot write, while an episode of failures lasts (None when it writes).
        self.fault: str | None = None

    # ------------------------------------------------------------------ engine hooks (writer thread)

    @abc.abstractmethod
    def open_engine(self) -> None:
        """Open (create) the store; raise StoreError with a clear message if it cannot be used."""

    @abc.abstractmethod
    def load(self) -> Iterable[StoredJob]:
        """Every stored job in ascending ref order (the order they were added)."""

    def load_chunk(self, after: int, limit: int) -> tuple[list[StoredJob], int, bool]:
        """Stored jobs with refs above `after`, in ref order, at most about `limit`: (jobs, the highest ref read,
        whether that was the last chunk). Replay reads a big store chunk by chunk, so that jobs past
        --memory-jobs are spilled again as they come; the default reads everything at once with load()."""
        jobs = list(self.load())
        return jobs, jobs[-1].ref if jobs else after, True

    @abc.abstractmethod
    def write(self, adds: list[Row], removes: list[int]) -> None:
        """Apply one batch atomically and durably; return only once it would survive a crash."""

    @abc.abstractmethod
    def close_engine(self) -> None:
        """Close the store."""

    def load_state(self) -> dict[str, dict[str, bytes]]:
        """Every kept item of server state (see save_state); engines that keep none return {}."""
        return {}

    def write_state(self, changes: dict[tuple[str, str], bytes | None]) -> None:
        """Apply server state changes durably (None deletes); the default keeps nothing."""

    def check_engine(self) -> None:
        """Raise StoreLost when the store no longer is where it was opened (a deleted or replaced file)."""

    def recreate_engine(self, rows: list[Row]) -> None:
        """After StoreLost: open the store afresh at its place and write rows (every job still held) into it."""
        self.close_engine()
        self.open_engine()
        self.write(rows, [])

    def discard(self, refs: list[int]) -> None:
        """Right after a failed write: make sure no row of it survives (a failed sync may have left the batch
        readable after a crash). Must write something even when none of the rows exists."""
        self.write([], refs)

    def reserve_refs(self, highest: int) -> None:
        """Refs up to `highest` are taken by rows load() did not return (new jobs get higher ones)."""
        self._next_ref = max(self._next_ref, highest + 1)

    def idle_engine(self) -> None:
        """Nothing was written for idle_delay seconds: a moment to tidy up (checkpoint) and check_engine()."""
        self.check_engine()

    def read_rows(self, ranges: list[tuple[int, int]]) -> dict[int, Row]:
        """The stored rows whose refs lie in the (first, last) ranges, by ref (engines with can_spill)."""
        raise StoreError(f"the store {self.location} cannot read jobs back")

    # ------------------------------------------------------------------ life cycle

    async def start(self, server: Any) -> None:
        loop = self.loop = asyncio.get_running_loop()
        began = time.monotonic()
        self._idle = asyncio.Event()
        self._idle.set()
        executor = self._executor = Writers(loop, self.writers, "geartrain-store")
        broker = self.broker = server.broker
        duplicates = []
        last = count = 0
        failed: BaseException | None = None
        try:
            await executor.run(self.open_engine)
            done = False
            while not done:
                jobs, last, done = await executor.run(self.load_chunk, last, REPLAY_CHUNK)
                count += len(jobs)
                for stored in jobs:
                    job = broker.restore(stored.function, stored.unique, stored.data, stored.priority,
                                         stored.when, stored.ref, stored.reducer)
                    if job.store_ref != stored.ref:
                        duplicates.append(stored.ref)
            self._stored_state = await executor.run(self.load_state)
        except BaseException as error:
            failed = error  # awaited after the block: compiled, an await inside it leaks the error (compiled.py)
        if failed is not None:
            await self._shutdown_executor()
            raise failed
        self._next_ref = max(self._next_ref, last + 1)
        self.stored = self.replayed = count - len(duplicates)
        if duplicates:
            log.warning("%d stored jobs repeated the function and unique of an earlier one: removed",
                        len(duplicates))
            self._retry.extend(duplicates)
            _touch(self)
        log.info("replayed %d jobs from %s in %.2fs", self.replayed, self.location,
                 time.monotonic() - began)
        self._arm_idle()

    async def close(self) -> None:
        if self._executor is None or self._closing:
            return
        self._closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        assert self._idle is not None
        # Let the running commits and the batch behind them finish (each landing starts the next).
        while self._busy() or self._touched:
            if not self._busy():
                self._start_commit()
            self._idle.clear()
            await self._idle.wait()
        await self._shutdown_executor(close_engine=True)

    async def _shutdown_executor(self, close_engine: bool = False) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            if close_engine:
                await executor.run(self.close_engine)
        finally:
            executor.shutdown()

    # ------------------------------------------------------------------ broker side

    def add(self, job: Job, peer: Any = None) -> int:
        # job: Job, not Any: compiled, its attributes are read natively (7 reads per durable submit).
        ref = self._next_ref
        self._next_ref = ref + 1
        self.stored += 1
        self._adds[ref] = (ref, job.function.name, job.unique, job.priority, job.when, job.reducer, job.data)
        self._jobs[ref] = job
        _touch(self)
        if peer is not None:  # hold(peer, job): its row is in the batch being gathered
            _gate(self, peer, self._seq)
        return ref

    def remove(self, job: Any) -> None:
        ref = job.store_ref
        if ref is None:
            return
        self.stored -= 1
        if self._adds.pop(ref, None) is None:  # not in the open batch: it was (or is being) written
            self._removes.append(ref)
            for seq, adds in self._flying.items():
                if ref in adds:  # its insert is in flight: this delete must not reach the store before it
                    self._after = max(self._after, seq)
        else:
            del self._jobs[ref]
        _touch(self)

    def save_state(self, kind: str, key: str, value: bytes | None) -> None:
        self._state[(kind, key)] = value
        _touch(self)

    def fetch(self, ranges: list[tuple[int, int]], callback: Callable[[Any, BaseException | None], None]) -> None:
        """Read committed rows back (spill.py) on a writer thread; callback(rows, exc) runs on the loop."""
        if self._executor is None or self.loop is None:
            assert self.loop is not None
            self.loop.call_soon(callback, None, StoreError(f"the store {self.location} is not open"))
            return
        future = self.run_exclusive(self.read_rows, ranges)

        def done(future: asyncio.Future) -> None:
            exc = future.exception()
            callback(None if exc is not None else future.result(), exc)

        future.add_done_callback(done)

    def stored_state(self) -> dict[str, dict[str, bytes]]:
        state, self._stored_state = self._stored_state, {}  # handed over once: the server keeps it from then on
        return state

    def run_exclusive(self, call: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Run an engine call on a writer thread once the commits started so far have landed, with no commit
        beside it (commits wait for it); an awaitable future of its result."""
        if self._executor is None or self.loop is None:
            raise StoreError(f"the store {self.location} is not open")
        future = self.loop.create_future()
        self._exclusive.append((call, args, future))
        self._pump()
        return future

    def _pump(self) -> None:
        """Start the next waiting engine call when nothing else runs."""
        if self._exclusive_running or self._flying or not self._exclusive or self.loop is None:
            return
        call, args, future = self._exclusive.popleft()
        if self._executor is None:
            future.set_exception(StoreError(f"the store {self.location} is not open"))
            return self._pump()
        self._exclusive_running = True
        if self._idle is not None:
            self._idle.clear()

        def done(ran: asyncio.Future) -> None:
            self._exclusive_running = False
            if not future.cancelled():
                exc = ran.exception()
                if exc is not None:
                    future.set_exception(exc)
                else:
                    future.set_result(ran.result())
            self._pump()
            if not self._exclusive_running:
                self._after_landing()

        self._executor.run(call, *args).add_done_callback(done)

    def peek_later(self, ranges: list[tuple[int, int]]) -> asyncio.Future:
        """peek_uniques on the writer thread, right after the calls handed to it so far (with one writer thread,
        as SQLite has, it never runs beside one); a future of the loop. Not an exclusive call: quiet() does not
        count it, so the reads of many waiting requests do not keep the store from ever being quiet."""
        if self._executor is None:
            raise StoreError(f"the store {self.location} is not open")
        return self._executor.run(self.peek_uniques, ranges)

    def quiet(self) -> bool:
        """Whether no engine call runs or waits: only the loop starts them, so until it does a read on the loop
        (peek_uniques) has the engine to itself."""
        return not self._busy()

    def _busy(self) -> bool:
        """Whether a commit or an engine call is in flight or waits to run."""
        return bool(self._flying or self._landed or self._exclusive or self._exclusive_running)

    def _kick(self) -> None:
        self._kick_scheduled = False
        if self._executor is None:
            if self._touched:
                log.warning("the store %s is closed: %d changes were not written", self.location,
                            len(self._adds) + len(self._removes))
                self._adds, self._jobs, self._removes, self._touched = {}, {}, [], False
            return
        if self._touched and _can_start(self):
            self._start_commit()

    def _target(self) -> int | None:
        """The batch whose commit makes every change so far durable, or None when all is durable."""
        if self._touched:
            return self._seq
        return self._started if self._started > self._committed else None

    def pending(self) -> bool:
        return self._touched or self._started > self._committed

    @property
    def pending_changes(self) -> int:
        """Adds and removes gathered for the next commit (statistics)."""
        return len(self._adds) + len(self._removes)

    def commit_then(self, callback: Callable[[], None]) -> None:
        target = self._target()
        if target is None:
            assert self.loop is not None
            self.loop.call_soon(callback)
            return
        callbacks = self._callbacks.setdefault(target, [])
        if callback not in callbacks:
            callbacks.append(callback)
        if self._touched and _can_start(self):
            self._start_commit()

    def hold(self, peer: Any, job: Any) -> None:
        # The job's row is in the batch being gathered, or else in one started (the last started lands no earlier
        # than it: outcomes are taken in order).
        _gate(self, peer, self._seq if job.store_ref in self._adds or self._started <= self._committed
              else self._started)

    def holds(self, peer: Any) -> bool:
        gates = self._held.get(peer)
        if gates is None:
            return False
        committed = self._committed
        while gates and gates[0][0] <= committed:
            gates.popleft()
        if gates:
            return True
        del self._held[peer]
        return False

    def release(self, peer: Any) -> list[bytes]:
        if not self.holds(peer):
            return peer.take_chunks()
        gates = self._held[peer]
        count = gates[0][1]
        if not count:
            return []
        out = peer.out
        chunks = out[:count]
        del out[:count]
        for gate in gates:
            gate[1] -= count
        return chunks

    # ------------------------------------------------------------------ commits

    def _start_commit(self) -> None:
        assert self.loop is not None
        if self._executor is None:
            raise StoreError(f"the store {self.location} is not open")
        seq = self._seq
        batch, state = self._adds, self._state
        adds, jobs = list(batch.values()), list(self._jobs.values())
        removes = self._removes + self._retry if self._retry else self._removes
        self._seq = seq + 1
        self._adds, self._jobs, self._removes, self._retry, self._state = {}, {}, [], [], {}
        self._touched = False
        self._after = 0
        self._last_size = len(adds) + len(removes)
        self._flying[seq] = batch
        self._started = seq
        began = time.monotonic()
        if self._idle is not None:
            self._idle.clear()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        rebuild = self._rows_held(adds) if self._lost else None
        future = self._executor.run(self._write_batch, adds, removes, rebuild, state)
        future.add_done_callback(lambda f: self._land(seq, began, f, adds, jobs, removes))

    def _rows_held(self, adds: list[Row]) -> list[Row]:
        """Every stored job the broker still holds whose row is not in this batch, in ref order (spilled jobs
        were only in the lost file: they are gone with it)."""
        new = {row[0] for row in adds}
        rows = [(job.store_ref, job.function.name, job.unique, job.priority, job.when, job.reducer, job.data)
                for job in self.broker.jobs.values()
                if job.store_ref is not None and job.store_ref not in new and job.state != SPILLED]
        rows.sort(key=lambda row: row[0])
        return rows

    def _write_batch(self, adds: list[Row], removes: list[int], rebuild: list[Row] | None,
                     state: dict | None = None) -> None:
        if rebuild is not None:
            self.recreate_engine(rebuild)
            log.warning("recreated the store %s with the %d jobs it held", self.location, len(rebuild))
        self.check_engine()
        if state:
            self.write_state(state)  # first: a crash in between may repeat a job, never lose one
        if adds or removes:
            try:
                self.write(adds, removes)
            except BaseException:
                if adds:
                    try:
                        self.discard([row[0] for row in adds])
                    except Exception as exc:  # the same fault, most likely: the next batch deletes them again
                        log.debug("discarding the rows of a failed batch: %s", exc)
                raise

    def _land(self, seq: int, began: float, future: asyncio.Future, adds: list[Row], jobs: list[Any],
              removes: list[int]) -> None:
        """A batch's write returned: take its outcome, and those of later batches that landed before it, in
        order; then start what waits."""
        del self._flying[seq]
        self.commit_seconds.observe(time.monotonic() - began)
        self._landed[seq] = (future, adds, jobs, removes)
        callbacks: list[Callable[[], None]] = []
        while self._committed + 1 in self._landed:
            done = self._committed + 1
            self._done(done, *self._landed.pop(done))
            callbacks += self._callbacks.pop(done, ())
        self._after_landing()
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("error in a callback after a store commit")

    def _after_landing(self) -> None:
        """Start what waited for a commit or an engine call: engine calls first, then the open batch."""
        self._pump()
        if self._touched and _can_start(self):
            self._start_commit()
        elif not self._busy():
            if self._idle is not None:
                self._idle.set()
            self._arm_idle()

    def _done(self, seq: int, future: asyncio.Future, adds: list[Row], jobs: list[Any], removes: list[int]) -> None:
        """The outcome of batch seq, every earlier one taken: acknowledge (queue) its jobs, or refuse them."""
        exc = future.exception()
        if exc is None:
            self.commits += 1
            self._lost = False
            if self.fault is not None:
                log.warning("the store %s writes again (%d background jobs were refused meanwhile)",
                            self.location, self.refused_jobs)
                self.fault = None
        self._committed = seq
        broker = self.broker
        if exc is not None:
            self._failed(seq, exc, adds, jobs, removes)
        elif broker is not None:
            for job in jobs:
                broker.stored(job)
        if self._held:
            for peer in [peer for peer in self._held if peer.closed]:
                del self._held[peer]

    def _failed(self, seq: int, exc: BaseException, adds: list[Row], jobs: list[Any], removes: list[int]) -> None:
        """A batch did not reach the store: each of its jobs is refused with an ERROR and never runs; its removes
        (and any row it may have left) are written again with the next batch."""
        reason = failure_reason(exc)
        self.failed_commits += 1
        if isinstance(exc, StoreLost):
            self._lost = True
        if reason != self.fault:
            log.error("the store %s cannot write: %s; background submits are answered ERROR QUEUE_ERROR until "
                      "it can (logged once until it writes again)", self.location, reason)
        self.fault = reason
        self._retry.extend(removes)
        broker = self.broker
        # A job stored again (a retry's new time) was acknowledged before: not refused, its row goes again with
        # the next batch. The rows of the others are discarded again with it, in case they reached the file.
        again = {job.store_ref: job for job in jobs
                 if broker is not None and job.state != STORING and broker.jobs.get(job.handle) is job}
        for row in adds:
            job = again.get(row[0])
            if job is None:
                self._retry.append(row[0])
            else:
                self._adds[row[0]] = row
                self._jobs[row[0]] = job
        if again:
            _touch(self)
        refusal = error_packet(b"QUEUE_ERROR", f"the job was not stored: {reason}; it will not run, "
                                               "submit it again later")
        announced = {pack(RES, JOB_CREATED, job.handle) for job in jobs if job.store_ref not in again}
        for peer, gates in self._held.items():
            out = peer.out
            for index in range(gates[0][1], len(out)):  # only held output can announce a job of this batch
                if out[index] in announced:
                    out[index] = refusal
        if broker is not None:
            for job in jobs:
                if broker.refuse(job):  # else it ended meanwhile, or was stored again
                    self.refused_jobs += 1

    # ------------------------------------------------------------------ idle

    def _arm_idle(self) -> None:
        if self.loop is None or self._executor is None or self._closing:
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = self.loop.call_later(self.idle_delay, self._on_idle)

    def _on_idle(self) -> None:
        self._idle_timer = None
        if self._busy() or self._touched or self._executor is None or self._closing:
            return
        self.run_exclusive(self.idle_engine).add_done_callback(self._idle_done)

    def _idle_done(self, future: asyncio.Future) -> None:
        exc = future.exception()
        if isinstance(exc, StoreLost):
            if not self._lost:
                log.error("%s; background submits are refused until it is recreated", exc)
            self._lost = True
            self.fault = failure_reason(exc)
            if not self._busy() and self._executor is not None and not self._closing:
                self._start_commit()
        elif exc is not None:
            if not self._tidy_failing:  # once until it works again: it is retried every idle_delay
                log.warning("tidying the store %s failed: %s", self.location, failure_reason(exc))
            self._tidy_failing = True
        else:
            self._tidy_failing = False
        if not self._busy():
            self._arm_idle()  # checked again every idle_delay while nothing is written


# The rules below run for every stored job. They are functions, not methods: the engines subclass GroupCommitStore
# in Python, and compiled, a method called on such an instance goes through Python's method lookup and call
# (add() cost 3.2k instructions per job with its two such calls, 1.6k without); a function of the module is called
# directly.


def _can_start(self: GroupCommitStore) -> bool:
    """Whether the open batch may start now, beside the commits in flight."""
    if self._exclusive or self._exclusive_running or len(self._flying) >= self.writers:
        return False
    if self._flying:
        if self._state or self._lost or self._after in self._flying:
            return False
        # Beside a commit only a batch as big as the last one started: while the store keeps up, batches
        # stay as big as with one commit at a time (fewer commits, less CPU per job); once it falls behind
        # (a slow disk or network, a busy machine) the next batch no longer waits for the last one.
        return len(self._adds) + len(self._removes) >= self._last_size
    return True


def _touch(self: GroupCommitStore) -> None:
    self._touched = True
    if not self._kick_scheduled and self.loop is not None and _can_start(self):
        self._kick_scheduled = True
        self.loop.call_soon(self._kick)


def _gate(self: GroupCommitStore, peer: Any, target: int) -> None:
    """Hold the peer's output from its next chunk on until the batch numbered target is committed."""
    gates = self._held.get(peer)
    if gates is None:
        self._held[peer] = deque(([target, len(peer.out)],))
    elif gates[-1][0] < target:
        gates.append([target, len(peer.out)])
