"""A cluster of geard on one PostgreSQL database: leases, take-over of a dead node's jobs, hand-off on leave.

Every node owns the background jobs it accepted (rows keyed by node) and renews a lease row every
lease_interval; every batch it commits renews it too, inside the batch's transaction. A node whose lease is older
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
import time
from typing import Any

from .store import StoreError

log = logging.getLogger("geartrain.cluster")

#: Jobs claimed per transaction: other nodes claim the rest meanwhile, and the loop is never held long.
CLAIM_CHUNK = 1000


def unique_handle(function: bytes, key: bytes) -> bytes:
    """The handle of a background job with a unique, the same on every node of a cluster."""
    digest = hashlib.blake2b(function + b"\x00" + key, digest_size=12).hexdigest()
    return b"H:geartrain-cluster:" + digest.encode()


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
        broker.unique_handle = unique_handle

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"geartrain-cluster-{self.node}")

    async def stop(self) -> None:
        """Stop looking after the lease and hand the queued jobs to the live nodes."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        try:
            await self.store.run(self.store.hand_off)
            log.info("node %s left the cluster: its queued jobs go to the live nodes", self.node)
        except StoreError as exc:
            log.warning("node %s could not hand its jobs off (%s): they are taken over once its lease "
                        "expires", self.node, exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.store.lease_interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node %s: error while renewing its lease or taking jobs over", self.node)

    async def tick(self) -> None:
        """One round: renew (or rejoin), then take over every dead node."""
        from .store.postgres import LeaseLost

        store = self.store
        try:
            await store.run(store.renew)
        except LeaseLost as exc:
            log.error("node %s: %s", self.node, exc)
            owned = await store.run(store.rejoin)
            self.drop_unowned(owned)
        except StoreError:
            return  # unreachable: the store logged why and backs off; try again next round
        for dead in await store.run(store.dead_nodes):
            await self.take_over(dead)

    async def take_over(self, dead: str) -> int:
        """Claim a dead node's jobs, chunk by chunk, into this node's broker."""
        store, broker = self.store, self.broker
        began = time.monotonic()
        total = 0
        while True:
            base = store.reserve(CLAIM_CHUNK)
            claimed = await store.run(store.claim, dead, base, CLAIM_CHUNK)
            for item in claimed:
                stored = item.job
                job = broker.restore(stored.function, stored.unique, stored.data, stored.priority, stored.when,
                                     stored.ref, stored.reducer)
                job.retries = max(job.retries, item.attempts)
                if job.store_ref != stored.ref:  # coalesced onto a job of ours: one row is enough
                    store.remove(_Ref(stored.ref))
            total += len(claimed)
            flush = getattr(self.server, "schedule_flush", None)
            if flush is not None and claimed:
                flush()  # the wake-ups of sleeping workers
            if len(claimed) < CLAIM_CHUNK:
                break
        if total:
            took = time.monotonic() - began
            self.claimed += total
            self.last_takeover = (dead, total, took)
            log.warning("node %s took over %d jobs of node %s (its lease expired) in %.2fs", self.node, total,
                        dead, took)
        return total

    def drop_unowned(self, owned: set[int]) -> None:
        refs = {job.store_ref for job in self.broker.jobs.values()
                if job.store_ref is not None and job.store_ref not in owned}
        self.drop_refs(refs, "its lease was lost and another node took the job over")

    def drop_refs(self, refs: set[int], why: str) -> None:
        """Forget the jobs stored under these refs: another node runs them. A running one finishes here."""
        if not refs:
            return
        from .broker import RUNNING

        broker = self.broker
        jobs = [job for job in broker.jobs.values() if job.store_ref in refs]
        running = 0
        for job in jobs:
            job.store_ref = None  # the row is another node's now: never delete it
            if job.state == RUNNING:
                running += 1
            else:
                broker.cancel(job.handle)
        self.dropped += len(jobs)
        log.warning("node %s dropped %d jobs (%d of them already running here): %s", self.node, len(jobs),
                    running, why)


class _Ref:
    """What store.remove() reads of a job: its ref."""

    __slots__ = ("store_ref",)

    def __init__(self, ref: int) -> None:
        self.store_ref = ref
