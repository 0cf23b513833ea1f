"""The shared durable queue: background jobs in PostgreSQL, written in group commits by writer threads.

Driver: psycopg 3 (blocking, libpq underneath). The store runs every engine call on writer threads, so a
blocking driver fits it as it is: libpq lets go of the GIL while it waits on the network, and the event loop
never waits on the database. asyncpg would need a second event loop on those threads, or database calls
interleaved with packet handling on the server's loop, for nothing the writer threads lack.

A batch is one statement, ``geartrain_write`` (schema 3), on a connection of its own in autocommit: one round
trip, one transaction, no BEGIN or COMMIT. Up to ``writers`` batches (WRITERS) are in flight together, each on
its writer thread's connection, so one batch's commit (its WAL flush) overlaps the next batch's work; the store
takes their outcomes in order (store/__init__.py). Everything else (start-up, cluster calls, server state) runs on the
control connection ``conn``, in transactions, never beside a batch; after start-up the database ends any of them
left idle for half of takeover_after (a node frozen holding its lease row would hold off its take-over).

Each row belongs to one node of a cluster (``node``, ``ref``: the ref is the node's own counter). Every batch
first checks the node's lease inside its transaction: it share-locks the node's row at its generation (and
raises LEASE_LOST when another node took the lease). Batches share that lock, so they run side by side; a node
taking this one over bumps the generation under a row lock, which waits for the batches in flight and makes
every later one fail: a node that was taken over can never write a row it no longer owns. The lease itself is
renewed by cluster.py every lease interval. cluster.py drives leases and take-overs through the engine calls at
the end of this file; hand-off notifications are listened for on a connection and thread of their own.

Background jobs with a unique are unique across the cluster ((function, unique) index): a row that loses that
race is not inserted, and the store drops the local copy (see ``coalesced``). A row that loses to a row of
this very node (one whose removal is in flight beside it and failed) fails its batch instead (STALE_ROW): its
jobs are refused with an ERROR, never acknowledged and dropped.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ..cluster import FENCE_SHARE, ClaimedJob, Cluster, LeaseLost
from . import GroupCommitStore, Row, StoredJob, StoreError, pg_arrays

log = logging.getLogger("geartrain.store")

SCHEMA_VERSION = 3
MIGRATION_LOCK = 0x6765617274  # pg_advisory_xact_lock key: one node creates or migrates the schema at a time
LEASE_LOST = "GT001"
STALE_ROW = "GT002"
#: Batches in flight together, each on a connection of its own (see the module's docstring; geard
#: --postgres-writers). A batch starts beside another only once it is as big as the last one, so a second
#: writer costs no CPU per job while one keeps up, and takes over the waiting when it does not (benchmarks/
#: postgres.py: 2 beat 1 in every paired round; 3 was no better on 2 cores); a database far away may gain from more.
WRITERS = 2
HAND_OFF_CHANNEL = "geartrain_hand_off"
#: Jobs handed off by a leaving node wait under "<node>/left-<id>", a node whose lease has always expired.
POOL_MARK = "/left-"

#: The statements that bring the schema from version n - 1 to n (0: no tables), applied in order at start.
MIGRATIONS: dict[int, list[str]] = {}
MIGRATIONS[1] = [
    "CREATE TABLE IF NOT EXISTS geartrain_schema (version integer NOT NULL)",
    """CREATE TABLE IF NOT EXISTS geartrain_nodes (
        node text PRIMARY KEY,
        renewed timestamptz NOT NULL,
        generation bigint NOT NULL,
        address text NOT NULL DEFAULT '')""",
    """CREATE TABLE IF NOT EXISTS geartrain_jobs (
        node text NOT NULL,
        ref bigint NOT NULL,
        function bytea NOT NULL,
        unique_key bytea NOT NULL,
        priority smallint NOT NULL CHECK (priority IN (0, 1, 2)),
        when_to_run double precision NOT NULL,
        reducer bytea NOT NULL,
        data bytea NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        created timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (node, ref))""",
    # Coalescing across the cluster: one background job per (function, unique). "-" means "the data is the
    # unique" in Gearman: left out, as is the empty unique.
    """CREATE UNIQUE INDEX IF NOT EXISTS geartrain_jobs_unique ON geartrain_jobs (function, unique_key)
        WHERE unique_key <> '\\x'::bytea AND unique_key <> '\\x2d'::bytea""",
    f"""CREATE OR REPLACE FUNCTION geartrain_renew(n text, g bigint) RETURNS void AS $$
    BEGIN
        UPDATE geartrain_nodes SET renewed = now() WHERE node = n AND generation = g;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'node % lost its lease: another node took over its jobs', n
                USING ERRCODE = '{LEASE_LOST}';
        END IF;
    END $$ LANGUAGE plpgsql""",
]
# Server state beside the jobs (dead letters, schedules, attempt counts of retried jobs: lifecycle.py), per node.
MIGRATIONS[2] = [
    """CREATE TABLE IF NOT EXISTS geartrain_state (
        node text NOT NULL,
        kind text NOT NULL,
        key text NOT NULL,
        value bytea NOT NULL,
        PRIMARY KEY (node, kind, key))""",
]
# One batch in one statement: the lease check, the deletes, one multi-row insert; returns the refs not inserted
# because another node holds their function and unique (NULL when all were).
MIGRATIONS[3] = [
    f"""CREATE OR REPLACE FUNCTION geartrain_write(n text, g bigint, gone bigint[], refs bigint[],
            functions bytea[], uniques bytea[], priorities smallint[], whens float8[], reducers bytea[],
            datas bytea[]) RETURNS bigint[] AS $$
    DECLARE
        stored integer;
        lost bigint[];
    BEGIN
        PERFORM 1 FROM geartrain_nodes WHERE node = n AND generation = g FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'node % lost its lease: another node took over its jobs', n
                USING ERRCODE = '{LEASE_LOST}';
        END IF;
        IF cardinality(gone) > 0 THEN
            -- Removes first: a job that ended and came again with its unique in one batch is no conflict.
            DELETE FROM geartrain_jobs WHERE node = n AND ref = ANY(gone);
        END IF;
        IF cardinality(refs) > 0 THEN
            INSERT INTO geartrain_jobs (node, ref, function, unique_key, priority, when_to_run, reducer, data)
                SELECT n, * FROM unnest(refs, functions, uniques, priorities, whens, reducers, datas)
                ON CONFLICT DO NOTHING;
            GET DIAGNOSTICS stored = ROW_COUNT;
            IF stored < cardinality(refs) THEN
                SELECT array_agg(r) INTO lost FROM unnest(refs) r
                    WHERE NOT EXISTS (SELECT 1 FROM geartrain_jobs j WHERE j.node = n AND j.ref = r);
                IF EXISTS (SELECT 1 FROM unnest(refs, functions, uniques) AS t(r, f, u)
                           JOIN geartrain_jobs j ON j.function = t.f AND j.unique_key = t.u
                           WHERE t.r = ANY(lost) AND j.node = n) THEN
                    RAISE EXCEPTION 'a row of node % with the same function and unique is still being removed', n
                        USING ERRCODE = '{STALE_ROW}';
                END IF;
            END IF;
        END IF;
        RETURN lost;
    END $$ LANGUAGE plpgsql""",
]
_COLUMNS = "ref, function, unique_key, priority, when_to_run, reducer, data, attempts"
_WRITE = """SELECT geartrain_write(%s, %s, %b::bigint[], %b::bigint[], %b::bytea[], %b::bytea[], %b::smallint[],
    %b::float8[], %b::bytea[], %b::bytea[])"""
_INSERT = """INSERT INTO geartrain_jobs (node, ref, function, unique_key, priority, when_to_run, reducer, data)
    SELECT %s, * FROM unnest(%b::bigint[], %b::bytea[], %b::bytea[], %b::smallint[], %b::float8[], %b::bytea[],
                             %b::bytea[])
    ON CONFLICT DO NOTHING RETURNING ref"""
_CLAIM = f"""WITH picked AS (
        SELECT ref FROM geartrain_jobs WHERE node = %(dead)s ORDER BY ref LIMIT %(limit)s FOR UPDATE SKIP LOCKED),
    numbered AS (SELECT ref, row_number() OVER (ORDER BY ref) AS n FROM picked)
    UPDATE geartrain_jobs j SET node = %(me)s, ref = %(base)s + numbered.n - 1, attempts = j.attempts + 1
    FROM numbered WHERE j.node = %(dead)s AND j.ref = numbered.ref
    RETURNING {', '.join('j.' + c for c in _COLUMNS.split(', '))}"""


class PostgresStore(GroupCommitStore):
    """Background jobs in a PostgreSQL table shared by the nodes of a cluster, written in group commits."""

    def __init__(self, dsn: str, node: str, *, lease_interval: float = 2.0, takeover_after: float = 10.0,
                 gearmand_table: str = "queue", writers: int = WRITERS) -> None:
        super().__init__(f"PostgreSQL {describe_dsn(dsn)} (node {node})")
        self.dsn = dsn
        self.node = node
        self.writers = max(1, writers)
        #: Each writer thread's batch connection (autocommit), and all of them (closed by close_engine).
        self._local = threading.local()
        self._batch_conns: list[Any] = []
        self._batch_conns_lock = threading.Lock()
        self.lease_interval = lease_interval
        self.takeover_after = takeover_after
        self.gearmand_table = gearmand_table
        self.conn: Any = None
        self.generation = 0
        #: Whether the database answered the last call, and if not why (read by /readyz and logs).
        self.ready = False
        self.reason = "not connected yet"
        self._backoff = 0.0
        self._next_attempt = 0.0
        #: ref -> attempts of the jobs loaded at start (shown as retries in `show jobs`).
        self._attempts: dict[int, int] = {}
        self.cluster: Any = None

    @property
    def healthy(self) -> bool:
        return self.ready

    # ------------------------------------------------------------------ life cycle (loop)

    async def start(self, server: Any) -> None:
        await super().start(server)
        if self._attempts:
            for job in server.broker.jobs.values():
                attempts = self._attempts.get(job.store_ref)
                if attempts:
                    job.retries = attempts
            self._attempts = {}
        self.cluster = Cluster(self, server.broker, server)
        self.cluster.start()

    async def close(self) -> None:
        if self.cluster is not None:
            await self.cluster.stop()
        await super().close()

    def run(self, call: Callable[..., Any], *args: Any) -> Any:
        """Run an engine call on a writer thread after the commits already started, none beside it (an
        awaitable)."""
        return self.run_exclusive(call, *args)

    def leaving(self) -> None:
        """A graceful shutdown began: hand the queued jobs to the live nodes while the running ones finish."""
        if self.cluster is not None and self.loop is not None:
            self.loop.create_task(self.cluster.leave())

    def written_below(self) -> int:
        """A ref below which every job's batch has gone to a writer thread: an engine call queued now reads
        the database after all of them (and before the rest)."""
        return min(self._adds, default=self._next_ref)

    def reserve(self, count: int) -> int:
        """Reserve `count` refs for jobs taken over; returns the first."""
        first = self._next_ref
        self._next_ref += count
        return first

    # ------------------------------------------------------------------ connection (writer thread)

    def _connect(self) -> Any:
        now = time.monotonic()
        if now < self._next_attempt:
            raise StoreError(f"{self.location} is unreachable ({self.reason}); next attempt in "
                             f"{self._next_attempt - now:.1f}s")
        try:
            conn = psycopg.connect(**connection_options(self.dsn, f"geard {self.node}"))
            pg_arrays.register(conn)
        except psycopg.Error as exc:
            self._connection_lost(exc)
            raise StoreError(f"cannot connect to {self.location}: {one_line(exc)}") from exc
        if self._backoff:
            log.warning("reconnected to %s", self.location)
        self._backoff = 0.0
        return conn

    def _connection_lost(self, exc: BaseException, conn: Any = None) -> None:
        """The database did not answer: close that connection, back off (0.1 s doubling to 5 s, for every
        connection), say why."""
        if conn is self.conn:
            self.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
        self._backoff = min(5.0, self._backoff * 2 or 0.1)
        self._next_attempt = time.monotonic() + self._backoff
        reason = f"database unreachable: {one_line(exc)}"
        if self.ready or reason != self.reason:
            log.error("%s: %s; retrying in %.1fs", self.location, reason, self._backoff)
        self.ready = False
        self.reason = reason

    def _ok(self) -> None:
        if not self.ready:
            self.ready = True
            self.reason = "ok"

    def _db(self) -> Any:
        """The control connection, reconnecting (with backoff) after a failure."""
        if self.conn is None:  # after a reconnect the lease may be gone: cluster.py finds out at its next renew
            self.conn = self._connect()
            self._limit_idle_transactions(self.conn)
        return self.conn

    def _limit_idle_transactions(self, conn: Any) -> None:
        """Have the database end a transaction of the control connection left idle for takeover_after *
        FENCE_SHARE (by a node frozen or cut off between two of its round trips, holding its lease row): the
        lock goes with it, and the take-over waits for it no longer than for the lease."""
        limit = f"{max(1, round(self.takeover_after * FENCE_SHARE * 1000))}ms"
        try:
            conn.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)", (limit,))
            conn.commit()
        except psycopg.Error as exc:
            self._connection_lost(exc, conn)
            raise StoreError(f"{self.location}: {one_line(exc)}") from exc

    def _batch_db(self) -> Any:
        """This writer thread's batch connection (autocommit), reconnecting (with backoff) after a failure."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed and closed_by_server(conn):
            conn.close()  # idle since the database restarted or the link was cut: not worth a refused batch
        if conn is None or conn.closed:
            conn = self._local.conn = self._connect()
            conn.autocommit = True
            with self._batch_conns_lock:
                self._batch_conns = [c for c in self._batch_conns if not c.closed] + [conn]
        return conn

    def _call(self, what: Callable[[Any], Any], batch: bool = False) -> Any:
        """Run what(conn) in a transaction (on the control connection, or with batch on this thread's batch
        connection); a lost connection becomes a StoreError that says so, a lost lease LeaseLost."""
        conn = self._batch_db() if batch else self._db()
        try:
            result = what(conn)
        except psycopg.Error as exc:
            if conn.closed or isinstance(exc, psycopg.OperationalError):
                self._connection_lost(exc, conn)
                raise StoreError(f"{self.location}: {one_line(exc)}") from exc
            try:
                conn.rollback()
            except psycopg.Error as again:
                self._connection_lost(again, conn)
            if exc.sqlstate == LEASE_LOST:
                raise LeaseLost(f"{self.location}: {one_line(exc)}") from exc
            raise StoreError(f"{self.location}: {one_line(exc)}") from exc
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise
        self._ok()
        return result

    # ------------------------------------------------------------------ engine hooks (writer thread)

    def open_engine(self) -> None:
        conn = self.conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                cur.execute("SELECT to_regclass('geartrain_schema')")
                if cur.fetchone()[0] is not None:
                    cur.execute("SELECT max(version) FROM geartrain_schema")
                    version = cur.fetchone()[0] or 0
                else:
                    version = 0
                if version > SCHEMA_VERSION:
                    raise StoreError(f"{self.location} holds a geartrain schema of version {version}, newer "
                                     f"than this geard's ({SCHEMA_VERSION}): upgrade geartrain")
                if version < SCHEMA_VERSION:
                    for step in range(version + 1, SCHEMA_VERSION + 1):
                        for statement in MIGRATIONS[step]:
                            cur.execute(statement)
                    cur.execute("DELETE FROM geartrain_schema")
                    cur.execute("INSERT INTO geartrain_schema VALUES (%s)", (SCHEMA_VERSION,))
                    log.info("%s: schema version %d created or migrated from %d", self.location,
                             SCHEMA_VERSION, version)
            conn.commit()
            with conn.cursor() as cur:
                # Register (or come back): the new generation makes any older incarnation's lease void. The
                # row lock is held until load() commits, so a node taking over our jobs waits or is done.
                cur.execute("""INSERT INTO geartrain_nodes (node, renewed, generation, address)
                    VALUES (%s, now(), 1, %s)
                    ON CONFLICT (node) DO UPDATE SET generation = geartrain_nodes.generation + 1,
                        renewed = now(), address = excluded.address
                    RETURNING generation""", (self.node, socket.gethostname()))
                self.generation = cur.fetchone()[0]
                self._import_gearmand(cur)
        except StoreError:
            conn.rollback()
            self.close_engine()
            raise
        except psycopg.Error as exc:
            self.close_engine()
            raise StoreError(f"cannot use {self.location}: {one_line(exc)}") from exc
        self._ok()

    def _import_gearmand(self, cur: Any) -> None:
        """Move the rows of gearmand's libpq queue table (if there is one) into ours, once, oldest first."""
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                    "AND table_schema = current_schema()", (self.gearmand_table,))
        columns = {row[0] for row in cur.fetchall()}
        if not {"unique_key", "function_name", "priority", "data"} <= columns:
            return
        table = sql.Identifier(self.gearmand_table)
        when = sql.SQL("when_to_run" if "when_to_run" in columns else "0")
        cur.execute(sql.SQL("SELECT unique_key, function_name, priority, {}, data FROM {} ORDER BY ctid FOR UPDATE")
                    .format(when, table))
        rows = cur.fetchall()
        if not rows:
            return
        cur.execute("SELECT coalesce(max(ref), 0) FROM geartrain_jobs WHERE node = %s", (self.node,))
        start = cur.fetchone()[0] + 1
        adds = [(start + i, as_bytes(function), as_bytes(unique), int(priority), float(when_to_run or 0), b"",
                 as_bytes(data)) for i, (unique, function, priority, when_to_run, data) in enumerate(rows)]
        cur.execute(_INSERT, (self.node, *pg_arrays.columns(adds)))
        cur.execute(sql.SQL("DELETE FROM {}").format(table))
        log.info("took over %d jobs from gearmand's table %s in %s", len(rows), self.gearmand_table,
                 self.location)

    def load(self) -> Iterable[StoredJob]:
        conn = self._db()
        try:
            with conn.cursor(binary=True) as cur:
                owned = self._owned(cur)
            conn.commit()
        except psycopg.Error as exc:
            self.close_engine()
            raise StoreError(f"cannot read the jobs of {self.location}: {one_line(exc)}") from exc
        # Start-up's transaction (the registration, held from open_engine to here) is over: from now on none
        # may outlive a freeze of this node.
        self._limit_idle_transactions(conn)
        self._attempts = {item.job.ref: item.attempts for item in owned if item.attempts}
        return [item.job for item in owned]

    def write(self, adds: list[Row], removes: list[int]) -> None:
        def batch(conn: Any) -> list[int] | None:
            with conn.cursor(binary=True) as cur:
                cur.execute(_WRITE, (self.node, self.generation, pg_arrays.int8_array(removes),
                                     *pg_arrays.columns(adds)), prepare=True)
                return cur.fetchone()[0]

        lost = self._call(batch, batch=True)
        if lost:
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self.coalesced, lost)

    def load_state(self) -> dict[str, dict[str, bytes]]:
        def load(conn: Any) -> dict[str, dict[str, bytes]]:
            state: dict[str, dict[str, bytes]] = {}
            with conn.cursor(binary=True) as cur:
                cur.execute("SELECT kind, key, value FROM geartrain_state WHERE node = %s ORDER BY kind, key",
                            (self.node,))
                for kind, key, value in cur.fetchall():
                    state.setdefault(kind, {})[key] = bytes(value)
            conn.commit()
            return state

        return self._call(load)

    def write_state(self, changes: dict[tuple[str, str], bytes | None]) -> None:
        def write(conn: Any) -> None:
            with conn.cursor() as cur:
                gone = [key for key, value in changes.items() if value is None]
                kept = [(self.node, *key, value) for key, value in changes.items() if value is not None]
                if gone:
                    cur.executemany("DELETE FROM geartrain_state WHERE node = %s AND kind = %s AND key = %s",
                                    [(self.node, *key) for key in gone])
                if kept:
                    cur.executemany("INSERT INTO geartrain_state (node, kind, key, value) VALUES (%s, %s, %s, %s) "
                                    "ON CONFLICT (node, kind, key) DO UPDATE SET value = excluded.value", kept)
            conn.commit()

        self._call(write)

    def close_engine(self) -> None:
        if self.conn is not None and self.cluster is not None:
            # After the last batch (whose lease renewal would undo it): live nodes take the queued jobs now.
            try:
                self.hand_off()
                log.info("node %s left the cluster: its queued jobs go to the live nodes", self.node)
            except StoreError as exc:
                log.warning("node %s could not hand its jobs off (%s): they are taken over once its lease "
                            "expires", self.node, exc)
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        with self._batch_conns_lock:
            batch_conns, self._batch_conns = self._batch_conns, []
        for conn in batch_conns:
            conn.close()
        self.ready = False
        self.reason = "closed"

    # ------------------------------------------------------------------ loop side

    def coalesced(self, refs: list[int]) -> None:
        """Rows another node already held (same function and unique): that node runs the job, we drop ours.

        Called on the loop before the batch's acknowledgements go out, so the submitter still gets JOB_CREATED
        (the handle of a unique background job is the same on every node: see cluster.unique_handle).
        """
        if self.cluster is not None:
            self.cluster.drop_refs(set(refs), "another node holds the same function and unique")

    # ------------------------------------------------------------------ cluster calls (writer thread)

    def renew(self) -> None:
        """Renew this node's lease; LeaseLost if another node took it over, StoreError if unreachable."""
        def renew(conn: Any) -> None:
            conn.execute("SELECT geartrain_renew(%s, %s)", (self.node, self.generation))
            conn.commit()

        self._call(renew)

    def rejoin(self) -> list[ClaimedJob]:
        """After a lost lease: a new generation, and the jobs this node still owns (the rest was taken)."""
        def rejoin(conn: Any) -> list[ClaimedJob]:
            with conn.cursor(binary=True) as cur:
                cur.execute("UPDATE geartrain_nodes SET generation = generation + 1, renewed = now() "
                            "WHERE node = %s RETURNING generation", (self.node,))
                found = cur.fetchone()
                if found is None:
                    cur.execute("INSERT INTO geartrain_nodes (node, renewed, generation, address) "
                                "VALUES (%s, now(), 1, %s) RETURNING generation",
                                (self.node, socket.gethostname()))
                    found = cur.fetchone()
                owned = self._owned(cur)
            conn.commit()
            self.generation = found[0]
            return owned

        return self._call(rejoin)

    def owned(self) -> list[ClaimedJob]:
        """The jobs this node owns in the database, oldest first."""
        def owned(conn: Any) -> list[ClaimedJob]:
            with conn.cursor(binary=True) as cur:
                rows = self._owned(cur)
            conn.commit()
            return rows

        return self._call(owned)

    def _owned(self, cur: Any) -> list[ClaimedJob]:
        cur.execute(f"SELECT {_COLUMNS} FROM geartrain_jobs WHERE node = %s ORDER BY ref", (self.node,))
        return [ClaimedJob(stored_job(row), row[7]) for row in cur.fetchall()]

    def dead_nodes(self) -> list[str]:
        """Nodes whose lease expired more than takeover_after ago and that still own jobs."""
        def dead(conn: Any) -> list[str]:
            rows = conn.execute("""SELECT n.node FROM geartrain_nodes n
                WHERE n.node <> %s AND n.renewed < now() - make_interval(secs => %s)
                AND EXISTS (SELECT 1 FROM geartrain_jobs j WHERE j.node = n.node) ORDER BY n.renewed""",
                                (self.node, self.takeover_after)).fetchall()
            conn.commit()
            return [row[0] for row in rows]

        return self._call(dead)

    def claim(self, dead: str, base: int, limit: int) -> list[ClaimedJob]:
        """Take over up to `limit` jobs of a dead node, oldest first, under refs base, base+1, ..."""
        def claim(conn: Any) -> list[ClaimedJob]:
            with conn.cursor(binary=True) as cur:
                cur.execute("""SELECT 1 FROM geartrain_nodes WHERE node = %s
                    AND renewed < now() - make_interval(secs => %s) FOR UPDATE SKIP LOCKED""",
                            (dead, self.takeover_after))
                if cur.fetchone() is None:  # it came back, or another node is taking it over right now
                    conn.rollback()
                    return []
                cur.execute("UPDATE geartrain_nodes SET generation = generation + 1 WHERE node = %s", (dead,))
                cur.execute(_CLAIM, {"dead": dead, "me": self.node, "base": base, "limit": limit})
                rows = sorted(cur.fetchall())
                if len(rows) < limit and POOL_MARK in dead:  # a hand-off pool, now empty: forget it
                    cur.execute("DELETE FROM geartrain_nodes WHERE node = %s", (dead,))
            conn.commit()
            return [ClaimedJob(stored_job(row), row[7]) for row in rows]

        return self._call(claim)

    def hand_off(self) -> None:
        """Leaving: mark the lease expired and tell the live nodes, which take the queued jobs over at once."""
        def hand_off(conn: Any) -> None:
            conn.execute("UPDATE geartrain_nodes SET renewed = '-infinity' WHERE node = %s AND generation = %s",
                         (self.node, self.generation))
            conn.execute("SELECT pg_notify(%s, %s)", (HAND_OFF_CHANNEL, self.node))
            conn.commit()

        self._call(hand_off)

    def hand_off_jobs(self, refs: list[int]) -> None:
        """Hand these jobs to the live nodes now: they move to a node of their own whose lease has expired (a
        new name each time, so their refs never collide), and the live nodes are told."""
        def move(conn: Any) -> None:
            pool = f"{self.node}{POOL_MARK}{uuid.uuid4().hex[:12]}"
            with conn.cursor() as cur:
                cur.execute("SELECT geartrain_renew(%s, %s)", (self.node, self.generation))
                cur.execute("INSERT INTO geartrain_nodes (node, renewed, generation, address) "
                            "VALUES (%s, '-infinity', 1, %s)", (pool, socket.gethostname()))
                cur.execute("UPDATE geartrain_jobs SET node = %s WHERE node = %s AND ref = ANY(%s)",
                            (pool, self.node, refs))
                cur.execute("SELECT pg_notify(%s, %s)", (HAND_OFF_CHANNEL, pool))
            conn.commit()

        self._call(move)

    def watch_hand_offs(self, on_hand_off: Callable[[str], None], stopping: threading.Event) -> None:
        """Call on_hand_off(node) whenever a node hands its jobs off, until stopping is set (its own thread and
        connection: the writer thread is never held by it). Reconnects after 1 s when the database is away."""
        while not stopping.is_set():
            try:
                with psycopg.connect(**connection_options(self.dsn, f"geard {self.node} hand-offs"),
                                     autocommit=True) as conn:
                    conn.execute(f"LISTEN {HAND_OFF_CHANNEL}")
                    while not stopping.is_set():
                        for notify in conn.notifies(timeout=0.5):
                            if notify.payload != self.node:
                                on_hand_off(notify.payload)
            except psycopg.Error:
                stopping.wait(1.0)


