"""Server state beside the jobs (dead letters, schedules, attempts): the SQLite store keeps it across a reopen,
and a store engine that keeps no state still runs (the server then holds it in memory)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import SimpleNamespace

from geartrain.server.broker import Broker
from geartrain.server.store import GroupCommitStore, Row, StoredJob
from geartrain.server.store.sqlite import SQLiteStore

DEADLINE = 30.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, DEADLINE))


async def durable(store: GroupCommitStore) -> None:
    done = asyncio.Event()
    store.commit_then(done.set)
    await done.wait()


def test_sqlite_keeps_state_items_across_a_reopen(tmp_path):
    db = tmp_path / "q.db"

    async def first() -> None:
        store = SQLiteStore(db)
        await store.start(SimpleNamespace(broker=Broker(b"H:t", store=store)))
        assert store.stored_state() == {}
        store.save_state("dead", "aa", b"one")
        store.save_state("dead", "bb", b"two")
        store.save_state("schedule", "nightly", b"\x00binary")
        await durable(store)
        store.save_state("dead", "aa", None)  # forgotten
        store.save_state("dead", "bb", b"two, changed")
        await store.close()

    async def second() -> dict:
        store = SQLiteStore(db)
        await store.start(SimpleNamespace(broker=Broker(b"H:t", store=store)))
        state = store.stored_state()
        assert store.stored_state() == {}  # handed over once
        await store.close()
        return state

    run(first())
    assert run(second()) == {"dead": {"bb": b"two, changed"}, "schedule": {"nightly": b"\x00binary"}}


class StatelessStore(GroupCommitStore):
    """An engine that implements only the four job methods, as an engine written before state existed."""

    def __init__(self) -> None:
        super().__init__("memory-test")
        self.rows: dict[int, Row] = {}

    def open_engine(self) -> None:
        pass

    def load(self) -> Iterable[StoredJob]:
        return [StoredJob(*row) for row in sorted(self.rows.values())]

    def write(self, adds: list[Row], removes: list[int]) -> None:
        self.rows.update((row[0], row) for row in adds)
        for ref in removes:
            self.rows.pop(ref, None)

    def close_engine(self) -> None:
        pass


def test_an_engine_without_state_support_still_commits_jobs_and_state_changes():
    async def body() -> None:
        store = StatelessStore()
        broker = Broker(b"H:t", store=store)
        await store.start(SimpleNamespace(broker=broker))
        assert store.stored_state() == {}
        job = broker.submit(None, b"f", b"u", b"d", 1, True)
        store.save_state("dead", "x", b"kept in memory only")
        await durable(store)
        assert [row[1:3] for row in store.rows.values()] == [(b"f", b"u")]
        assert job.store_ref in store.rows
        await store.close()

    run(body())
