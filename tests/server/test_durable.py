"""The durable queue end to end: geard subprocesses on one SQLite file or one PostgreSQL database (each test runs
on both engines), killed with SIGKILL and restarted."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import pytest

from geartrain.protocol import constants as C

from conftest import GEARMAND, start_gearmand
from wire import Wire

PRIORITY_TYPES = {"high": C.SUBMIT_JOB_HIGH_BG, "normal": C.SUBMIT_JOB_BG, "low": C.SUBMIT_JOB_LOW_BG}


class SQLiteQueue:
    def __init__(self, path) -> None:
        self.path = path
        self.args = ("--queue-type", "sqlite", "--sqlite-db", str(path))
        self.location = str(path)

    def query(self, sql: str) -> list[tuple]:
        conn = sqlite3.connect(str(self.path))
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def check(self) -> None:
        assert self.query("PRAGMA integrity_check") == [("ok",)]
        assert self.query("SELECT count(*) FROM geartrain_jobs_invalid") == [(0,)]


class PostgresQueue:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        # One node name: a restarted server owns the rows of the killed one.
        self.args = ("--queue-type", "postgres", "--postgres-dsn", dsn, "--cluster-node", "durable")
        self.location = "dbname=" + dsn.split("dbname=")[1].split()[0]

    def query(self, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                    for row in conn.execute(sql).fetchall()]

    def check(self) -> None:
        pass  # PostgreSQL checks its own pages; nothing is moved aside


@pytest.fixture(params=["sqlite", "postgres"])
def queue(request, tmp_path):
    """The durable queue a test runs on: a SQLite file, or a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return SQLiteQueue(tmp_path / "q.db")
    return PostgresQueue(request.getfixturevalue("postgres_dsn"))


def geard(server_factory, queue, *extra: str):
    return server_factory("geard", *queue.args, *extra)


def kill(server) -> None:
    """SIGKILL: no shutdown code runs, the store is not closed."""
    server.process.kill()
    server.process.wait(timeout=30)


def submit_all(client: Wire, jobs: list[tuple[int, bytes, bytes, bytes]]) -> list[bytes]:
    """Pipeline (ptype, function, unique, data) submits in one write; return the handles in order."""
    client.send_raw(b"".join(client.conn.send_packet(ptype, fn, unique, data) for ptype, fn, unique, data in jobs))
    return [client.expect(C.JOB_CREATED).args[0] for _ in jobs]


def drain(worker: Wire, limit: int = 100_000, complete: bool = True) -> list[tuple[bytes, bytes, bytes]]:
    """Grab (and complete) every queued job the worker can do until NO_JOB: [(function, unique, data)]."""
    got = []
    for _ in range(limit + 1):
        worker.send(C.GRAB_JOB_UNIQ)
        event = worker.next_event()
        if event.ptype == C.NO_JOB:
            return got
        assert event.ptype == C.JOB_ASSIGN_UNIQ, event
        handle, function, unique, data = event.args
        got.append((function, unique, data))
        if complete:
            worker.send(C.WORK_COMPLETE, handle, b"")
    raise AssertionError(f"more than {limit} jobs were handed out")


@pytest.mark.parametrize("priority", sorted(PRIORITY_TYPES))
def test_every_acknowledged_job_is_delivered_once_after_sigkill(server_factory, queue, priority):
    first = geard(server_factory, queue)
    jobs = [(PRIORITY_TYPES[priority], b"work", b"u-%d" % i, b"data\x00%d-%s" % (i, b"x" * (i % 50)))
            for i in range(300)]
    with Wire(first.host, first.port) as client:
        handles = submit_all(client, jobs)
        kill(first)  # at once after the last JOB_CREATED
    assert len(set(handles)) == 300
    second = geard(server_factory, queue)
    with Wire(second.host, second.port) as worker:
        worker.register(b"work")
        assert drain(worker) == [(b"work", unique, data) for _, _, unique, data in jobs]


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_with_either_queue_sync_every_acknowledged_job_survives_sigkill(server_factory, tmp_path, sync):
    queue = SQLiteQueue(tmp_path / "q.db")  # --queue-sync is SQLite's (PRAGMA synchronous)
    first = geard(server_factory, queue, "--queue-sync", sync)
    jobs = [(C.SUBMIT_JOB_BG, b"work", b"u-%d" % i, b"%d" % i) for i in range(500)]
    with Wire(first.host, first.port) as client:
        submit_all(client, jobs)
        kill(first)  # at once after the last JOB_CREATED: "normal" has synced nothing, the OS holds the log
    second = geard(server_factory, queue, "--queue-sync", sync)
    with Wire(second.host, second.port) as worker:
        worker.register(b"work")
        assert drain(worker) == [(b"work", unique, data) for _, _, unique, data in jobs]


