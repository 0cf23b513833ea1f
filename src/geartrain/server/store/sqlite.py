"""The embedded durable queue: one SQLite file in WAL mode, synchronous=FULL, one writer thread.

Each batch is one transaction; a commit syncs the write-ahead log, so a job whose JOB_CREATED went out survives
SIGKILL and (as far as SQLite and the disk promise) power loss. A torn write at the end of the log is discarded
by SQLite at the next open together with the unacknowledged batch it belonged to.

The file is opened with locking_mode=EXCLUSIVE: a second server pointed at the same file refuses to start
instead of replaying (and running) the same jobs a second time. The queue can be read with the sqlite3 shell
while no server uses it.

A file written by gearmand's libsqlite3 queue (table gearman_queue) is taken over: its jobs are moved into
geartrain's table at start, in the same transaction, so they are replayed once.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from . import GroupCommitStore, Row, StoredJob, StoreError

log = logging.getLogger("geartrain.store")

SCHEMA_VERSION = 1
TABLE = "geartrain_jobs"
INVALID_TABLE = "geartrain_jobs_invalid"
GEARMAND_TABLE = "gearman_queue"

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
_SELECT = f"SELECT id, function, unique_key, priority, when_to_run, reducer, data FROM {TABLE} ORDER BY id"
_INSERT = f"INSERT INTO {TABLE} (id, function, unique_key, priority, when_to_run, reducer, data) " \
          "VALUES (?, ?, ?, ?, ?, ?, ?)"
_DELETE = f"DELETE FROM {TABLE} WHERE id = ?"
#: Server state beside the jobs: dead letters, schedules, attempt counts (see GroupCommitStore.save_state).
STATE_TABLE = "geartrain_state"
_STATE_SCHEMA = f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (kind TEXT NOT NULL, key TEXT NOT NULL, " \
                "value BLOB NOT NULL, PRIMARY KEY (kind, key))"


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
    """Background jobs in a SQLite file (WAL, synchronous=FULL, exclusive lock), written in group commits."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        super().__init__(str(self.path))
        self.conn: sqlite3.Connection | None = None
        self._rows_per_statement = 512
        self._statements: dict[tuple[str, int], str] = {}

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
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"the queue file {path} cannot use a write-ahead log (journal mode {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            # Take the write lock now; exclusive locking mode keeps it until the server closes the file.
            conn.execute("BEGIN IMMEDIATE")
            check = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
            if check != "ok":
                raise StoreError(f"the queue file {path} is damaged ({check}); no job was read. Move it aside "
                                 "(with its -wal file) and recover what you can with `sqlite3 FILE .recover`")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"the queue file {path} was written by a newer geartrain (schema {version})")
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
            raise StoreError(f"cannot use the queue file {path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"the queue file {path} is not a usable SQLite database ({exc}); no job was read. "
                             "Move it aside (with its -wal file) or name another file with --sqlite-db") from exc
        getlimit = getattr(conn, "getlimit", None)  # Python 3.11+
        variables = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit is not None else 999
        self._rows_per_statement = max(1, min(512, variables // 7))
        self.conn = conn

    def _take_over_gearmand(self, conn: sqlite3.Connection) -> None:
        """Move the jobs of gearmand's libsqlite3 queue (same file) into our table, oldest first."""
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                             (GEARMAND_TABLE,)).fetchone()
        if found is None:
            return
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({GEARMAND_TABLE})")}
        if not {"unique_key", "function_name", "priority", "data"} <= columns:
            return
        when = "when_to_run" if "when_to_run" in columns else "0"
        rows = conn.execute(f"SELECT unique_key, function_name, priority, {when}, data FROM {GEARMAND_TABLE} "
                            "ORDER BY rowid").fetchall()
        if not rows:
            return
        start = (conn.execute(f"SELECT max(id) FROM {TABLE}").fetchone()[0] or 0) + 1
        conn.executemany(_INSERT, [
            (start + i, _as_bytes(function) or b"", _as_bytes(unique) or b"", priority, when_to_run or 0,
             b"", _as_bytes(data) or b"")
            for i, (unique, function, priority, when_to_run, data) in enumerate(rows)
        ])
        conn.execute(f"DELETE FROM {GEARMAND_TABLE}")
        log.info("took over %d jobs from gearmand's table %s in %s", len(rows), GEARMAND_TABLE, self.path)

    def load(self) -> Iterable[StoredJob]:
        conn = self._conn()
        jobs = []
        invalid: list[tuple[tuple, str]] = []
        for row in conn.execute(_SELECT):
            result = validate_row(row)
            if isinstance(result, str):
                invalid.append((row, result))
            else:
                jobs.append(result)
        if invalid:
            conn.execute("BEGIN")
            try:
                for row, reason in invalid:
                    log.error("stored job %s in %s cannot be replayed (%s): moved to table %s",
                              row[0], self.path, reason, INVALID_TABLE)
                    conn.execute(f"INSERT INTO {INVALID_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*row, reason))
                    conn.execute(_DELETE, (row[0],))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return jobs

    def write(self, adds: list[Row], removes: list[int]) -> None:
        # Many rows per statement: the sqlite3 module lets go of the GIL around every step, and taking it back
        # while the event loop thread is busy can cost a whole switch interval, so few steps it is.
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            start = 0
            for size in chunk_sizes(len(adds), self._rows_per_statement):
                params = [value for row in adds[start:start + size] for value in row]
                conn.execute(self._statement("insert", size), params)
                start += size
            start = 0
            for size in chunk_sizes(len(removes), self._rows_per_statement * 7):
                conn.execute(self._statement("delete", size), removes[start:start + size])
                start += size
            conn.execute("COMMIT")  # synchronous=FULL: the log is synced before this returns
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _statement(self, kind: str, rows: int) -> str:
        sql = self._statements.get((kind, rows))
        if sql is None:
            if kind == "insert":
                sql = _INSERT + ", (?, ?, ?, ?, ?, ?, ?)" * (rows - 1)
            else:
                sql = f"DELETE FROM {TABLE} WHERE id IN ({', '.join('?' * rows)})"
            self._statements[(kind, rows)] = sql
        return sql

    # ------------------------------------------------------------------ server state (lifecycle.py)

    def load_state(self) -> dict[str, dict[str, bytes]]:
        conn = self._conn()
        conn.execute(_STATE_SCHEMA)
        state: dict[str, dict[str, bytes]] = {}
        for kind, key, value in conn.execute(f"SELECT kind, key, value FROM {STATE_TABLE} ORDER BY rowid"):
            state.setdefault(kind, {})[key] = bytes(value)
        return state

    def write_state(self, changes: dict[tuple[str, str], bytes | None]) -> None:
        conn = self._conn()
        conn.execute("BEGIN")
        try:
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
