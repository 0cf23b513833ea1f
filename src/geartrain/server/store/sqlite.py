"""The embedded durable queue: one SQLite file in WAL mode, one writer thread.

Each batch is one transaction, and a job's JOB_CREATED goes out after its commit. What the commit promises is the
queue-sync setting (SYNC_MODES, PRAGMA synchronous): with "full" (the default) the commit syncs the write-ahead
log, so an acknowledged job survives SIGKILL and (as far as SQLite and the disk promise) power loss; with "normal"
the commit reaches the operating system but the log is synced only at checkpoints, so an acknowledged job
survives a killed server, not a power cut or a kernel crash (which may lose the last commits, never corrupt the
file). A torn write at the end of the log is discarded by SQLite at the next open together with the
unacknowledged batch it belonged to.

The file is opened with locking_mode=EXCLUSIVE: a second server pointed at the same file refuses to start
instead of replaying (and running) the same jobs a second time. The queue can be read with the sqlite3 shell
while no server uses it.

A file written by gearmand's libsqlite3 queue (table gearman_queue) is taken over: its jobs are moved into
geartrain's table at start, in the same transaction, so they are replayed once.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from . import GroupCommitStore, Row, StoredJob, StoreError, StoreLost, failure_reason
from .sqlite_rows import insert_params, split_large

log = logging.getLogger("geartrain.store")

SCHEMA_VERSION = 1
#: A checkpoint runs when the log reaches this many pages (4 MiB at 4 KiB pages): the log stays that small while
#: busy, plus the largest batch; journal_size_limit cuts it back after a checkpoint, and after idle_delay without
#: writes it is truncated to nothing. A checkpoint runs inside the commit that triggers it and holds back that
#: batch's acknowledgements (with synchronous=NORMAL it is also the only fsync: log and file); at 256 pages (1 MiB)
#: a commit of 512 64-byte jobs took 0.7 ms on average in COMMIT against 0.3 ms at 1,024 pages, and "normal" ran
#: 20-50% fewer submits per second in benchmarks/durable.py.
CHECKPOINT_PAGES = 1024
WAL_SIZE_LIMIT = 4 << 20
#: Free space below which the start logs a warning (the store still starts and serves).
LOW_SPACE = 4 << 20
TABLE = "geartrain_jobs"
INVALID_TABLE = "geartrain_jobs_invalid"
GEARMAND_TABLE = "gearman_queue"
#: Server state beside the jobs: dead letters, schedules, attempt counts (see GroupCommitStore.save_state).
STATE_TABLE = "geartrain_state"
_STATE_SCHEMA = f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (kind TEXT NOT NULL, key TEXT NOT NULL, " \
                "value BLOB NOT NULL, PRIMARY KEY (kind, key))"

_COLUMNS = """
    function BLOB NOT NULL,
    unique_key BLOB NOT NULL,
    priority INTEGER NOT NULL,
    when_to_run REAL NOT NULL,
    reducer BLOB NOT NULL,
    data BLOB NOT NULL"""
_SCHEMA = [
    # id orders the jobs: replay follows it, so each priority keeps its submission order.
    f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY,{_COLUMNS})",
    # Rows that cannot be turned back into a job are moved here at start (with the reason), never run.
    f"CREATE TABLE IF NOT EXISTS {INVALID_TABLE} (id INTEGER,{_COLUMNS.replace(' NOT NULL', '')},"
    " reason TEXT)",
]
EXPECTED_COLUMNS = ["id", "function", "unique_key", "priority", "when_to_run", "reducer", "data"]
_SELECT_COLUMNS = f"SELECT id, function, unique_key, priority, when_to_run, reducer, data FROM {TABLE}"
_SELECT = f"{_SELECT_COLUMNS} ORDER BY id"
_INSERT_INTO = f"INSERT INTO {TABLE} (id, function, unique_key, priority, when_to_run, reducer, data) VALUES "
_INSERT = _INSERT_INTO + "(?, ?, ?, ?, ?, ?, ?)"
_INSERT_EMPTY = _INSERT_INTO + "(?, ?, ?, ?, ?, ?, zeroblob(?))"
#: Job data at least this large is written through a blob handle: SQLite keeps a copy of every bound parameter in
#: a cached statement until it is bound again, which would hold large payloads long after their jobs ended.
LARGE_DATA = 16 * 1024
#: --queue-sync: PRAGMA synchronous of each mode (see the module docstring for what each promises).
SYNC_MODES = {"full": "FULL", "normal": "NORMAL"}
_DELETE = f"DELETE FROM {TABLE} WHERE id = ?"
_PEEK = f"SELECT id, unique_key, CASE WHEN unique_key = X'2D' THEN data END FROM {TABLE} WHERE id BETWEEN ? AND ?"


def check_layout(conn: sqlite3.Connection, path: Path, gearmand_table: str = GEARMAND_TABLE) -> bool:
    """Whether the file is new (empty: the schema must be made); raise StoreError, having written nothing, when
    it holds a layout this version does not use (gearmand's queue, under the table name given, is taken over)."""
    tables = {name: sql for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")}
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"the queue file {path} was written by a newer geartrain (schema {version}); it was left "
                         "unchanged. Run that version, or name another file with --sqlite-db")
    ours = {TABLE, INVALID_TABLE, STATE_TABLE}
    if version == SCHEMA_VERSION and TABLE in tables and _columns(conn, TABLE) == EXPECTED_COLUMNS:
        if set(tables) <= ours | {gearmand_table}:
            return False
    elif version == 0 and set(tables) <= {gearmand_table} and (not tables or _is_gearmand_queue(conn, gearmand_table)):
        return True  # empty, or gearmand's queue: taken over at start
    found = ", ".join(sorted(tables)) or "no tables"
    raise StoreError(
        f"the queue file {path} has a table layout this geartrain does not use (user_version {version}, {found}); "
        "it was left unchanged. Name another file with --sqlite-db; to import its jobs, copy them into a table "
        f"{GEARMAND_TABLE}(unique_key, function_name, priority, data, when_to_run) of a new file, which geard "
        "takes over at start")


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def _is_gearmand_queue(conn: sqlite3.Connection, table: str) -> bool:
    return {"unique_key", "function_name", "priority", "data"} <= set(_columns(conn, table))


def free_bytes(directory: Path) -> int | None:
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def chunk_sizes(count: int, most: int) -> list[int]:
    """Split count into chunks of `most`, then powers of two: few distinct statements, each prepared once."""
    sizes = []
    while count:
        size = most if count >= most else 1 << (count.bit_length() - 1)
        sizes.append(size)
        count -= size
    return sizes


def _as_bytes(value: object) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):  # written by hand or by another tool as TEXT
        return value.encode("utf-8")
    return None


