"""The PostgreSQL engine on its own: schema versions, clear start-up errors, gearmand's libpq queue imported once."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from geartrain.protocol import constants as C
from geartrain.server.store.postgres import SCHEMA_VERSION

from cluster_nodes import node, rows, submit_many
from conftest import GEARMAND, start_gearmand
from wire import Wire


def geard_exits(*args: str) -> str:
    """Run geard expecting it to refuse to start; its stderr."""
    result = subprocess.run([sys.executable, "-m", "geartrain.server.cli", "-d", "-p", "0", "-L", "127.0.0.1",
                             *args], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    return result.stderr


def test_a_version_1_schema_is_migrated_with_its_jobs_kept(server_factory, postgres_dsn):
    first = node(server_factory, postgres_dsn, "a")
    submit_many(first, 3)
    first.stop()
    with psycopg.connect(postgres_dsn) as conn:  # as version 1 left it: no state table
        conn.execute("DROP TABLE geartrain_state")
        conn.execute("UPDATE geartrain_schema SET version = 1")
    again = node(server_factory, postgres_dsn, "a")
    assert rows(postgres_dsn, "SELECT version FROM geartrain_schema") == [(SCHEMA_VERSION,)]
    assert rows(postgres_dsn, "SELECT count(*) FROM geartrain_state") == [(0,)]
    with Wire(again.host, again.port) as worker:
        worker.register(b"work")
        assert sorted(worker.grab().args[2] for _ in range(3)) == [b"j0", b"j1", b"j2"]


def test_the_schema_is_created_with_its_version_and_a_newer_one_is_refused(server_factory, postgres_dsn):
    first = node(server_factory, postgres_dsn, "a")
    first.stop()
    assert rows(postgres_dsn, "SELECT version FROM geartrain_schema") == [(SCHEMA_VERSION,)]
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("UPDATE geartrain_schema SET version = 99")
    err = geard_exits("-q", "postgres", "--postgres-dsn", postgres_dsn)
    assert "schema of version 99" in err and "upgrade geartrain" in err


def test_an_unreachable_database_or_a_missing_dsn_is_a_clear_start_up_error(postgres_server):
    err = geard_exits("-q", "postgres", "--postgres-dsn", "host=127.0.0.1 port=1 user=x dbname=x connect_timeout=5")
    assert "cannot connect to PostgreSQL" in err and "port=1" in err
    err = geard_exits("-q", "postgres")
    assert "--postgres-dsn" in err
    err = geard_exits("-q", "postgres", "--postgres-dsn", "dbname=x", "--lease-interval", "5", "--takeover-after", "2")
    assert "--takeover-after (2) must be longer than --lease-interval (5" in err


@pytest.mark.skipif(GEARMAND is None, reason="gearmand is not installed")
def test_geard_imports_gearmand_s_libpq_queue_once(server_factory, postgres_dsn):
    gearmand = start_gearmand("-q", "Postgres", "--libpq-conninfo", postgres_dsn, "--libpq-table", "gq")
    try:
        with Wire(gearmand.host, gearmand.port) as client:
            client.submit(b"work", b"one", b"g1", C.SUBMIT_JOB_LOW_BG)
            client.submit(b"work", b"two", b"g2", C.SUBMIT_JOB_HIGH_BG)
            client.submit(b"work", b"three", b"g3", C.SUBMIT_JOB_BG)
    finally:
        gearmand.stop()
    # gearmand's own spellings of the options
    server = server_factory("geard", "-q", "Postgres", "--libpq-conninfo", postgres_dsn, "--libpq-table", "gq",
                            "--cluster-node", "a")
    with Wire(server.host, server.port) as worker:
        worker.register(b"work")
        got = []
        for _ in range(3):
            assigned = worker.grab()
            got.append(assigned.args[2:])
            worker.send(C.WORK_COMPLETE, assigned.args[0], b"")
    assert got == [(b"g2", b"two"), (b"g3", b"three"), (b"g1", b"one")]
    assert rows(postgres_dsn, "SELECT count(*) FROM gq") == [(0,)]
    server.stop()
    again = server_factory("geard", "-q", "Postgres", "--libpq-conninfo", postgres_dsn, "--libpq-table", "gq",
                           "--cluster-node", "a")
    with Wire(again.host, again.port) as admin:
        assert admin.admin("status").lines == ()


def test_two_live_nodes_claiming_one_dead_node_at_once_never_claim_the_same_job(postgres_dsn):
    from concurrent.futures import ThreadPoolExecutor

    from geartrain.server.store.postgres import PostgresStore

    def opened(name: str) -> PostgresStore:
        store = PostgresStore(postgres_dsn, name)  # "a" hands off: dead at any --takeover-after
        store.open_engine()
        store.load()
        return store

    dead, b, c = opened("a"), opened("b"), opened("c")
    try:
        dead.write([(ref, b"work", b"u%d" % ref, ref % 3, 0.0, b"", b"d") for ref in range(1, 5001)], [])
        dead.hand_off()

        def claim_all(store: PostgresStore, first_ref: int) -> list[bytes]:
            got, base = [], first_ref
            while rows(postgres_dsn, "SELECT count(*) FROM geartrain_jobs WHERE node = 'a'") != [(0,)]:
                claimed = store.claim("a", base, 100)
                base += 100
                got += [item.job.unique for item in claimed]
                assert all(item.attempts == 1 for item in claimed)
            return got

        with ThreadPoolExecutor(2) as pool:
            by_b, by_c = pool.map(claim_all, (b, c), (1, 1))
    finally:
        for store in (dead, b, c):
            store.close_engine()
    assert not set(by_b) & set(by_c)
    assert sorted(by_b + by_c) == sorted(b"u%d" % ref for ref in range(1, 5001))
    assert rows(postgres_dsn, "SELECT node, count(*) FROM geartrain_jobs GROUP BY node ORDER BY node") == [
        ("b", len(by_b)), ("c", len(by_c))]


def test_batch_columns_reach_postgresql_as_the_arrays_they_stand_for(postgres_dsn):
    from geartrain.server.store import pg_arrays

    rows_in = [(1, b"f", b"", 0, 0.0, b"", b""),
               (2**40, b"g\x00h", b"u" * 300, 2, 1.5e9, b"r", memoryview(b"\xff" * 70000)),
               (-3, b"", b"-", 1, -2.25, b"", b"x")]
    with psycopg.connect(postgres_dsn) as conn:
        pg_arrays.register(conn)
        for batch in (rows_in, []):
            got = conn.execute("SELECT %b::bigint[], %b::bytea[], %b::bytea[], %b::smallint[], %b::float8[], "
                               "%b::bytea[], %b::bytea[]", pg_arrays.columns(batch)).fetchone()
            assert [list(column) for column in got] == [
                [bytes(v) if isinstance(v, memoryview) else v for v in column] for column in zip(*batch, strict=True)
            ] if batch else [[]] * 7
