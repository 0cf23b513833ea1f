"""A cluster of geard on one PostgreSQL database: leases, take-over of a dead node's jobs, hand-off on leave.

Every node owns the background jobs it accepted (rows keyed by node) and renews a lease row every
lease_interval; every batch it commits checks it inside the batch's transaction (a share lock on the node's row at
its generation, which a take-over's generation bump waits for and then fails). A node whose lease is older
than takeover_after is dead: a live node claims its rows in chunks (row locks, SKIP LOCKED), re-keys them as its
own with the attempt count raised, and adds them to its broker as start-up replay does. Jobs are run at least
once: a job that was running on the dead node runs again. A node that lost its lease while alive (it lost the
database) finds out at its next renewal, drops the jobs it no longer owns and rejoins under a new generation.

The broker is reached through small calls only: restore() (add a job), cancel() (drop a queued one), jobs
(find a job by its ref), and the unique-handle hook that gives a unique background job the same handle on
every node.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from .broker import QUEUED, RUNNING, SCHEDULED
from .store import StoredJob, StoreError

log = logging.getLogger("geartrain.cluster")

#: Jobs claimed per transaction: other nodes claim the rest meanwhile, and the loop is never held long.
CLAIM_CHUNK = 1000
#: Share of --takeover-after without a renewed lease after which a node stops handing out its stored jobs.
FENCE_SHARE = 0.5


def unique_handle(function: bytes, key: bytes) -> bytes:
    """The handle of a background job with a unique, the same on every node of a cluster."""
    digest = hashlib.blake2b(function + b"\x00" + key, digest_size=12).hexdigest()
    return b"H:geartrain-cluster:" + digest.encode()


class LeaseLost(StoreError):
    """Another node took this node's jobs over (its lease had expired): what it held is no longer its own."""


@dataclass(frozen=True)
class ClaimedJob:
    """A stored job with the number of times it was taken over from a dead node (its attempts)."""

    job: StoredJob
    attempts: int


