"""The SQLite store without sockets: group commit, holds, replay order, uniques, damaged and torn files."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from geartrain.protocol import constants as C
from geartrain.protocol.codec import Decoder
from geartrain.server.broker import QUEUED, SCHEDULED, Broker
from geartrain.server.store import StoreError
from geartrain.server.store.engines import default_sqlite_path, open_store
from geartrain.server.store.sqlite import INVALID_TABLE, TABLE, SQLiteStore

DEADLINE = 30.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, DEADLINE))


async def started(path: Path, store_class: type[SQLiteStore] = SQLiteStore, **state) -> tuple[Broker, SQLiteStore]:
    store = store_class(path)
    broker = Broker(b"H:test", store=store)
    await store.start(SimpleNamespace(broker=broker, **state))
    return broker, store


async def durable(store: SQLiteStore) -> None:
    """Wait until every change so far is committed."""
    done = asyncio.Event()
    store.commit_then(done.set)
    await done.wait()


def rows(path: Path, table: str = TABLE) -> list[tuple]:
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
    finally:
        conn.close()


def answers(peer) -> list:
    """The packets queued for a peer (taken out of its output)."""
    return Decoder(accept=C.RES).feed(peer.take_output())


def queue_of(broker: Broker, name: bytes, priority: int) -> list[tuple[bytes, bytes]]:
    function = broker.functions[name]
    return [(job.unique, job.data) for job in function.queues[priority] if job.state == QUEUED]


def test_jobs_replay_in_submission_order_per_priority_with_all_fields(tmp_path):
    db = tmp_path / "q.db"
    submitted = {p: [] for p in (0, 1, 2)}

    async def first() -> None:
        broker, store = await started(db)
        client = broker.connect(1)
        for i in range(30):
            priority = i % 3
            ptype = (C.SUBMIT_JOB_HIGH_BG, C.SUBMIT_JOB_BG, C.SUBMIT_JOB_LOW_BG)[priority]
            unique, data = b"u%d" % i, b"data\x00%d" % i
            broker.handle(client, ptype, (b"f", unique, data))
            submitted[priority].append((unique, data))
        broker.handle(client, C.SUBMIT_REDUCE_JOB_BACKGROUND, (b"g", b"r1", b"reducer", b"agg", b"rdata"))
        await durable(store)
        await store.close()

    async def second() -> None:
        broker, store = await started(db)
        for priority in (0, 1, 2):
            assert queue_of(broker, b"f", priority) == submitted[priority]
        (job,) = [j for j in broker.jobs.values() if j.function.name == b"g"]
        assert (job.unique, job.reducer, job.data, job.background) == (b"r1", b"reducer", b"rdata", True)
        assert all(j.store_ref is not None for j in broker.jobs.values())
        await store.close()

    run(first())
    run(second())


def test_many_submits_in_one_loop_pass_share_one_commit(tmp_path):
    async def main() -> None:
        broker, store = await started(tmp_path / "q.db")
        client = broker.connect(1)
        for i in range(500):
            broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"", b"%d" % i))
        await durable(store)
        assert store.commits == 1
        await store.close()

    run(main())
    assert len(rows(tmp_path / "q.db")) == 500


class GatedStore(SQLiteStore):
    """Its writes wait for a gate, and it records each batch, so a test can look between write and commit."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[tuple[list, list]] = []

    def write(self, adds, removes) -> None:
        self.batches.append(([a[0] for a in adds], list(removes)))
        self.entered.set()
        if not self.gate.wait(DEADLINE):
            raise TimeoutError("gate never opened")
        super().write(adds, removes)


