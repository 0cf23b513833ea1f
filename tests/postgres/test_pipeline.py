"""Several group commits in flight on one real PostgreSQL (--postgres-writers): the promises of one commit at a
time still hold. The database is slowed deterministically: another session holds an uncommitted row with the
same function and unique as a job (its insert waits for that session), or the node's row locked (every batch
waits), and the tests wait until PostgreSQL reports the batch waiting on that lock."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import psycopg

from geartrain.protocol import constants as C
from geartrain.protocol.codec import Decoder
from geartrain.server.broker import QUEUED, STORING, Broker
from geartrain.server.store.postgres import PostgresStore

from cluster_nodes import DEADLINE, rows, wait_for
from conftest import start_geartrain
from wire import Wire


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, DEADLINE))


async def started(dsn: str, writers: int = 2) -> tuple[Broker, PostgresStore]:
    store = PostgresStore(dsn, "a", writers=writers)
    broker = Broker(b"H:test", store=store)
    await store.start(SimpleNamespace(broker=broker))
    return broker, store


async def durable(store: PostgresStore) -> None:
    done = asyncio.Event()
    store.commit_then(done.set)
    await done.wait()


async def until(condition, what: str) -> None:
    """Let the loop (and the writer threads) run until condition() holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def waiting_on_a_lock(dsn: str) -> int:
    """Sessions of geard node a that wait on a lock (a batch held up by the test's other session)."""
    return rows(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'geard a' "
                     "AND wait_event_type = 'Lock'")[0][0]


def hold_unique(dsn: str, function: bytes, unique: bytes) -> psycopg.Connection:
    """Another session's uncommitted row with this function and unique: an insert of the same waits for it."""
    conn = psycopg.connect(dsn)
    conn.execute("INSERT INTO geartrain_jobs (node, ref, function, unique_key, priority, when_to_run, reducer, data) "
                 "VALUES ('other', 1, %s, %s, 1, 0, '', '')", (function, unique))
    return conn


def created(peer) -> list[bytes]:
    return [p.args[0] for p in Decoder(accept=C.RES).feed(peer.take_output()) if p.ptype == C.JOB_CREATED]


def test_a_later_batch_committed_first_is_acknowledged_only_after_the_earlier_one(postgres_dsn):
    async def main() -> None:
        broker, store = await started(postgres_dsn)
        first, second = broker.connect(1), broker.connect(2)
        blocker = hold_unique(postgres_dsn, b"f", b"x")
        try:
            broker.handle(first, C.SUBMIT_JOB_BG, (b"f", b"x", b"1"))  # batch 1: its insert waits for blocker
            await until(lambda: waiting_on_a_lock(postgres_dsn) == 1, "batch 1 waiting on the lock")
            broker.handle(second, C.SUBMIT_JOB_BG, (b"f", b"y", b"2"))  # batch 2, beside it: committed
            await until(lambda: rows(postgres_dsn, "SELECT count(*) FROM geartrain_jobs WHERE unique_key = 'y'")
                        == [(1,)] and not store._flying.get(2), "batch 2 committed and landed")
            (y,) = [job for job in broker.jobs.values() if job.unique == b"y"]
            assert y.state == STORING  # not queued, not acknowledged: batch 1 has not landed
            assert store.holds(first) and store.holds(second)
        finally:
            blocker.rollback()
            blocker.close()
        await durable(store)
        assert len(created(first)) == 1 and len(created(second)) == 1
        assert {job.unique: job.state for job in broker.jobs.values()} == {b"x": QUEUED, b"y": QUEUED}
        await store.close()

    run(main())