def test_replay_keeps_the_order_within_each_priority(server_factory, queue):
    first = geard(server_factory, queue)
    order = ["low", "normal", "high"] * 20
    jobs = [(PRIORITY_TYPES[p], b"work", b"%s-%d" % (p.encode(), i), b"%d" % i) for i, p in enumerate(order)]
    with Wire(first.host, first.port) as client:
        submit_all(client, jobs)
        kill(first)
    second = geard(server_factory, queue)
    with Wire(second.host, second.port) as worker:
        worker.register(b"work")
        got = [unique for _, unique, _ in drain(worker)]
    expected = [j[2] for p in ("high", "normal", "low") for j in jobs if j[2].startswith(p.encode())]
    assert got == expected


def test_jobs_without_unique_are_all_kept(server_factory, queue):
    first = geard(server_factory, queue)
    with Wire(first.host, first.port) as client:
        submit_all(client, [(C.SUBMIT_JOB_BG, b"work", b"", b"same data")] * 5)
        kill(first)
    second = geard(server_factory, queue)
    with Wire(second.host, second.port) as worker:
        worker.register(b"work")
        assert drain(worker) == [(b"work", b"", b"same data")] * 5


def test_completed_and_cancelled_jobs_are_not_replayed(server_factory, queue):
    first = geard(server_factory, queue)
    jobs = [(C.SUBMIT_JOB_BG, b"work", b"u%d" % i, b"d%d" % i) for i in range(10)]
    with Wire(first.host, first.port) as client, Wire(first.host, first.port) as worker:
        handles = submit_all(client, jobs)
        worker.register(b"work")
        for _ in range(3):
            assigned = worker.grab()
            worker.send(C.WORK_COMPLETE, assigned.args[0], b"done")
        assigned = worker.grab()
        worker.send(C.WORK_FAIL, assigned.args[0])
        assigned = worker.grab()
        worker.send(C.WORK_EXCEPTION, assigned.args[0], b"boom")
        assert worker.admin(f"cancel job {handles[9].decode()}").lines[0].startswith(b"OK")
        # Commits apply in order, and a JOB_CREATED waits for its own: once this one arrives, every removal
        # above is on disk too.
        assert submit_all(worker, [(C.SUBMIT_JOB_BG, b"work", b"sync", b"")])
        kill(first)
    second = geard(server_factory, queue)
    with Wire(second.host, second.port) as worker:
        worker.register(b"work")
        assert [u for _, u, _ in drain(worker)] == [b"u5", b"u6", b"u7", b"u8", b"sync"]


def test_a_job_whose_worker_or_server_dies_runs_again_but_never_twice_at_once(server_factory, queue):
    first = geard(server_factory, queue)
    with Wire(first.host, first.port) as client:
        submit_all(client, [(C.SUBMIT_JOB_BG, b"work", b"one", b"1"), (C.SUBMIT_JOB_BG, b"work", b"two", b"2")])
        with Wire(first.host, first.port) as lost:
            lost.register(b"work")
            assert lost.grab().args[2] == b"one"
        # That worker died mid-run: another one gets the job, and holds it when the server dies.
        with Wire(first.host, first.port) as running:
            running.register(b"work")
            assert running.grab().args[2] == b"two"
            assert running.grab().args[2] == b"one"
            kill(first)
    second = geard(server_factory, queue)
    with Wire(second.host, second.port) as a, Wire(second.host, second.port) as b:
        a.register(b"work")
        b.register(b"work")
        got_a = drain(a, complete=False)
        got_b = drain(b, complete=False)  # a still runs what it grabbed: nothing is left for b
    assert sorted(u for _, u, _ in got_a) == [b"one", b"two"] and got_b == []


