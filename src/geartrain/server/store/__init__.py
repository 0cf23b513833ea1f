"""The durable queue: the Store interface the broker talks to, group commit on a writer thread, and open_store().

How the server uses a store (the contract every engine keeps):

- The broker calls ``ref = store.add(job)`` for each new background job and ``store.remove(job)`` when a stored
  job ends (WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION, ``cancel job``, retries exhausted). Both are cheap and
  synchronous on the event loop: they only record the change in the batch being gathered.
- Right before it queues a JOB_CREATED for a background job the broker calls ``store.hold(peer)``; the server
  then does not write that peer's output while ``store.holds(peer)`` is true, that is until every change made so
  far is durable. A JOB_CREATED is therefore never seen before its job is on disk.
- ``pending()`` tells whether any change is not durable yet; ``commit_then(cb)`` makes sure a commit covering
  every change made so far runs, and calls ``cb`` on the loop once it has.
- Changes are grouped: all the adds and removes that arrive while one commit runs go into the next one, so one
  sync serves many submits. The commits run one at a time, in order, on a single writer thread.
- ``start(server)`` opens the store and replays every stored job into ``server.broker`` in the order they were
  added; ``close()`` commits what is left and closes.

An engine (SQLite here; PostgreSQL or Redis later) only implements the blocking methods of GroupCommitStore
(``open_engine``, ``load``, ``write``, ``close_engine``), which always run on the writer thread.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("geartrain.store")

__all__ = [
    "GroupCommitStore", "Store", "StoreError", "StoredJob", "default_sqlite_path", "open_store",
]


class StoreError(RuntimeError):
    """The durable queue cannot be opened or used; the message says which file and what to do."""


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


class Store(abc.ABC):
    """What the broker and the Server call. All methods run on the event loop thread and never block."""

    #: Where the jobs live, for log lines ("replayed N jobs from <location>").
    location: str = ""

    @abc.abstractmethod
    async def start(self, server: Any) -> None:
        """Open the store and replay every stored job into server.broker (before the server listens)."""

    @abc.abstractmethod
    def add(self, job: Any) -> Any:
        """Record a new background job; returns the ref the broker keeps in job.store_ref."""

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
    def hold(self, peer: Any) -> None:
        """Hold the peer's output until every change made so far is durable."""

    @abc.abstractmethod
    def holds(self, peer: Any) -> bool:
        """Whether the peer's output must still wait."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Commit what is left and close."""


Row = tuple[int, bytes, bytes, int, float, bytes, bytes]