def closed_by_server(conn: Any) -> bool:
    """Whether an idle connection has something to read: the server's goodbye, or a reset (an idle connection
    in autocommit expects nothing)."""
    try:
        return bool(select.select([conn.fileno()], [], [], 0)[0])
    except (OSError, ValueError, psycopg.Error):
        return True


def stored_job(row: tuple) -> StoredJob:
    ref, function, unique, priority, when, reducer, data = row[:7]
    return StoredJob(ref, bytes(function), bytes(unique), priority, float(when), bytes(reducer), bytes(data))


def as_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if value is None:
        return b""
    return str(value).encode("utf-8")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


#: libpq settings a DSN may override: a database that vanishes without a word (machine gone, network cut) is
#: noticed in seconds, not after the kernel's two hours of TCP keepalive.
CONNECTION_DEFAULTS = {"connect_timeout": "5", "keepalives": "1", "keepalives_idle": "5",
                       "keepalives_interval": "2", "keepalives_count": "3", "tcp_user_timeout": "10000"}


def connection_options(dsn: str, application: str) -> dict[str, str]:
    """The DSN's settings over CONNECTION_DEFAULTS, with this node's application name."""
    options = {**CONNECTION_DEFAULTS, "application_name": application[:63], **conninfo_to_dict(dsn)}
    return {"conninfo": "", **options}


def describe_dsn(dsn: str) -> str:
    """The DSN without its password, for log lines."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "database"
    params.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in params.items() if k in ("host", "port", "dbname", "user")) or "database"
