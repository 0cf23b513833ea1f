"""Durable background submits per second on PostgreSQL, side by side in one run, and the take-over time.

Servers, each on an ephemeral loopback port: geartrain with its PostgreSQL store (--queue-type postgres, named
geartrain-postgres/wN, once per --writers value N of --postgres-writers), geartrain with its SQLite store, and
gearmand with its libpq queue (-q Postgres --libpq-conninfo DSN), the PostgreSQL ones on the same database server
(a fresh database each run). The load is durable.py's: connections keep a window of SUBMIT_JOB_BG pipelined each
(4 x 16 by default) for a fixed time; a submit counts once its JOB_CREATED arrived, and afterwards the store must
hold a row for each. --rounds runs the servers interleaved (A, B, C, A, B, C, ...) and reports the median round of
each, with the CPU time per acknowledged job of the server, of PostgreSQL (all its processes, when this run
started it) and of the load generator: on a shared machine those say more than the rates.

Take-over: node a of a two-node cluster gets --takeover-jobs background jobs, is SIGKILLed, and the time until
node b holds them all is measured (lease expiry, --takeover-after, detection at b's next lease round, claim).

The PostgreSQL server is a throwaway one (Debian's postgresql 15, as tests/pgserver.py starts it) unless --dsn
names one (each server then gets a fresh database of it).

    python benchmarks/postgres.py [--duration 5] [--rounds 3] [--writers 2] [--connections 4] [--window 16]
                                  [--takeover-jobs 10000]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
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


def postgres_cpu(postmaster: int | None) -> dict[int, float]:
    """CPU seconds so far of the PostgreSQL server's processes (the postmaster and its children), by pid."""
    if postmaster is None:
        return {}
    cpu = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if int(entry.name) == postmaster or parent == postmaster:
                seconds = durable.cpu_seconds(int(entry.name))
                if seconds is not None:
                    cpu[int(entry.name)] = seconds
    return cpu


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_server(name: str, admin_dsn: str, opts: argparse.Namespace, workdir: Path,
               postmaster: int | None) -> durable.Result:
    """One server under the submit load: acknowledged submits, the rows its store holds afterwards, and the CPU
    time per acknowledged job of the server, of PostgreSQL and of the load generator (Result.cpu_us, .pg_us,
    .client_us)."""
    if name.startswith("geartrain-postgres"):
        dsn = new_database(admin_dsn, "bench_geartrain")
        writers = name.partition("/w")[2]
        argv_of = lambda p: geard(p, "-q", "postgres", "--postgres-dsn", dsn, "--cluster-node", "bench",  # noqa: E731
                                  "--postgres-writers", writers)
        rows = lambda: count(dsn, "geartrain_jobs")  # noqa: E731
    elif name == "gearmand-postgres":
        dsn = new_database(admin_dsn, "bench_gearmand")
        argv_of = lambda p: [durable.GEARMAND, "-p", str(p), "-L", HOST, "-t", "2", "-l", "none",  # noqa: E731
                             "-P", str(workdir / "gearmand.pid"), "-q", "Postgres", "--libpq-conninfo", dsn]
        rows = lambda: count(dsn, "queue")  # noqa: E731
    elif name == "geartrain-sqlite":
        db = workdir / "geartrain.sqlite3"
        db.unlink(missing_ok=True)
        argv_of = lambda p: geard(p, "-q", "sqlite", "--sqlite-db", str(db))  # noqa: E731
        rows = lambda: durable.count_rows(db, "geartrain_jobs")  # noqa: E731
    else:
        raise ValueError(name)
    process, port = start(argv_of)
    try:
        server0, pg0, clients0 = durable.cpu_seconds(process.pid), postgres_cpu(postmaster), children_cpu()
        created, seconds = durable.run_clients(port, opts)
        server1, pg1, clients1 = durable.cpu_seconds(process.pid), postgres_cpu(postmaster), children_cpu()
        queued = durable.admin_status(port)
    finally:
        stop_server(process, grace=60)
    result = durable.Result(name, created, seconds, rows(), queued)
    per_job = 1e6 / created if created else 0.0
    if server0 is not None and server1 is not None:
        result.cpu_us = (server1 - server0) * per_job
    result.pg_us = sum(cpu - pg0.get(pid, 0.0) for pid, cpu in pg1.items()) * per_job if postmaster else None
    result.client_us = (clients1 - clients0) * per_job
    return result


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
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median round of each is kept (3)")
    p.add_argument("--writers", default="2",
                   help="comma-separated --postgres-writers values for geartrain-postgres (2)")
    p.add_argument("--takeover-jobs", type=int, default=10_000, help="jobs on the killed node (10000; 0: skip)")
    p.add_argument("--lease-interval", type=float, default=2.0, help="cluster lease interval (2, the default)")
    p.add_argument("--takeover-after", type=float, default=10.0, help="cluster take-over delay (10, the default)")
    p.add_argument("--dsn", help="an existing PostgreSQL server to use (host=... port=... user=...), no dbname")
    opts = p.parse_args(argv)
    opts.empty_uniques = False
    if opts.dsn:
        return run(opts, opts.dsn, None)
    why = missing()
    if why is not None:
        print(f"cannot run: {why}")
        return 2
    with running() as pg:
        postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
        return run(opts, pg.dsn().replace(" dbname=postgres", ""), postmaster)