def test_replayed_jobs_coalesce_by_unique_and_show_in_admin(server_factory, queue):
    first = geard(server_factory, queue)
    with Wire(first.host, first.port) as client:
        submit_all(client, [(C.SUBMIT_JOB_BG, b"work", b"the-unique", b"payload")])
        kill(first)
    second = geard(server_factory, queue)
    with Wire(second.host, second.port) as client, Wire(second.host, second.port) as worker:
        assert client.admin("status").lines == (b"work\t1\t0\t0",)
        (line,) = client.admin("show jobs").lines
        handle = line.split(b"\t")[0]
        client.send(C.GET_STATUS_UNIQUE, b"the-unique")
        assert client.expect(C.STATUS_RES_UNIQUE).args[:3] == (b"the-unique", b"1", b"0")
        assert client.submit(b"work", b"other data", b"the-unique", C.SUBMIT_JOB_BG) == handle
        assert client.submit(b"work", b"other data", b"the-unique", C.SUBMIT_JOB) == handle
        worker.register(b"work")
        assigned = worker.grab()
        assert assigned.args == (handle, b"work", b"the-unique", b"payload")
        worker.send(C.WORK_COMPLETE, handle, b"result")
        assert client.expect(C.WORK_COMPLETE).args == (handle, b"result")
        assert drain(worker) == []


def test_epoch_and_reduce_jobs_keep_their_time_and_reducer(server_factory, queue):
    far = 4_000_000_000  # in 2096
    soon = int(time.time()) + 1
    first = geard(server_factory, queue)
    with Wire(first.host, first.port) as client:
        client.send(C.SUBMIT_JOB_EPOCH, b"work", b"far", b"%d" % far, b"later")
        client.send(C.SUBMIT_JOB_EPOCH, b"work", b"soon", b"%d" % soon, b"sooner")
        client.send(C.SUBMIT_REDUCE_JOB_BACKGROUND, b"work", b"reduce", b"the-reducer", b"agg", b"rdata")
        for _ in range(3):
            client.expect(C.JOB_CREATED)
        kill(first)
    second = geard(server_factory, queue)
    with Wire(second.host, second.port) as worker:
        worker.register(b"work")
        assigned = []
        for _ in range(10):  # the reduce job at once, "soon" once its time has come (maybe already)
            worker.send(C.GRAB_JOB_ALL)
            event = worker.next_event()
            if event.ptype == C.NO_JOB:
                worker.send(C.PRE_SLEEP)
                worker.expect(C.NOOP, timeout=60)
                continue
            assigned.append((event.ptype, event.args[1:]))
            if len(assigned) == 2:
                break
        assert sorted(assigned) == [(C.JOB_ASSIGN_UNIQ, (b"work", b"soon", b"sooner")),
                                    (C.JOB_ASSIGN_ALL, (b"work", b"reduce", b"the-reducer", b"rdata"))]
        assert drain(worker) == []  # the far one waits for 2096
        assert len(worker.admin("show jobs").lines) == 3
    second.process.send_signal(signal.SIGTERM)
    second.process.wait(timeout=30)
    stored = queue.query("SELECT unique_key, when_to_run, reducer FROM geartrain_jobs")
    assert sorted(stored) == [(b"far", far, b""), (b"reduce", 0.0, b"the-reducer"), (b"soon", soon, b"")]


def test_start_logs_how_many_jobs_were_replayed_and_from_where(server_factory, queue):
    first = geard(server_factory, queue)
    with Wire(first.host, first.port) as client:
        submit_all(client, [(C.SUBMIT_JOB_LOW_BG, b"work", b"", b"%d" % i) for i in range(3)])
        kill(first)
    second = geard(server_factory, queue, "--verbose", "INFO")
    with Wire(second.host, second.port) as client:
        client.admin("version")
    second.process.send_signal(signal.SIGTERM)
    _, err = second.process.communicate(timeout=30)
    assert b"replayed 3 jobs from " in err and queue.location.encode() in err