class GroupCommitStore(Store):
    """Batching, holds and replay for engines whose writes block: subclasses give the four blocking methods.

    The batch being gathered has a sequence number; a held peer waits for the number that was current when it
    was held. Commits run one after another on a single writer thread (so they apply in order), and whatever
    gathers while one runs is the next batch.
    """

    def __init__(self, location: str) -> None:
        self.location = location
        self.loop: asyncio.AbstractEventLoop | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._next_ref = 1
        # The batch being gathered: its number, its adds by ref (so a remove can cancel one), its removes.
        self._seq = 1
        self._adds: dict[int, Row] = {}
        self._removes: list[int] = []
        self._touched = False
        self._inflight: int | None = None
        self._committed = 0
        self._kick_scheduled = False
        self._callbacks: dict[int, list[Callable[[], None]]] = {}
        #: peer -> the batch it waits for (pruned after each commit).
        self._held: dict[Any, int] = {}
        # Peers whose JOB_CREATED was in a batch that failed to commit: cut off, never released.
        self._doomed: weakref.WeakSet[Any] = weakref.WeakSet()
        self._closing = False
        self._idle: asyncio.Event | None = None
        self.commits = 0  # batches committed (statistics, tests)

    # ------------------------------------------------------------------ engine hooks (writer thread)

    @abc.abstractmethod
    def open_engine(self) -> None:
        """Open (create) the store; raise StoreError with a clear message if it cannot be used."""

    @abc.abstractmethod
    def load(self) -> Iterable[StoredJob]:
        """Every stored job in ascending ref order (the order they were added)."""

    @abc.abstractmethod
    def write(self, adds: list[Row], removes: list[int]) -> None:
        """Apply one batch atomically and durably; return only once it would survive a crash."""

    @abc.abstractmethod
    def close_engine(self) -> None:
        """Close the store."""

    # ------------------------------------------------------------------ life cycle

    async def start(self, server: Any) -> None:
        loop = self.loop = asyncio.get_running_loop()
        began = time.monotonic()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="geartrain-store")
        try:
            await loop.run_in_executor(self._executor, self.open_engine)
            jobs = await loop.run_in_executor(self._executor, lambda: list(self.load()))
        except BaseException:
            await self._shutdown_executor()
            raise
        broker = server.broker
        duplicates = []
        last = 0
        for stored in jobs:
            last = max(last, stored.ref)
            job = broker.restore(stored.function, stored.unique, stored.data, stored.priority, stored.when,
                                 stored.ref, stored.reducer)
            if job.store_ref != stored.ref:
                duplicates.append(stored.ref)
        self._next_ref = max(self._next_ref, last + 1)
        if duplicates:
            log.warning("%d stored jobs repeated the function and unique of an earlier one: removed",
                        len(duplicates))
            await loop.run_in_executor(self._executor, self.write, [], duplicates)
        log.info("replayed %d jobs from %s in %.2fs", len(jobs) - len(duplicates), self.location,
                 time.monotonic() - began)

    async def close(self) -> None:
        if self._executor is None or self._closing:
            return
        self._closing = True
        assert self._idle is not None
        # Let the running commit and the batch behind it finish (each started one follows the other).
        while self._inflight is not None or self._touched:
            if self._inflight is None:
                self._start_commit()
            self._idle.clear()
            await self._idle.wait()
        await self._shutdown_executor(close_engine=True)

    async def _shutdown_executor(self, close_engine: bool = False) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        try:
            if close_engine:
                await loop.run_in_executor(executor, self.close_engine)
        finally:
            executor.shutdown(wait=False)

    # ------------------------------------------------------------------ broker side

    def add(self, job: Any) -> int:
        ref = self._next_ref
        self._next_ref = ref + 1
        self._adds[ref] = (ref, job.function.name, job.unique, job.priority, job.when, job.reducer, job.data)
        self._touch()
        return ref

    def remove(self, job: Any) -> None:
        ref = job.store_ref
        if ref is None:
            return
        if self._adds.pop(ref, None) is None:  # not in the open batch: it was (or is being) written
            self._removes.append(ref)
        self._touch()

    def _touch(self) -> None:
        self._touched = True
        if self._inflight is None and not self._kick_scheduled and self.loop is not None:
            self._kick_scheduled = True
            self.loop.call_soon(self._kick)

    def _kick(self) -> None:
        self._kick_scheduled = False
        if self._executor is None:
            if self._touched:
                log.warning("the store %s is closed: %d changes were not written", self.location,
                            len(self._adds) + len(self._removes))
                self._adds, self._removes, self._touched = {}, [], False
            return
        if self._inflight is None and self._touched:
            self._start_commit()

    def _target(self) -> int | None:
        """The batch whose commit makes every change so far durable, or None when all is durable."""
        if self._touched:
            return self._seq
        return self._inflight

    def pending(self) -> bool:
        return self._touched or self._inflight is not None

    def commit_then(self, callback: Callable[[], None]) -> None:
        target = self._target()
        if target is None:
            assert self.loop is not None
            self.loop.call_soon(callback)
            return
        callbacks = self._callbacks.setdefault(target, [])
        if callback not in callbacks:
            callbacks.append(callback)
        if self._inflight is None:
            self._start_commit()

    def hold(self, peer: Any) -> None:
        target = self._target()
        if target is not None:
            self._held[peer] = target

    def holds(self, peer: Any) -> bool:
        target = self._held.get(peer)
        if target is None:
            return bool(self._doomed) and peer in self._doomed
        return target > self._committed

    # ------------------------------------------------------------------ commits

    def _start_commit(self) -> None:
        assert self._inflight is None and self.loop is not None
        if self._executor is None:
            raise StoreError(f"the store {self.location} is not open")
        seq = self._seq
        adds, removes = list(self._adds.values()), self._removes
        self._seq = seq + 1
        self._adds = {}
        self._removes = []
        self._touched = False
        self._inflight = seq
        if self._idle is not None:
            self._idle.clear()
        future = self.loop.run_in_executor(self._executor, self._write_batch, adds, removes)
        future.add_done_callback(lambda f, seq=seq: self._done(seq, f))

    def _write_batch(self, adds: list[Row], removes: list[int]) -> None:
        if adds or removes:
            self.write(adds, removes)

    def _done(self, seq: int, future: asyncio.Future) -> None:
        self._inflight = None
        exc = future.exception()
        if exc is not None:
            self._failed(seq, exc)
        else:
            self.commits += 1
        self._committed = seq
        if self._held:
            self._held = {peer: target for peer, target in self._held.items() if target > seq}
        if self._touched:
            self._start_commit()
        elif self._idle is not None:
            self._idle.set()
        for callback in self._callbacks.pop(seq, ()):
            try:
                callback()
            except Exception:
                log.exception("error in a callback after a store commit")

    def _failed(self, seq: int, exc: BaseException) -> None:
        """A batch did not reach the disk: the clients it would have acknowledged are cut off unanswered."""
        doomed = [peer for peer, target in list(self._held.items()) if target == seq]
        log.error("the store %s failed to commit %s: %s; closing %d connections that would have been told "
                  "their jobs were stored", self.location, f"batch {seq}", exc, len(doomed))
        for peer in doomed:
            self._doomed.add(peer)
            del self._held[peer]
            conn = getattr(peer, "conn", None)
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()


def default_sqlite_path() -> Path:
    """Where a plain `geard` keeps its queue: $XDG_STATE_HOME/geartrain/queue.sqlite3, else
    ~/.local/state/geartrain/queue.sqlite3."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "geartrain" / "queue.sqlite3"


def open_store(config: Any) -> Store:
    """The store a ServerConfig asks for (queue_type "sqlite": sqlite_db, or the default path; "postgres":
    postgres_dsn, shared by the cluster's nodes)."""
    if config.queue_type == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(config.sqlite_db or default_sqlite_path())
    if config.queue_type == "postgres":
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise StoreError("the postgres queue needs psycopg 3: pip install 'psycopg[binary]'") from exc
        from .postgres import PostgresStore

        if not config.postgres_dsn:
            raise StoreError("the postgres queue needs a database: --postgres-dsn (or --libpq-conninfo) DSN")
        if not 0 < config.lease_interval < config.takeover_after:
            raise StoreError(f"--takeover-after ({config.takeover_after:g}) must be longer than --lease-interval "
                             f"({config.lease_interval:g}, above 0), or live nodes would be taken over")
        return PostgresStore(config.postgres_dsn, config.node_name(), lease_interval=config.lease_interval,
                             takeover_after=config.takeover_after, gearmand_table=config.postgres_table)
    raise StoreError(f"no durable store for queue type {config.queue_type!r}")
