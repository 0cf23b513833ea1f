"""Durable background submits per second on PostgreSQL, side by side in one run, and the take-over time.

Servers, each on an ephemeral loopback port: geartrain with its PostgreSQL store (--queue-type postgres),
geartrain with its SQLite store, and gearmand with its libpq queue (-q Postgres --libpq-conninfo DSN), the two
PostgreSQL ones on the same database server (a fresh database each). The load is durable.py's: connections keep a
window of SUBMIT_JOB_BG pipelined each (4 x 16 by default) for a fixed time; a submit counts once its JOB_CREATED
arrived, and afterwards the store must hold a row for each.

Take-over: node a of a two-node cluster gets --takeover-jobs background jobs, is SIGKILLed, and the time until
node b holds them all is measured (lease expiry, --takeover-after, detection at b's next lease round, claim).

The PostgreSQL server is a throwaway one (Debian's postgresql 15, as tests/pgserver.py starts it) unless --dsn
names one (each server then gets a fresh database of it).

    python benchmarks/postgres.py [--duration 5] [--connections 4] [--window 16] [--takeover-jobs 10000]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import durable  # noqa: E402
from servers import stop_server  # noqa: E402

from pgserver import missing, running  # noqa: E402

HOST = durable.HOST


def new_database(admin_dsn: str, name: str) -> str:
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return f"{admin_dsn} dbname={name}"


def count(dsn: str, table: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def geard(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "geartrain.server.cli", "-d", "-p", str(port), "--listen-address", HOST, *args]


def start(argv_of, stderr=subprocess.DEVNULL) -> tuple[subprocess.Popen, int]:
    for _ in range(5):
        port = durable.free_port()
        process = subprocess.Popen(argv_of(port), stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            durable.wait_for_port(port, process)
            return process, port
        except (RuntimeError, TimeoutError):
            process.kill()
            process.wait()
    raise RuntimeError(f"{argv_of(0)[:6]} did not start")


def run_server(name: str, admin_dsn: str, opts: argparse.Namespace, workdir: Path) -> durable.Result:
    """One server under the submit load: acknowledged submits, and the rows its store holds afterwards."""
    if name == "geartrain-postgres":
        dsn = new_database(admin_dsn, "bench_geartrain")
        argv_of = lambda p: geard(p, "-q", "postgres", "--postgres-dsn", dsn, "--cluster-node", "bench")  # noqa: E731
        rows = lambda: count(dsn, "geartrain_jobs")  # noqa: E731
    elif name == "gearmand-postgres":
        dsn = new_database(admin_dsn, "bench_gearmand")
        argv_of = lambda p: [durable.GEARMAND, "-p", str(p), "-L", HOST, "-t", "2", "-l", "none",  # noqa: E731
                             "-P", str(workdir / "gearmand.pid"), "-q", "Postgres", "--libpq-conninfo", dsn]
        rows = lambda: count(dsn, "queue")  # noqa: E731
    elif name == "geartrain-sqlite":
        db = workdir / "geartrain.sqlite3"
        argv_of = lambda p: geard(p, "-q", "sqlite", "--sqlite-db", str(db))  # noqa: E731
        rows = lambda: durable.count_rows(db, "geartrain_jobs")  # noqa: E731
    else:
        raise ValueError(name)
    process, port = start(argv_of)
    try:
        created, seconds = durable.run_clients(port, opts)
        queued = durable.admin_status(port)
    finally:
        stop_server(process, grace=60)
    return durable.Result(name, created, seconds, rows(), queued)


def takeover(admin_dsn: str, opts: argparse.Namespace) -> tuple[float, int]:
    """Seconds from SIGKILL of node a to node b holding all of a's jobs; the jobs b holds."""
    dsn = new_database(admin_dsn, "bench_takeover")
    timing = ("--lease-interval", str(opts.lease_interval), "--takeover-after", str(opts.takeover_after))
    a, port_a = start(lambda p: geard(p, "-q", "postgres", "--postgres-dsn", dsn, "--cluster-node", "a", *timing))
    b, port_b = start(lambda p: geard(p, "-q", "postgres", "--postgres-dsn", dsn, "--cluster-node", "b", *timing))
    try:
        with socket.create_connection((HOST, port_a), timeout=120) as sock:
            sock.sendall(durable.submit_packets(b"bench", b"t-", 0, opts.takeover_jobs, b"x" * 64))
            got = 0
            buffer = b""
            while got < opts.takeover_jobs:
                data = sock.recv(1 << 20)
                if not data:
                    raise RuntimeError("node a closed the connection")
                got, buffer = _count_packets(buffer + data, got)
        a.kill()
        a.wait()
        killed = time.monotonic()
        while durable.admin_status(port_b) < opts.takeover_jobs:
            if time.monotonic() - killed > opts.takeover_after + 300:
                raise RuntimeError("node b did not take the jobs over")
            time.sleep(0.02)
        return time.monotonic() - killed, durable.admin_status(port_b)
    finally:
        stop_server(a, grace=60)
        stop_server(b, grace=60)