class Cluster:
    """This node's part in the cluster: renews the lease, takes over dead nodes, drops what it lost."""

    def __init__(self, store: Any, broker: Any, server: Any = None) -> None:
        self.store = store
        self.broker = broker
        self.server = server
        self.node = store.node
        self._task: asyncio.Task | None = None
        #: Statistics: jobs taken over from other nodes, jobs dropped because another node holds them.
        self.claimed = 0
        self.dropped = 0
        self.last_takeover: tuple[str, int, float] | None = None
        #: When the lease was last renewed (monotonic), and whether the stored jobs are withheld meanwhile.
        self._renewed = time.monotonic()
        self.fenced = False
        self.leaving = False
        self._wake = asyncio.Event()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        broker.unique_handle = unique_handle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name=f"geartrain-cluster-{self.node}")
        watch = getattr(self.store, "watch_hand_offs", None)
        if watch is not None:
            def handed_off(node: str) -> None:
                try:
                    loop.call_soon_threadsafe(self._wake.set)
                except RuntimeError:  # the loop closed meanwhile
                    pass

            self._watcher = threading.Thread(target=watch, args=(handed_off, self._stopping), daemon=True,
                                             name=f"geartrain-hand-offs-{self.node}")
            self._watcher.start()

    async def stop(self) -> None:
        """Stop renewing and taking over (the store hands the queued jobs off once its last batch is written)."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await asyncio.get_running_loop().run_in_executor(None, watcher.join, 5.0)

    async def _run(self) -> None:
        while True:
            try:  # a round every lease interval, and at once when another node hands its jobs off
                await asyncio.wait_for(self._wake.wait(), self.store.lease_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node %s: error while renewing its lease or taking jobs over", self.node)

    async def tick(self) -> None:
        """One round: renew (or rejoin, or fence), then take over every dead node."""
        if not await self.renew() or self.leaving:
            return
        for dead in await self.store.run(self.store.dead_nodes):
            await self.take_over(dead)

    async def renew(self) -> bool:
        """Renew the lease; after losing it rejoin, and when unreachable fence. Whether it was renewed."""
        store = self.store
        now = time.monotonic()
        try:
            await store.run(store.renew)
        except LeaseLost as exc:
            log.error("node %s: %s", self.node, exc)
            written = store.written_below()
            self.resync(await store.run(store.rejoin), written,
                        "its lease was lost and another node took the job over")
            self._renewed = time.monotonic()
            return False
        except StoreError:
            # Unreachable (the store logged why and backs off). Before another node may take our jobs over,
            # stop handing them out: they stay in the database, and come back once the lease is renewed.
            if not self.fenced and now - self._renewed > store.takeover_after * FENCE_SHARE:
                self.fence()
            return False
        self._renewed = now
        if self.fenced:
            written = store.written_below()
            self.resync(await store.run(store.owned), written, "another node took the job over")
        return True

    async def take_over(self, dead: str) -> int:
        """Claim a dead node's jobs, chunk by chunk, into this node's broker. The lease is renewed between chunks
        when due: a take-over of many jobs, or one under load, can last longer than --takeover-after, and this
        node must not look dead meanwhile (another node would take over what it claimed and runs)."""
        store = self.store
        began = time.monotonic()
        total = 0
        while True:
            if time.monotonic() - self._renewed >= store.lease_interval and not await self.renew():
                break
            base = store.reserve(CLAIM_CHUNK)
            claimed = await store.run(store.claim, dead, base, CLAIM_CHUNK)
            self.restore(claimed)
            total += len(claimed)
            if len(claimed) < CLAIM_CHUNK:
                break
        if total:
            took = time.monotonic() - began
            self.claimed += total
            self.last_takeover = (dead, total, took)
            log.warning("node %s took over %d jobs of node %s (its lease expired) in %.2fs", self.node, total,
                        dead, took)
        return total

    def restore(self, items: list[ClaimedJob]) -> None:
        """Add stored jobs to the broker, as start-up replay does, with their attempt counts as retries."""
        broker = self.broker
        for item in items:
            stored = item.job
            job = broker.restore(stored.function, stored.unique, stored.data, stored.priority, stored.when,
                                 stored.ref, stored.reducer)
            job.retries = max(job.retries, item.attempts)
            if job.store_ref != stored.ref:  # coalesced onto a job of ours: one row is enough
                self.store.remove(_Ref(stored.ref))
        flush = getattr(self.server, "schedule_flush", None)
        if flush is not None and items:
            flush()  # the wake-ups of sleeping workers

    async def leave(self) -> None:
        """A graceful shutdown began: the queued stored jobs go to the live nodes now; the running ones finish
        here (their rows, and whatever is queued after this, are handed off when the store closes)."""
        self.leaving = True  # it takes nothing over from now on
        refs = self._queued_refs()
        self.drop_refs(refs, "the node is leaving", quiet=True)
        if not refs:
            return
        try:
            await self.store.run(self.store.hand_off_jobs, sorted(refs))
        except StoreError as exc:
            log.warning("node %s could not hand %d queued jobs off (%s): they are taken over once its lease "
                        "expires", self.node, len(refs), exc)
            return
        log.info("node %s is leaving: %d queued jobs handed to the live nodes", self.node, len(refs))

    def _queued_refs(self) -> set[int]:
        return {job.store_ref for job in self.broker.jobs.values()
                if job.store_ref is not None and job.state in (QUEUED, SCHEDULED)}

    def fence(self) -> None:
        """Cut off from the database for a while: drop the queued stored jobs (they stay in the database)."""
        self.fenced = True
        refs = self._queued_refs()
        log.error("node %s has not renewed its lease for %.1fs: its %d queued background jobs are no longer "
                  "handed out until it reaches the database again", self.node, time.monotonic() - self._renewed,
                  len(refs))
        self.drop_refs(refs, "the node is cut off from the database", quiet=True)

    def resync(self, owned: list[ClaimedJob], written: int, why: str) -> None:
        """Make the broker hold exactly the stored jobs this node owns: drop the others, bring back the missing.

        `owned` was read after every batch with refs below `written` and before any other: a job with a higher
        ref may still be on its way to the database, and is kept."""
        self.fenced = False
        refs = {item.job.ref for item in owned}
        present = {job.store_ref for job in self.broker.jobs.values() if job.store_ref is not None}
        self.drop_refs({ref for ref in present - refs if ref < written}, why)
        missing = [item for item in owned if item.job.ref not in present]
        if missing:
            log.warning("node %s: %d of its stored jobs are back in its queues", self.node, len(missing))
            self.restore(missing)

    def drop_refs(self, refs: set[int], why: str, quiet: bool = False) -> None:
        """Forget the jobs stored under these refs: another node runs them. A running one finishes here."""
        if not refs:
            return
        broker = self.broker
        jobs = [job for job in broker.jobs.values() if job.store_ref in refs]
        running = 0
        for job in jobs:
            job.store_ref = None  # the row is not ours to delete
            if job.state == RUNNING:
                running += 1
            else:
                broker.cancel(job.handle)
        if not quiet:
            self.dropped += len(jobs)
            log.warning("node %s dropped %d jobs (%d of them already running here): %s", self.node, len(jobs),
                        running, why)


class _Ref:
    """What store.remove() reads of a job: its ref."""

    __slots__ = ("store_ref",)

    def __init__(self, ref: int) -> None:
        self.store_ref = ref