def test_job_created_is_held_until_its_batch_is_durable(tmp_path):
    async def main() -> None:
        broker, store = await started(tmp_path / "q.db", GatedStore)
        store.gate.clear()
        client = broker.connect(1)
        broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"a", b"1"))
        assert client.out and store.holds(client)  # the JOB_CREATED is queued but must wait
        released = asyncio.Event()
        store.commit_then(released.set)
        await asyncio.get_running_loop().run_in_executor(None, store.entered.wait, DEADLINE)
        # Batch 1 is being written; a second submit joins the next batch and waits for that one.
        other = broker.connect(2)
        broker.handle(other, C.SUBMIT_JOB_BG, (b"f", b"b", b"2"))
        assert store.holds(client) and store.holds(other)
        second = asyncio.Event()
        store.commit_then(second.set)
        store.entered.clear()
        store.gate.set()
        await released.wait()
        assert not store.holds(client)
        await second.wait()
        assert not store.holds(other)
        assert store.batches == [([1], []), ([2], [])]
        await store.close()

    run(main())


def test_a_job_cancelled_before_its_row_is_written_cancels_out_and_never_runs(tmp_path):
    async def main() -> None:
        broker, store = await started(tmp_path / "q.db", GatedStore)
        client, worker = broker.connect(1), broker.connect(2)
        broker.handle(worker, C.CAN_DO, (b"f",))
        broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"", b"kept"))
        broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"", b"gone"))
        broker.handle(worker, C.GRAB_JOB, ())  # nothing is stored yet: no worker sees a job
        assert [e.ptype for e in answers(worker)] == [C.NO_JOB]
        handle = [j for j in broker.jobs.values() if j.data == b"gone"][0].handle
        assert broker.cancel(handle)
        await durable(store)
        assert store.batches == [([1], [])]
        broker.handle(worker, C.GRAB_JOB, ())
        assert [e.args[-1] for e in answers(worker)] == [b"kept"]
        await store.close()

    run(main())
    assert [r[-1] for r in rows(tmp_path / "q.db")] == [b"kept"]


def test_finished_cancelled_and_retried_out_jobs_leave_the_store(tmp_path):
    db = tmp_path / "q.db"

    async def main() -> None:
        broker, store = await started(db)
        broker.job_retries = 1
        client, worker = broker.connect(1), broker.connect(2)
        for data in (b"complete", b"fail", b"exception", b"cancel", b"retries"):
            broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"", data))
        broker.handle(client, C.SUBMIT_JOB_BG, (b"nobody-does-this", b"", b"stays"))
        await durable(store)  # written first, so that each removal below is a real DELETE
        assert len(rows_in(store)) == 6
        jobs = {j.data: j for j in broker.jobs.values()}
        assert broker.cancel(jobs[b"cancel"].handle)
        broker.handle(worker, C.CAN_DO, (b"f",))
        for _ in range(3):
            broker.handle(worker, C.GRAB_JOB, ())
        broker.handle(worker, C.WORK_COMPLETE, (jobs[b"complete"].handle, b"r"))
        broker.handle(worker, C.WORK_FAIL, (jobs[b"fail"].handle,))
        broker.handle(worker, C.WORK_EXCEPTION, (jobs[b"exception"].handle, b"e"))
        for _ in range(2):  # "retries" runs on a worker that dies, twice: past --job-retries 1
            lost = broker.connect(3)
            broker.handle(lost, C.CAN_DO, (b"f",))
            broker.handle(lost, C.GRAB_JOB, ())
            assert jobs[b"retries"].handle in lost.running
            broker.disconnect(lost)
        await durable(store)
        await store.close()

    def rows_in(store: SQLiteStore) -> list:
        return store.conn.execute(f"SELECT id FROM {TABLE}").fetchall()  # the writer is idle here

    run(main())
    assert [r[-1] for r in rows(db)] == [b"stays"]


def test_jobs_without_unique_never_collide_and_duplicate_rows_are_merged(tmp_path):
    db = tmp_path / "q.db"

    async def first() -> None:
        broker, store = await started(db)
        client = broker.connect(1)
        for _ in range(3):
            broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"", b"same data"))
        await durable(store)
        await store.close()

    run(first())
    conn = sqlite3.connect(str(db))
    with conn:  # two rows for one (function, unique), as two gearmand-era writers could leave
        conn.execute(f"INSERT INTO {TABLE} VALUES (100, ?, ?, 1, 0, ?, ?)", (b"f", b"dup", b"", b"first"))
        conn.execute(f"INSERT INTO {TABLE} VALUES (101, ?, ?, 1, 0, ?, ?)", (b"f", b"dup", b"", b"second"))
    conn.close()

    async def second() -> None:
        broker, store = await started(db)
        assert [j.data for j in broker.jobs.values()] == [b"same data"] * 3 + [b"first"]
        assert broker.by_unique[b"dup"].data == b"first"
        await store.close()

    run(second())
    assert [r[0] for r in rows(db)] == [1, 2, 3, 100]


