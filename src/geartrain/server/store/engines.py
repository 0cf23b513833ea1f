"""Which store engine a configuration names, and where a plain `geard` keeps its SQLite file.

Apart from the Store interface (store/__init__.py), so that the engines, which build on that interface, are never
imported by it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import Store, StoreError


def default_sqlite_path(port: int | None = None) -> Path:
    """Where a `geard` on `port` keeps its queue: $XDG_STATE_HOME/geartrain/queue-PORT.sqlite3, else
    ~/.local/state/geartrain/queue-PORT.sqlite3 (queue.sqlite3 without a port)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "geartrain" / (f"queue-{port}.sqlite3" if port else "queue.sqlite3")


def open_store(config: Any) -> Store:
    """The store a ServerConfig asks for (queue_type "sqlite": sqlite_db, or the default path; "postgres":
    postgres_dsn, shared by the cluster's nodes)."""
    if config.queue_type == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(config.sqlite_db or default_sqlite_path(), getattr(config, "libsqlite3_table", None),
                           getattr(config, "queue_sync", "full"))
    if config.queue_type == "postgres":
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise StoreError("the postgres queue needs psycopg 3: pip install 'psycopg[binary]'") from exc
        from .postgres import PostgresStore

        if not config.postgres_dsn:
            raise StoreError("the postgres queue needs a database: --postgres-dsn (or --libpq-conninfo) DSN")
        if not 0 < config.lease_interval < config.takeover_after:
            raise StoreError(f"--takeover-after ({config.takeover_after:g}) must be longer than --lease-interval "
                             f"({config.lease_interval:g}, above 0), or live nodes would be taken over")
        if config.postgres_writers < 1:
            raise StoreError(f"--postgres-writers ({config.postgres_writers}) must be 1 or more")
        return PostgresStore(config.postgres_dsn, config.node_name(), lease_interval=config.lease_interval,
                             takeover_after=config.takeover_after, gearmand_table=config.postgres_table,
                             writers=config.postgres_writers)
    raise StoreError(f"no durable store for queue type {config.queue_type!r}")