def test_jobs_committed_out_of_order_replay_in_submission_order_per_priority(postgres_dsn):
    submitted: dict[int, list[bytes]] = {0: [], 1: [], 2: []}

    async def first() -> None:
        broker, store = await started(postgres_dsn)
        client = broker.connect(1)
        blocker = hold_unique(postgres_dsn, b"f", b"u0")
        try:
            for i in range(30):
                if i == 1:  # u0 alone in batch 1, held up; the rest commit beside it and land first
                    await until(lambda: waiting_on_a_lock(postgres_dsn) == 1, "batch 1 waiting on the lock")
                priority = i % 3
                ptype = (C.SUBMIT_JOB_HIGH_BG, C.SUBMIT_JOB_BG, C.SUBMIT_JOB_LOW_BG)[priority]
                broker.handle(client, ptype, (b"f", b"u%d" % i, b""))
                submitted[priority].append(b"u%d" % i)
            await until(lambda: rows(postgres_dsn, "SELECT count(*) FROM geartrain_jobs WHERE node = 'a'")
                        == [(29,)], "the later batches committed")
        finally:
            blocker.rollback()
            blocker.close()
        await durable(store)
        await store.close()

    async def second() -> None:
        broker, store = await started(postgres_dsn)
        for priority in (0, 1, 2):
            queue = broker.functions[b"f"].queues[priority]
            assert [job.unique for job in queue if job.state == QUEUED] == submitted[priority]
        await store.close()

    run(first())
    run(second())


def test_a_remove_of_a_job_whose_insert_is_in_flight_is_written_after_it(postgres_dsn):
    async def main() -> None:
        broker, store = await started(postgres_dsn)
        client = broker.connect(1)
        blocker = hold_unique(postgres_dsn, b"f", b"x")
        try:
            broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"x", b"1"))
            await until(lambda: waiting_on_a_lock(postgres_dsn) == 1, "batch 1 waiting on the lock")
            (job,) = broker.jobs.values()
            assert broker.cancel(job.handle)  # cancelled while its row is being stored: the delete goes next
            broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"z", b"2"))
            # Either the delete's batch waits for batch 1 (as it must) or, were it written beside it, it ran and
            # deleted nothing.
            await until(lambda: store._after in store._flying or 2 in store._landed, "batch 2 waiting or done")
        finally:
            blocker.rollback()
            blocker.close()
        await durable(store)
        assert rows(postgres_dsn, "SELECT unique_key FROM geartrain_jobs") == [(b"z",)]
        await store.close()

    run(main())


def test_a_row_losing_to_a_stale_row_of_its_own_node_is_refused_not_acknowledged(postgres_dsn):
    """A row of this node with the same unique that the broker no longer holds is one whose removal failed
    beside the insert: the job is refused with an ERROR, never acknowledged and then dropped."""
    async def main() -> None:
        broker, store = await started(postgres_dsn)
        with psycopg.connect(postgres_dsn) as conn:
            conn.execute("INSERT INTO geartrain_jobs (node, ref, function, unique_key, priority, when_to_run, "
                         "reducer, data) VALUES ('a', 1000000, 'f', 'u', 1, 0, '', '')")
        client = broker.connect(1)
        broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"u", b"1"))
        broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"v", b"2"))
        await durable(store)
        (error, refused) = Decoder(accept=C.RES).feed(client.take_output())
        assert error.ptype == C.ERROR and b"still being removed" in error.args[1]
        assert refused.ptype == C.ERROR  # the whole batch failed, as any failed batch
        assert not broker.jobs and store.refused_jobs == 2
        await store.close()

    run(main())


def test_job_created_arrives_only_once_the_row_is_committed(postgres_dsn):
    server = start_geartrain(queue_type="postgres", postgres_dsn=postgres_dsn, cluster_node="a",
                             postgres_writers=2)
    try:
        locker = psycopg.connect(postgres_dsn)
        locker.execute("SELECT 1 FROM geartrain_nodes WHERE node = 'a' FOR UPDATE")  # every batch waits
        try:
            with Wire(server.host, server.port, timeout=DEADLINE) as client:
                client.send_raw(b"".join(client.conn.send_packet(C.SUBMIT_JOB_BG, b"f", b"u%d" % i, b"")
                                         for i in range(20)))
                wait_for(lambda: waiting_on_a_lock(postgres_dsn) >= 1, what="a batch waiting on the lock")
                broker = server.server.broker
                assert all(job.state == STORING for job in list(broker.jobs.values()))
                assert rows(postgres_dsn) == [(0,)]
                locker.rollback()
                for _ in range(20):
                    client.expect(C.JOB_CREATED)
                    assert rows(postgres_dsn)[0][0] >= 1  # its row is there when the JOB_CREATED is
                assert rows(postgres_dsn) == [(20,)]
        finally:
            locker.close()
    finally:
        server.stop()