def validate_row(row: tuple) -> StoredJob | str:
    """A StoredJob, or the reason why the row cannot be one."""
    ref, function, unique, priority, when, reducer, data = row
    function, unique, reducer, data = (_as_bytes(v) for v in (function, unique, reducer, data))
    if not isinstance(ref, int):
        return "id is not an integer"
    if not function:
        return "function name is missing"
    if unique is None or reducer is None or data is None:
        return "unique, reducer or data is not text or a blob"
    if not isinstance(priority, int) or isinstance(priority, bool) or priority not in (0, 1, 2):
        return f"priority {priority!r} is not 0, 1 or 2"
    if not isinstance(when, (int, float)) or when != when or when < 0:
        return f"time to run {when!r} is not a number of seconds"
    return StoredJob(ref, function, unique, priority, float(when), reducer, data)


class SQLiteStore(GroupCommitStore):
    """Background jobs in a SQLite file (WAL, synchronous per `sync`, exclusive lock), written in group commits."""

    def __init__(self, path: str | Path, gearmand_table: str | None = None, sync: str = "full") -> None:
        if sync not in SYNC_MODES:
            raise StoreError(f"unknown queue sync mode {sync!r}: use {' or '.join(SYNC_MODES)}")
        self.path = Path(path).absolute()
        #: PRAGMA synchronous of the connection (SYNC_MODES).
        self.synchronous = SYNC_MODES[sync]
        #: gearmand's libsqlite3 table (its --libsqlite3-table) whose jobs are taken over at start.
        self.gearmand_table = gearmand_table or GEARMAND_TABLE
        super().__init__(str(self.path))
        # Set on the instance: compiled, Store's class attributes are the instance's (a class attribute of an
        # interpreted subclass would not be seen).
        self.can_spill = True
        self.conn: sqlite3.Connection | None = None
        self._rows_per_statement = 512
        self._statements: dict[tuple[str, int], str] = {}
        self._identity: tuple[tuple[int, int] | None, ...] = (None, None)
        #: Whether something was written since the last idle checkpoint.
        self._unsynced = False

    # ------------------------------------------------------------------ writer thread

    def open_engine(self) -> None:
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of the queue file {path}: {exc}") from exc
        try:
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=0.5)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the queue file {path}: {exc}") from exc
        try:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            # Everything is read and checked before anything is written: a file this version did not write
            # is left exactly as it was (no table added, no user_version, no journal mode changed).
            fresh = check_layout(conn, path, self.gearmand_table)
            check = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
            if check != "ok":
                raise StoreError(f"the queue file {path} is damaged ({check}); no job was read. Move it aside "
                                 "(with its -wal file) and recover what you can with `sqlite3 FILE .recover`")
            if fresh:
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # before the first table: lets it shrink at idle
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"the queue file {path} cannot use a write-ahead log (journal mode {mode})")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA temp_store=MEMORY")  # no temporary files: no descriptor to find at commit
            conn.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            # Take the write lock now; exclusive locking mode keeps it until the server closes the file.
            conn.execute("BEGIN IMMEDIATE")
            if fresh:  # on a full disk an existing queue needs no write to start
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._take_over_gearmand(conn)
            conn.execute("COMMIT")
        except StoreError:
            conn.close()
            raise
        except sqlite3.OperationalError as exc:
            conn.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreError(f"the queue file {path} is in use by another server ({exc})") from exc
            raise StoreError(f"cannot use the queue file {path}: {failure_reason(exc)}") from exc
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"the queue file {path} is not a usable SQLite database ({exc}); no job was read. "
                             "Move it aside (with its -wal file) or name another file with --sqlite-db") from exc
        getlimit = getattr(conn, "getlimit", None)  # Python 3.11+
        variables = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit is not None else 999
        self._rows_per_statement = max(1, min(512, variables // 7))
        self.conn = conn
        self._identity = self._identities()  # the log may not exist yet: see write()
        self._unsynced = False
        free = free_bytes(path.parent)
        if free is not None and free < LOW_SPACE:
            log.warning("the volume of the queue file %s has %d KiB free: background submits that do not fit are "
                        "refused with ERROR QUEUE_ERROR (disk full) until there is room", path, free // 1024)

    def _identities(self) -> tuple[tuple[int, int] | None, ...]:
        """(st_dev, st_ino) of the file and of its log as the path names them now (None: no such file)."""
        found = []
        for name in (self.path, self.wal_path):
            try:
                st = os.stat(name)
            except FileNotFoundError:
                found.append(None)
            else:
                found.append((st.st_dev, st.st_ino))
        return tuple(found)

    @property
    def wal_path(self) -> Path:
        return self.path.with_name(self.path.name + "-wal")

    def check_engine(self) -> None:
        if self.conn is None:
            return
        now = self._identities()
        if now == self._identity or (self._identity[1] is None and now[0] == self._identity[0]):
            return
        what = "the queue file" if now[0] != self._identity[0] else "the log (-wal) of the queue file"
        how = "deleted" if (now[0] if what == "the queue file" else now[1]) is None else "replaced by another file"
        raise StoreLost(f"{what} {self.path} was {how} under the running server")

    def recreate_engine(self, rows: list[Row]) -> None:
        conn, self.conn = self.conn, None
        now = self._identities()
        if now[0] is not None and now[0] != self._identity[0]:
            # Another file took the path: keep it, under a name of its own, and the log beside it if not ours.
            aside = self.path.with_name(f"{self.path.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
            os.rename(self.path, aside)
            if now[1] is not None and now[1] != self._identity[1]:
                os.rename(self.wal_path, aside.with_name(aside.name + "-wal"))
            log.error("moved the file that replaced the queue file %s to %s", self.path, aside)
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                log.warning("closing the lost queue file %s: %s", self.path, exc)
        self.open_engine()
        self.write(rows, [])

    def idle_engine(self) -> None:
        self.check_engine()
        conn = self._conn()
        if not self._unsynced:
            return
        # Nothing was written for a while: give the free pages back (files made by this version) and empty the log.
        if conn.execute("PRAGMA freelist_count").fetchone()[0]:
            conn.execute("PRAGMA incremental_vacuum")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._unsynced = False

    def _take_over_gearmand(self, conn: sqlite3.Connection) -> None:
        """Move the jobs of gearmand's libsqlite3 queue (same file) into our table, oldest first."""
        name = self.gearmand_table
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
        if found is None or name in (TABLE, INVALID_TABLE):
            return
        table = '"' + name.replace('"', '""') + '"'
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if not {"unique_key", "function_name", "priority", "data"} <= columns:
            return
        when = "when_to_run" if "when_to_run" in columns else "0"
        rows = conn.execute(f"SELECT unique_key, function_name, priority, {when}, data FROM {table} "
                            "ORDER BY rowid").fetchall()
        if not rows:
            return
        start = (conn.execute(f"SELECT max(id) FROM {TABLE}").fetchone()[0] or 0) + 1
        conn.executemany(_INSERT, [
            (start + i, _as_bytes(function) or b"", _as_bytes(unique) or b"", priority, when_to_run or 0,
             b"", _as_bytes(data) or b"")
            for i, (unique, function, priority, when_to_run, data) in enumerate(rows)
        ])
        conn.execute(f"DELETE FROM {table}")
        log.info("took over %d jobs from gearmand's table %s in %s", len(rows), name, self.path)

    def load(self) -> Iterable[StoredJob]:
        return self._load(self._conn().execute(_SELECT))

    def load_chunk(self, after: int, limit: int) -> tuple[list[StoredJob], int, bool]:
        rows = self._conn().execute(f"{_SELECT_COLUMNS} WHERE id > ? ORDER BY id LIMIT ?", (after, limit)).fetchall()
        last = rows[-1][0] if rows and isinstance(rows[-1][0], int) else after
        return self._load(rows), last, len(rows) < limit

    def _load(self, rows: Iterable[tuple]) -> list[StoredJob]:
        """The valid rows as jobs; invalid ones are moved to INVALID_TABLE with the reason."""
        conn = self._conn()
        jobs = []
        invalid: list[tuple[tuple, str]] = []
        for row in rows:
            result = validate_row(row)
            if isinstance(result, str):
                invalid.append((row, result))
            else:
                jobs.append(result)
        for row, reason in invalid:
            log.error("stored job %s in %s cannot be replayed (%s): moved to table %s",
                      row[0], self.path, reason, INVALID_TABLE)
        if invalid:
            try:
                conn.execute("BEGIN")
                for row, reason in invalid:
                    conn.execute(f"INSERT INTO {INVALID_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*row, reason))
                    conn.execute(_DELETE, (row[0],))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:  # a full disk, say: they stay where they are, still not replayed
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                log.error("could not move them in %s (%s): they stay in table %s, not replayed",
                          self.path, failure_reason(exc), TABLE)
                self.reserve_refs(max((row[0] for row, _ in invalid if isinstance(row[0], int)), default=0))
        return jobs

    def write(self, adds: list[Row], removes: list[int]) -> None:
        self._apply(adds, removes)

    def read_rows(self, ranges: list[tuple[int, int]]) -> dict[int, Row]:
        # By rowid ranges: the primary key serves them, no index of its own to keep up on every insert.
        conn = self._conn()
        rows: dict[int, Row] = {}
        select = f"{_SELECT_COLUMNS} WHERE id BETWEEN ? AND ?"
        for first, last in ranges:
            for row in conn.execute(select, (first, last)):
                rows[row[0]] = row
        return rows

    def peek_uniques(self, ranges: list[tuple[int, int]]) -> dict[int, tuple[bytes, bytes | None]]:
        # On the loop (or the writer thread, peek_later), through the writer's connection: locking_mode=EXCLUSIVE
        # lets no other connection read the file. SQLite serializes it with the writer thread's statements (its
        # default, serialized, threading mode: sqlite3.threadsafety 3), so on the loop it may wait for the one in
        # progress, a commit's sync at worst, unless the store is quiet(). The rows it reads are committed: a batch
        # in progress only adds rows and removes ones of jobs that ended, never one of a spilled job.
        conn = self._conn()
        rows: dict[int, tuple[bytes, bytes | None]] = {}
        for first, last in ranges:
            for ref, unique, data in conn.execute(_PEEK, (first, last)):
                rows[ref] = (unique, data)
        return rows

    def _apply(self, adds: list[Row], removes: list[int], rewrite_header: bool = False) -> None:
        # Many rows per statement: the sqlite3 module lets go of the GIL around every step, and taking it back
        # while the event loop thread is busy can cost a whole switch interval, so few steps it is.
        conn = self._conn()
        blobopen = getattr(conn, "blobopen", None)  # Python 3.11+
        large: list[Row] = []
        if blobopen is not None:
            adds, large = split_large(adds, LARGE_DATA)
        statements: list[tuple[str, list[object]]] = []
        start = 0
        for size in chunk_sizes(len(adds), self._rows_per_statement):
            kind, params = insert_params(adds[start:start + size])
            statements.append((self._statement(kind, size), params))
            start += size
        start = 0
        for size in chunk_sizes(len(removes), self._rows_per_statement * 7):
            statements.append((self._statement("delete", size), removes[start:start + size]))
            start += size
        if rewrite_header:
            statements.append((f"PRAGMA user_version={SCHEMA_VERSION}", []))
        try:
            if len(statements) == 1 and not large:
                # One statement is a transaction of its own (same commit, same sync): no BEGIN and COMMIT, two
                # fewer steps to take the GIL back after.
                conn.execute(*statements[0])
            else:
                conn.execute("BEGIN")
                for row in large:
                    # Written through a blob handle: a bound parameter would stay copied in the cached statement.
                    conn.execute(_INSERT_EMPTY, (*row[:6], len(row[6])))
                    with blobopen(TABLE, "data", row[0]) as blob:
                        blob.write(row[6])
                for sql, params in statements:
                    conn.execute(sql, params)
                conn.execute("COMMIT")  # synchronous=FULL: the log is synced before this returns (NORMAL: written)
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as exc:
                    log.warning("rolling back a failed batch in %s: %s", self.path, exc)
            raise
        finally:
            self._unsynced = True
        if self._identity[1] is None:  # the first write made the log
            self._identity = self._identities()

    def discard(self, refs: list[int]) -> None:
        # A transaction that writes a page whatever the rows: its frames overwrite the failed batch's in the log,
        # which breaks their checksum chain, so a crash cannot bring that batch back.
        self._apply([], refs, rewrite_header=True)

    def _statement(self, kind: str, rows: int) -> str:
        sql = self._statements.get((kind, rows))
        if sql is None:
            if kind == "insert":
                sql = _INSERT + ", (?, ?, ?, ?, ?, ?, ?)" * (rows - 1)
            elif kind == "uniform":  # ?1-?5: function, priority, time, reducer, first ref; then unique, data per row
                sql = _INSERT_INTO + ", ".join(f"(?5 + {i}, ?1, ?{6 + 2 * i}, ?2, ?3, ?4, ?{7 + 2 * i})"
                                               for i in range(rows))
            else:
                sql = f"DELETE FROM {TABLE} WHERE id IN ({', '.join('?' * rows)})"
            self._statements[(kind, rows)] = sql
        return sql

    # ------------------------------------------------------------------ server state (lifecycle.py)

    def load_state(self) -> dict[str, dict[str, bytes]]:
        conn = self._conn()
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (STATE_TABLE,)).fetchone():
            return {}  # made by the first write_state: starting writes nothing (a full disk must not stop it)
        state: dict[str, dict[str, bytes]] = {}
        for kind, key, value in conn.execute(f"SELECT kind, key, value FROM {STATE_TABLE} ORDER BY rowid"):
            state.setdefault(kind, {})[key] = bytes(value)
        return state

    def write_state(self, changes: dict[tuple[str, str], bytes | None]) -> None:
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            conn.execute(_STATE_SCHEMA)
            conn.executemany(f"DELETE FROM {STATE_TABLE} WHERE kind = ? AND key = ?",
                             [key for key, value in changes.items() if value is None])
            conn.executemany(f"INSERT OR REPLACE INTO {STATE_TABLE} (kind, key, value) VALUES (?, ?, ?)",
                             [(*key, value) for key, value in changes.items() if value is not None])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close_engine(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    def _conn(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StoreError(f"the queue file {self.path} is not open")
        return self.conn