def test_a_kill_during_a_burst_loses_no_acknowledged_job_and_leaves_no_bad_row(server_factory, queue):
    """Four connections submit without pause; the server is killed while they still do."""
    first = geard(server_factory, queue)
    conns, most, chunk = 4, 25_000, 200
    acked = [0] * conns  # per connection: JOB_CREATED answer the submits in order, so a count says which
    sent = [0] * conns
    lock = threading.Lock()
    enough = threading.Event()
    started = threading.Event()

    def job(c: int, i: int) -> tuple[bytes, bytes]:
        unique = b"c%d-%d" % (c, i)
        return unique, unique * 3

    def reader(c: int, wire: Wire) -> None:
        try:
            for _ in range(most):
                wire.expect(C.JOB_CREATED, timeout=60)
                acked[c] += 1
                with lock:
                    if sum(acked) >= 1000:
                        started.set()
        except (OSError, ConnectionError, TimeoutError):
            pass  # the server was killed

    def sender(c: int, wire: Wire, chunks: list[bytes]) -> None:
        try:
            for n, data in enumerate(chunks):
                wire.send_raw(data)
                sent[c] += chunk
                if n == len(chunks) // 4 and started.wait(60):
                    with lock:
                        if not enough.is_set():  # a quarter sent by one connection, the rest still to come
                            first.process.kill()
                            enough.set()
        except OSError:
            pass

    wires = [Wire(first.host, first.port, timeout=60) for _ in range(conns)]
    threads = []
    try:
        for c, wire in enumerate(wires):
            threads.append(threading.Thread(target=reader, args=(c, wire), daemon=True))
            chunks = [b"".join(wire.conn.send_packet(C.SUBMIT_JOB_BG, b"work", *job(c, i))
                               for i in range(start, start + chunk)) for start in range(0, most, chunk)]
            threads.append(threading.Thread(target=sender, args=(c, wire, chunks), daemon=True))
        for thread in threads:
            thread.start()
        assert enough.wait(60), "the burst did not get going"
        first.process.wait(timeout=30)
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive()
    finally:
        for wire in wires:
            wire.close()
    assert sum(acked) < conns * most  # the kill came in the middle of the burst
    second = geard(server_factory, queue)
    with Wire(second.host, second.port) as worker:
        worker.register(b"work")
        got = drain(worker, limit=conns * most)
    delivered = [unique for _, unique, _ in got]
    assert len(delivered) == len(set(delivered))
    assert all(data == unique * 3 for _, unique, data in got)
    assert set(delivered) >= {job(c, i)[0] for c in range(conns) for i in range(acked[c])}
    assert set(delivered) <= {job(c, i)[0] for c in range(conns) for i in range(max(sent[c], acked[c]))}
    second.process.send_signal(signal.SIGTERM)
    second.process.wait(timeout=30)
    assert queue.query("SELECT count(*) FROM geartrain_jobs") == [(0,)]
    queue.check()


@pytest.mark.skipif(GEARMAND is None, reason="gearmand is not installed")
def test_geard_takes_over_the_queue_gearmand_left_in_its_sqlite_file(server_factory, tmp_path):
    db = tmp_path / "gearmand.db"
    gearmand = start_gearmand("-q", "libsqlite3", "--libsqlite3-db", str(db))
    try:
        with Wire(gearmand.host, gearmand.port) as client:
            submit_all(client, [(C.SUBMIT_JOB_LOW_BG, b"work", b"g1", b"one"),
                                (C.SUBMIT_JOB_HIGH_BG, b"work", b"g2", b"two")])
    finally:
        gearmand.stop()
    second = server_factory("geard", "--queue-type", "sqlite", "--libsqlite3-db", str(db))
    with Wire(second.host, second.port) as worker:
        worker.register(b"work")
        assert drain(worker) == [(b"work", b"g2", b"two"), (b"work", b"g1", b"one")]