def test_epoch_jobs_keep_their_time(tmp_path):
    db = tmp_path / "q.db"
    later = 4_000_000_000  # in 2096

    async def first() -> None:
        broker, store = await started(db)
        broker.handle(broker.connect(1), C.SUBMIT_JOB_EPOCH, (b"f", b"e", b"%d" % later, b"x"))
        await durable(store)
        await store.close()

    async def second() -> None:
        broker, store = await started(db)
        job = broker.by_unique[b"e"]
        assert (job.when, job.state, broker.next_timer()) == (float(later), SCHEDULED, float(later))
        await store.close()

    run(first())
    run(second())


def test_rows_that_are_no_job_are_set_aside_not_replayed(tmp_path):
    db = tmp_path / "q.db"

    async def create() -> None:
        _, store = await started(db)
        await store.close()

    run(create())
    conn = sqlite3.connect(str(db))
    with conn:
        conn.execute(f"INSERT INTO {TABLE} VALUES (1, ?, ?, 7, 0, ?, ?)", (b"f", b"", b"", b"bad priority"))
        conn.execute(f"INSERT INTO {TABLE} VALUES (2, ?, ?, 1, 0, ?, ?)", (b"", b"", b"", b"no function"))
        conn.execute(f"INSERT INTO {TABLE} VALUES (3, 'f', 'text', 2, 0, '', 'text columns are fine')")
    conn.close()

    async def replay() -> None:
        broker, store = await started(db)
        assert [(j.function.name, j.unique, j.priority, j.data) for j in broker.jobs.values()] == [
            (b"f", b"text", 2, b"text columns are fine")]
        await store.close()

    run(replay())
    assert [(r[0], r[-1]) for r in rows(db, INVALID_TABLE)] == [
        (1, "priority 7 is not 0, 1 or 2"), (2, "function name is missing")]
    assert [r[0] for r in rows(db)] == [3]


def test_a_file_that_is_no_database_is_refused_untouched(tmp_path):
    db = tmp_path / "q.db"
    db.write_bytes(b"these are not the pages you are looking for" * 100)
    before = db.read_bytes()
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        run(started(db))
    assert db.read_bytes() == before