def _count_packets(buffer: bytes, got: int) -> tuple[int, bytes]:
    pos = 0
    while len(buffer) - pos >= 12:
        size = int.from_bytes(buffer[pos + 8:pos + 12], "big")
        if len(buffer) - pos < 12 + size:
            break
        pos += 12 + size
        got += 1
    return got, buffer[pos:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds of submitting per server (5)")
    p.add_argument("--connections", type=int, default=4, help="client connections (4)")
    p.add_argument("--procs", type=int, default=1, help="client processes (1)")
    p.add_argument("--window", type=int, default=16, help="submits in flight per connection (16)")
    p.add_argument("--size", type=int, default=64, help="bytes of data per job (64)")
    p.add_argument("--servers", default="geartrain-postgres,geartrain-sqlite,gearmand-postgres",
                   help="comma-separated servers to run")
    p.add_argument("--takeover-jobs", type=int, default=10_000, help="jobs on the killed node (10000; 0: skip)")
    p.add_argument("--lease-interval", type=float, default=2.0, help="cluster lease interval (2, the default)")
    p.add_argument("--takeover-after", type=float, default=10.0, help="cluster take-over delay (10, the default)")
    p.add_argument("--dsn", help="an existing PostgreSQL server to use (host=... port=... user=...), no dbname")
    opts = p.parse_args(argv)
    opts.empty_uniques = False
    if opts.dsn:
        return run(opts, opts.dsn)
    why = missing()
    if why is not None:
        print(f"cannot run: {why}")
        return 2
    with running() as pg:
        return run(opts, pg.dsn().replace(" dbname=postgres", ""))


def run(opts: argparse.Namespace, admin_dsn: str) -> int:
    print(f"durable background submits: {opts.connections} connections x {opts.window} in flight, {opts.size}-byte "
          f"jobs, {opts.duration:g}s per server, {os.cpu_count()} CPUs, PostgreSQL "
          f"{'at ' + opts.dsn if opts.dsn else '15 started for this run (fsync on)'}")
    results = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-postgres-") as tmp:
        for name in [n for n in opts.servers.split(",") if n]:
            if name.startswith("gearmand") and not os.access(durable.GEARMAND, os.X_OK):
                print(f"{name}: skipped, {durable.GEARMAND} is not installed")
                continue
            result = run_server(name, f"{admin_dsn} dbname=postgres", opts, Path(tmp))
            ok = result.queued == result.created == result.stored
            failed |= not ok
            result.note = "ok" if ok else f"MISMATCH: status {result.queued}, rows {result.stored}"
            results.append(result)
    print()
    print(f"{'server':<20} {'acknowledged':>12} {'seconds':>8} {'submits/s':>10} {'stored rows':>12}  check")
    for r in results:
        print(f"{r.name:<20} {r.created:>12} {r.seconds:>8.2f} {r.rate:>10.0f} {r.stored:>12}  {r.note}")
    by_name = {r.name: r for r in results}
    print()
    for a, b in (("geartrain-postgres", "gearmand-postgres"), ("geartrain-postgres", "geartrain-sqlite")):
        if a in by_name and b in by_name and by_name[b].rate:
            print(f"{a} / {b}: {by_name[a].rate / by_name[b].rate:.1f}x")
    if opts.takeover_jobs:
        took, held = takeover(f"{admin_dsn} dbname=postgres", opts)
        print(f"take-over: {held} jobs of a SIGKILLed node held by the live node {took:.1f}s after the kill "
              f"(--lease-interval {opts.lease_interval:g}, --takeover-after {opts.takeover_after:g})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