def server_names(opts: argparse.Namespace) -> list[str]:
    names = []
    for name in [n for n in opts.servers.split(",") if n]:
        if name.startswith("gearmand") and not os.access(durable.GEARMAND, os.X_OK):
            print(f"{name}: skipped, {durable.GEARMAND} is not installed")
        elif name == "geartrain-postgres":
            names += [f"{name}/w{w}" for w in opts.writers.split(",")]
        else:
            names.append(name)
    return names


def run(opts: argparse.Namespace, admin_dsn: str, postmaster: int | None) -> int:
    print(f"durable background submits: {opts.connections} connections x {opts.window} in flight, {opts.size}-byte "
          f"jobs, {opts.duration:g}s per server, {opts.rounds} interleaved round(s), {os.cpu_count()} CPUs, "
          f"PostgreSQL {'at ' + opts.dsn if opts.dsn else '15 started for this run (fsync on)'}")
    names = server_names(opts)
    rounds: dict[str, list[durable.Result]] = {name: [] for name in names}
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-postgres-") as tmp:
        for number in range(opts.rounds):
            for name in names:
                result = run_server(name, f"{admin_dsn} dbname=postgres", opts, Path(tmp), postmaster)
                ok = result.queued == result.created == result.stored
                failed |= not ok
                result.note = "ok" if ok else f"MISMATCH: status {result.queued}, rows {result.stored}"
                rounds[name].append(result)
                print(f"round {number + 1}: {name:<22} {result.rate:>8.0f}/s  {result.note}", flush=True)
    results = [sorted(rounds[name], key=lambda r: r.rate)[len(rounds[name]) // 2] for name in names]

    def us(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    print()
    print(f"{'server (median round)':<24} {'acknowledged':>12} {'submits/s':>10} {'rounds (submits/s)':>24} "
          f"{'CPU us/job: server':>18} {'postgres':>8} {'clients':>8}  check")
    for r in results:
        each = "/".join(f"{x.rate / 1000:.1f}k" for x in rounds[r.name])
        print(f"{r.name:<24} {r.created:>12} {r.rate:>10.0f} {each:>24} {us(r.cpu_us):>18} {us(r.pg_us):>8} "
              f"{us(r.client_us):>8}  {r.note}")
    print()
    medians = {name: statistics.median(x.rate for x in rounds[name]) for name in names}
    for a in [n for n in names if n.startswith("geartrain-postgres")]:
        for b in ("gearmand-postgres", "geartrain-sqlite"):
            if b in medians and medians[b]:
                print(f"{a} / {b}: {medians[a] / medians[b]:.1f}x (median rates)")
    if opts.takeover_jobs:
        took, held = takeover(f"{admin_dsn} dbname=postgres", opts)
        print(f"take-over: {held} jobs of a SIGKILLed node held by the live node {took:.1f}s after the kill "
              f"(--lease-interval {opts.lease_interval:g}, --takeover-after {opts.takeover_after:g})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