@pytest.mark.parametrize("layout", [
    pytest.param(["CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)"], id="foreign"),
    pytest.param([f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, function BLOB, data BLOB)"], id="older"),
    pytest.param([f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, function BLOB, unique_key BLOB, priority INTEGER,"
                  " when_to_run REAL, reducer BLOB, data BLOB)", "CREATE TABLE extra (x)",
                  "PRAGMA user_version=1"], id="ours-plus-another"),
    pytest.param(["CREATE TABLE gearman_queue (name TEXT)"], id="gearmand-table-of-another-shape"),
])
def test_a_file_of_another_table_layout_is_refused_in_one_line_and_left_unchanged(tmp_path, layout):
    db = tmp_path / "q.db"
    conn = sqlite3.connect(str(db))
    for statement in layout:
        conn.execute(statement)
    conn.commit()
    conn.close()
    before = db.read_bytes()
    with pytest.raises(StoreError) as caught:
        run(started(db))
    message = str(caught.value)
    assert "table layout this geartrain does not use" in message and "left unchanged" in message
    assert "--sqlite-db" in message and "gearman_queue" in message and "\n" not in message
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["q.db"]


def test_a_second_server_on_the_same_file_is_refused(tmp_path):
    async def main() -> None:
        broker, store = await started(tmp_path / "q.db")
        try:
            with pytest.raises(StoreError, match="in use by another server"):
                await started(tmp_path / "q.db")
        finally:
            await store.close()
        _, again = await started(tmp_path / "q.db")  # free again once closed
        await again.close()

    run(main())


@pytest.mark.parametrize("damage", ["none", "truncate", "garbage"])
def test_a_torn_write_at_the_end_of_the_log_loses_only_that_batch(tmp_path, damage):
    """Copy the file and its log while the server runs (as after a crash), tear the last commit, reopen."""
    db, copy = tmp_path / "q.db", tmp_path / "copy.db"

    async def main() -> None:
        broker, store = await started(db)
        client = broker.connect(1)
        for i in range(50):
            broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"a%d" % i, b"A" * 100))
        await durable(store)
        for i in range(50):
            broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"b%d" % i, b"B" * 100))
        await durable(store)
        shutil.copyfile(db, copy)
        shutil.copyfile(str(db) + "-wal", str(copy) + "-wal")
        await store.close()

    run(main())
    wal = Path(str(copy) + "-wal")
    size = wal.stat().st_size
    assert size > 4096
    expected = [b"a%d" % i for i in range(50)]
    if damage == "none":
        expected += [b"b%d" % i for i in range(50)]
    elif damage == "truncate":
        with open(wal, "r+b") as f:
            f.truncate(size - 100)
    else:
        with open(wal, "r+b") as f:
            f.seek(size - 2000)
            f.write(b"\xa5" * 2000)

    async def replay() -> None:
        broker, store = await started(copy)
        uniques = sorted(j.unique for j in broker.jobs.values())
        assert uniques == sorted(expected)
        assert all(j.data == j.unique[:1].upper() * 100 for j in broker.jobs.values())
        await store.close()

    run(replay())
    conn = sqlite3.connect(str(copy))
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


class FlakyStore(GatedStore):
    """Fails the batches whose numbers are in `failing` (counted from 1) with the error in `error`."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.failing: set[int] = set()
        self.error: Exception = sqlite3.OperationalError("database or disk is full")

    def write(self, adds, removes) -> None:
        if len(self.batches) + 1 not in self.failing:
            super().write(adds, removes)
            return
        self.batches.append(([a[0] for a in adds], list(removes)))
        self.entered.set()
        if not self.gate.wait(DEADLINE):
            raise TimeoutError("gate never opened")
        raise self.error


def test_a_failed_batch_is_refused_job_by_job_and_the_next_one_is_acknowledged(tmp_path):
    async def main() -> None:
        broker, store = await started(tmp_path / "q.db", FlakyStore)
        store.failing = {1}
        store.gate.clear()
        client, worker = broker.connect(1), broker.connect(2)
        broker.handle(worker, C.CAN_DO, (b"f",))
        broker.handle(client, C.SUBMIT_JOB, (b"f", b"fg", b"foreground"))
        broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"a", b"first"))  # batch 1: fails
        store.commit_then(lambda: None)
        await asyncio.get_running_loop().run_in_executor(None, store.entered.wait, DEADLINE)
        broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"b", b"second"))  # batch 2: stored
        broker.handle(client, C.ECHO_REQ, (b"after",))
        # Only what comes before the first held JOB_CREATED may go: the foreground job's.
        assert [e.ptype for e in Decoder(accept=C.RES).feed(b"".join(store.release(client)))] == [C.JOB_CREATED]
        assert store.release(client) == [] and store.holds(client)
        store.gate.set()
        await durable(store)
        replies = Decoder(accept=C.RES).feed(b"".join(store.release(client)))
        assert [e.ptype for e in replies] == [C.ERROR, C.JOB_CREATED, C.ECHO_RES]
        assert replies[0].args[0] == b"QUEUE_ERROR" and b"disk full" in replies[0].args[1]
        assert not store.holds(client) and not client.out
        assert sorted(j.data for j in broker.jobs.values()) == [b"foreground", b"second"]
        assert (store.failed_commits, store.refused_jobs, store.commits) == (1, 1, 1)
        assert store.fault is None  # batch 2 ended the episode
        broker.handle(worker, C.GRAB_JOB, ())
        broker.handle(worker, C.GRAB_JOB, ())
        assert sorted(e.args[-1] for e in answers(worker)) == [b"foreground", b"second"]
        await store.close()

    run(main())
    assert [r[-1] for r in rows(tmp_path / "q.db")] == [b"second"]


def test_a_submit_joining_a_job_of_an_earlier_failing_batch_gets_that_jobs_refusal(tmp_path):
    async def main() -> None:
        broker, store = await started(tmp_path / "q.db", FlakyStore)
        store.failing = {1}
        store.gate.clear()
        one, two = broker.connect(1), broker.connect(2)
        broker.handle(one, C.SUBMIT_JOB_BG, (b"f", b"a", b"x"))  # batch 1, which fails
        store.commit_then(lambda: None)
        await asyncio.get_running_loop().run_in_executor(None, store.entered.wait, DEADLINE)
        broker.handle(two, C.SUBMIT_JOB_BG, (b"f", b"b", b"y"))  # batch 2
        broker.handle(two, C.SUBMIT_JOB_BG, (b"f", b"a", b"x"))  # joins "a", whose batch 1 is being written
        store.gate.set()
        await durable(store)
        replies = {peer.id: Decoder(accept=C.RES).feed(b"".join(store.release(peer))) for peer in (one, two)}
        assert [e.ptype for e in replies[1]] == [C.ERROR]
        assert [e.ptype for e in replies[2]] == [C.JOB_CREATED, C.ERROR]
        assert [j.unique for j in broker.jobs.values()] == [b"b"]
        await store.close()

    run(main())


@pytest.mark.parametrize("error, words", [
    (sqlite3.OperationalError("database or disk is full"), b"disk full"),
    (sqlite3.OperationalError("disk I/O error"), b"I/O error"),
    (OSError(24, "Too many open files"), b"too many open files"),
])
def test_a_refused_submit_says_why_and_coalesced_submits_share_the_answer(tmp_path, error, words, caplog):
    async def main() -> None:
        broker, store = await started(tmp_path / "q.db", FlakyStore)
        store.failing, store.error = {1, 2}, error
        one, two = broker.connect(1), broker.connect(2)
        broker.handle(one, C.SUBMIT_JOB_BG, (b"f", b"same", b"x"))
        broker.handle(two, C.SUBMIT_JOB_BG, (b"f", b"same", b"x"))
        broker.handle(two, C.SUBMIT_JOB, (b"f", b"other", b"fg"))
        await durable(store)
        for peer, expected in ((one, [C.ERROR]), (two, [C.ERROR, C.JOB_CREATED])):
            replies = Decoder(accept=C.RES).feed(b"".join(store.release(peer)))
            assert [e.ptype for e in replies] == expected
            assert replies[0].args[0] == b"QUEUE_ERROR" and words in replies[0].args[1]
        broker.handle(one, C.SUBMIT_JOB_BG, (b"f", b"later", b"y"))  # batch 2 fails as well: one log line
        await durable(store)
        store.release(one)
        assert store.refused_jobs == 2 and [j.data for j in broker.jobs.values()] == [b"fg"]
        await store.close()

    run(main())
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1


def test_gearmand_libsqlite3_queue_is_taken_over_once(tmp_path):
    db = tmp_path / "gearmand.db"
    conn = sqlite3.connect(str(db))
    with conn:  # gearmand's libsqlite3 schema
        conn.execute("CREATE TABLE gearman_queue (unique_key TEXT, function_name TEXT, priority INTEGER, "
                     "data BLOB, when_to_run INTEGER, PRIMARY KEY (unique_key, function_name))")
        conn.execute("INSERT INTO gearman_queue VALUES ('u1', 'f', 2, x'0001', 0)")
        conn.execute("INSERT INTO gearman_queue VALUES ('u2', 'f', 0, x'02', 0)")
    conn.close()

    async def replay(expected: int) -> None:
        broker, store = await started(db)
        assert len(broker.jobs) == expected
        if expected:
            assert queue_of(broker, b"f", 2) == [(b"u1", b"\x00\x01")]
            assert queue_of(broker, b"f", 0) == [(b"u2", b"\x02")]
            for job in list(broker.jobs.values()):
                broker.cancel(job.handle)
            await durable(store)
        await store.close()

    run(replay(2))
    run(replay(0))


def test_open_store_uses_the_configured_path_or_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_sqlite_path() == tmp_path / "state" / "geartrain" / "queue.sqlite3"
    store = open_store(SimpleNamespace(queue_type="sqlite", sqlite_db=None))
    assert store.location == str(tmp_path / "state" / "geartrain" / "queue.sqlite3")

    async def main() -> None:
        _, opened = await started(Path(store.location))
        await opened.close()

    run(main())
    assert (tmp_path / "state" / "geartrain" / "queue.sqlite3").exists()
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_sqlite_path() == tmp_path / "home" / ".local" / "state" / "geartrain" / "queue.sqlite3"
    assert open_store(SimpleNamespace(queue_type="sqlite", sqlite_db=str(tmp_path / "x.db"))).location == str(
        tmp_path / "x.db")


def test_big_batches_are_split_into_statements_and_applied_whole(tmp_path):
    from geartrain.server.store.sqlite import chunk_sizes

    assert chunk_sizes(0, 512) == []
    assert chunk_sizes(1300, 512) == [512, 512, 256, 16, 4]
    db = tmp_path / "q.db"

    async def main() -> None:
        broker, store = await started(db)
        client = broker.connect(1)
        for i in range(1300):
            broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"u%d" % i, b"%d" % i))
        await durable(store)
        for job in list(broker.jobs.values())[:1100]:
            broker.cancel(job.handle)
        await durable(store)
        assert store.fault is None  # written again
        await store.close()

    run(main())
    assert [r[2] for r in rows(db)] == [b"u%d" % i for i in range(1100, 1300)]


def test_stored_fields_are_blobs_even_when_empty_and_read_back_exactly(tmp_path):
    """Rows are bound as bytearray (faster in the sqlite3 module): the file must still hold BLOBs, never NULL or
    TEXT, and a name shared by many rows of a batch is written for each."""
    db = tmp_path / "q.db"
    submitted = [(b"f", b"", b""), (b"f", b"u1", b"\x00\xff"), (b"g", b"u2", b"x" * 70_000), (b"f", b"u3", b"d")]

    async def main() -> None:
        broker, store = await started(db)
        client = broker.connect(1)
        for name, unique, data in submitted:
            broker.handle(client, C.SUBMIT_JOB_BG, (name, unique, data))
        broker.handle(client, C.SUBMIT_REDUCE_JOB_BACKGROUND, (b"f", b"r", b"agg", b"", b""))
        await durable(store)
        await store.close()

    run(main())
    conn = sqlite3.connect(str(db))
    try:
        types = conn.execute(f"SELECT DISTINCT typeof(function), typeof(unique_key), typeof(reducer), typeof(data) "
                             f"FROM {TABLE}").fetchall()
    finally:
        conn.close()
    assert types == [("blob", "blob", "blob", "blob")]
    assert [(r[1], r[2], r[6]) for r in rows(db)] == [*submitted, (b"f", b"r", b"")]
    assert [r[5] for r in rows(db)] == [b"", b"", b"", b"", b"agg"]


@pytest.mark.parametrize("shape", ["uniform", "gap in refs", "other priority", "other time", "other function",
                                   "other reducer"])
def test_a_batch_is_written_exactly_whichever_statement_it_takes(tmp_path, shape):
    """Rows submitted back to back bind function, priority, time, reducer and first ref once per statement; any
    difference takes the statement with every field per row. Both write the same rows."""
    from geartrain.server.store.sqlite_rows import insert_params

    batch = [(10 + i, b"fn", b"u%d" % i, 1, 0.0, b"", b"d%d" % i) for i in range(100)]
    change = {"gap in refs": (0, 200), "other priority": (3, 2), "other time": (4, 5.5), "other function": (1, b"g"),
              "other reducer": (5, b"r")}.get(shape)
    if change is not None:
        index, value = change
        last = list(batch[-1])
        last[index] = value
        batch[-1] = tuple(last)
    assert insert_params(batch)[0] == ("uniform" if shape == "uniform" else "insert")
    store = SQLiteStore(tmp_path / "q.db")
    store.open_engine()
    try:
        store.write(batch[:64], [])  # one statement of each size: 64, then 32 + 4
        store.write(batch[64:], [])
    finally:
        store.close_engine()
    assert rows(tmp_path / "q.db") == batch


def test_a_batch_of_one_statement_commits_on_its_own_and_a_longer_one_in_one_transaction(tmp_path):
    store = SQLiteStore(tmp_path / "q.db")
    store.open_engine()
    issued: list[str] = []
    store.conn.set_trace_callback(lambda sql: issued.append(sql.split(" ", 1)[0]))
    try:
        batch = [(1 + i, b"f", b"u%d" % i, 1, 0.0, b"", b"d") for i in range(4)]
        store.write(batch, [])
        assert issued == ["INSERT"]  # a transaction of its own: no BEGIN and COMMIT
        issued.clear()
        store.write([(5 + i, *row[1:]) for i, row in enumerate(batch[:3])], [1])  # statements of 2 and 1 rows
        assert issued == ["BEGIN", "INSERT", "INSERT", "DELETE", "COMMIT"]
    finally:
        store.close_engine()
    assert [row[0] for row in rows(tmp_path / "q.db")] == [2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize(("sync", "level"), [("full", 2), ("normal", 1)])
def test_queue_sync_sets_the_commit_durability_of_the_connection(tmp_path, sync, level):
    store = open_store(SimpleNamespace(queue_type="sqlite", sqlite_db=str(tmp_path / "q.db"), queue_sync=sync))

    async def main() -> None:
        broker = Broker(b"H:test", store=store)
        await store.start(SimpleNamespace(broker=broker))
        try:
            assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == level  # 2 FULL, 1 NORMAL
            assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            await store.close()

    run(main())


def test_an_unknown_queue_sync_mode_is_refused_with_the_choices(tmp_path):
    with pytest.raises(StoreError, match="'sometimes'.*full or normal"):
        SQLiteStore(tmp_path / "q.db", sync="sometimes")


def test_a_stored_job_stored_again_in_a_failing_batch_keeps_its_row(tmp_path):
    """A retry's backoff re-stores an acknowledged job (its old row out, a new one in, one batch): when that
    batch fails, the job is not refused (it was acknowledged) and its row is written with the next batch."""
    async def main() -> None:
        broker, store = await started(tmp_path / "q.db", FlakyStore)
        client, worker = broker.connect(1), broker.connect(2)
        broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"r", b"retried"))
        await durable(store)  # batch 1: stored and acknowledged
        assert [e.ptype for e in Decoder(accept=C.RES).feed(b"".join(store.release(client)))] == [C.JOB_CREATED]
        broker.handle(worker, C.CAN_DO, (b"f",))
        broker.handle(worker, C.GRAB_JOB_UNIQ, ())
        (job,) = broker.jobs.values()
        store.failing = {2}
        broker.retry_later(job, broker.clock() + 3600)  # batch 2: remove the old row, add the new one: fails
        await durable(store)
        assert store.failed_commits == 1 and store.refused_jobs == 0
        assert broker.jobs.get(job.handle) is job and job.store_ref is not None
        broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"n", b"next"))  # batch 3: the store writes again
        await durable(store)
        assert store.fault is None  # written again
        ref = job.store_ref
        await store.close()
        return ref

    ref = run(main())
    assert [(r[0], r[2], r[-1]) for r in rows(tmp_path / "q.db")] == [(ref, b"r", b"retried"), (3, b"n", b"next")]
