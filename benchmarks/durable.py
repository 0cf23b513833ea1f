"""Background submit throughput into a durable queue, side by side, in one run.

Servers: geartrain with its SQLite store (--queue-type sqlite) in both --queue-sync modes (geartrain-sqlite is
"full", geartrain-sqlite-normal "normal"), geartrain in memory, gearmand with its libsqlite3 queue
(-q libsqlite3 --libsqlite3-db FILE) and gearmand in memory, each on an ephemeral loopback port with a fresh
work directory. Not run unless named: geartrain-sqlite-nowrite, a "normal" geard whose SQLite write is a no-op
(same writer thread, batches, held acknowledgements and spilling; nothing reaches the file): the ceiling of the
SQLite store as long as everything else stays as it is; geartrain-sqlite-normal-inmem, the "normal" geard with
--memory-jobs 0 (every queued job stays in memory too: nothing spills), beside the spilling one in the same rounds.
Load: a few client connections (in one or more processes,
uvloop when installed) keep a window of SUBMIT_JOB_BG pipelined each and count JOB_CREATED for a fixed time; then
they stop submitting and wait for every answer still due. A submit counts once its JOB_CREATED arrived.

The disk's limit for "full": every commit waits for one fsync of the write-ahead log, and at most every job in
flight (connections x window) shares one commit, so no server can acknowledge more than (jobs in flight) /
(fsync time) submits per second; the script measures the fsync time of a 4 KiB append in the servers' directory
(median of FSYNC_SAMPLES) and prints that limit and each durable rate against it.

Checks: the server's `status` holds exactly the jobs acknowledged, and after the server stops its SQLite file
holds a row for each of them (for the durable queues).

Where the CPU goes, per acknowledged job: the server's (all threads), of it its event loop thread's ("loop"; the
rest is mostly the store's writer thread) and the load generator's ("client"), user + system time from /proc and
getrusage. With --repeat N the servers run in N interleaved rounds (A, B, C, A, B, C, ...) and the table gives
the median of each column; each ratio is the median of the per-round ratios.

With --compiled every geartrain server runs on this checkout's compiled build (what `pip install .` installs;
servers.compiled_build() builds it once per state of the sources; --compiled BUILD: the one scripts/build-compiled
unpacked there), else on the pure Python of src/.

    python benchmarks/durable.py [--duration 5] [--connections 4] [--procs 1] [--window 256] [--size 64]
                                 [--repeat 3] [--extra-args "--memory-jobs 0"] [--compiled [BUILD]]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import shlex
import shutil
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from servers import admin_listing, compiled_build, stop_server

HOST = "127.0.0.1"
GEARMAND = shutil.which("gearmand") or "/usr/sbin/gearmand"
SUBMIT_JOB_BG = 18
JOB_CREATED = 8


#: geard with SQLiteStore.write replaced by a no-op (geartrain-sqlite-nowrite).
NO_WRITE = ("import sys; from geartrain.server.store.sqlite import SQLiteStore; "
            "SQLiteStore.write = lambda self, adds, removes: None; "
            "from geartrain.server.cli import main; sys.exit(main())")

#: fsyncs timed to measure the disk (the median is kept).
FSYNC_SAMPLES = 200


def fsync_seconds(directory: Path, samples: int = FSYNC_SAMPLES) -> float:
    """Median time of appending 4 KiB to a file in `directory` and fsyncing it (what a WAL commit waits for)."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"\x5a" * 4096
        times = []
        for _ in range(samples):
            began = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            times.append(time.perf_counter() - began)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return times[len(times) // 2]


def submit_packets(function: bytes, prefix: bytes | None, first: int, count: int, data: bytes) -> bytes:
    """`count` SUBMIT_JOB_BG with uniques prefix+number: gearmand's SQLite queue keys rows by unique (an empty
    one would overwrite a single row), so every job gets one of its own."""
    if prefix is None:  # --empty-uniques
        body = function + b"\x00\x00" + data
        return (b"\x00REQ" + struct.pack(">II", SUBMIT_JOB_BG, len(body)) + body) * count
    out = []
    head = function + b"\x00" + prefix
    for n in range(first, first + count):
        body = b"%s%d\x00%s" % (head, n, data)
        out.append(b"\x00REQ" + struct.pack(">II", SUBMIT_JOB_BG, len(body)) + body)
    return b"".join(out)


class Submitter(asyncio.Protocol):
    """Keeps `window` submits outstanding until told to stop, then waits for the answers still due."""

    def __init__(self, prefix: bytes | None, data: bytes, window: int, done: asyncio.Future) -> None:
        self.prefix = prefix
        self.data = data
        self.sent = 0
        self.window = window
        self.done = done
        self.buffer = b""
        self.outstanding = 0
        self.created = 0
        self.stopping = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self) -> None:
        self.outstanding = self.window
        assert self.transport is not None
        self.send(self.window)

    def send(self, count: int) -> None:
        assert self.transport is not None
        self.transport.write(submit_packets(b"bench", self.prefix, self.sent, count, self.data))
        self.sent += count

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data
        pos, n = 0, 0
        end = len(buf)
        while end - pos >= 12:
            ptype, size = struct.unpack_from(">II", buf, pos + 4)
            if end - pos < 12 + size:
                break
            if ptype != JOB_CREATED:
                raise RuntimeError(f"unexpected packet type {ptype}: {buf[pos + 12:pos + 12 + size][:200]!r}")
            pos += 12 + size
            n += 1
        self.buffer = buf[pos:]
        self.created += n
        self.outstanding -= n
        if not self.stopping:
            self.outstanding += n
            self.send(n)
        elif self.outstanding == 0 and not self.done.done():
            self.done.set_result(None)

    def stop(self) -> None:
        self.stopping = True
        if self.outstanding == 0 and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"the server closed the connection: {exc}"))


async def _client_main(port: int, connections: int, window: int, size: int, duration: float,
                       start_at: float, empty_uniques: bool) -> tuple[int, float, float]:
    loop = asyncio.get_running_loop()
    data = (bytes(range(1, 256)) * (size // 255 + 1))[:size]
    protocols = []
    for _ in range(connections):
        done = loop.create_future()
        prefix = None if empty_uniques else b"%d-%d-" % (os.getpid(), len(protocols))
        _, protocol = await loop.create_connection(
            lambda done=done, prefix=prefix: Submitter(prefix, data, window, done), HOST, port)
        protocols.append(protocol)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    started = time.perf_counter()
    for protocol in protocols:
        protocol.start()
    await asyncio.sleep(duration)
    for protocol in protocols:
        protocol.stop()
    await asyncio.wait_for(asyncio.gather(*(p.done for p in protocols)), timeout=600)
    finished = time.perf_counter()
    for protocol in protocols:
        protocol.transport.close()
    return sum(p.created for p in protocols), started, finished


def _client_process(args: tuple, results: mp.Queue) -> None:
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        created, started, finished = run(_client_main(*args))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        results.put(("ok", (created, started, finished, usage.ru_utime + usage.ru_stime)))
    except BaseException as exc:  # reported to the parent
        results.put(("error", repr(exc)))


@dataclass
class Result:
    name: str
    created: int
    seconds: float
    stored: int | None  # rows in the SQLite file after the server stopped, for the durable queues
    queued: int  # TOTAL of `status` at the end
    cpu_us: float | None = None  # the server's CPU time (user + system, all threads) per acknowledged job
    note: str = ""
    pg_us: float | None = None  # PostgreSQL's CPU time per acknowledged job (postgres.py)
    loop_us: float | None = None  # of cpu_us: the event loop (main) thread's
    client_us: float | None = None  # the load generator's CPU time per acknowledged job

    @property
    def rate(self) -> float:
        return self.created / self.seconds if self.seconds else 0.0


def cpu_seconds(pid: int, thread: int | None = None) -> float | None:
    """User plus system CPU time of a process (all its threads), or of one thread of it, so far, from /proc."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        fields = Path(path).read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def admin_status(port: int) -> int:
    """Sum of TOTAL over the functions of `status`."""
    data = admin_listing(port, b"status")
    return sum(int(line.split(b"\t")[1]) for line in data.splitlines() if b"\t" in line)


def count_rows(path: Path, table: str) -> int:
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def server_command(name: str, port: int, workdir: Path, extra: list[str] | None = None,
                   build: Path | None = None) -> tuple[list[str], Path | None, str | None]:
    """argv, the SQLite file and its table (None for memory); `extra` goes on geartrain's command lines, and
    geartrain runs from `build` (a compiled build, on PYTHONPATH) when given."""
    if name.startswith("geartrain"):
        # `env` execs the server: the PID measured is the server's.
        prefix = ["env", f"PYTHONPATH={build}"] if build is not None else []
        argv = [*prefix, sys.executable, "-m", "geartrain.server.cli", "-d", "-p", str(port), "--listen-address",
                HOST, *(extra or [])]
        if name in ("geartrain-sqlite", "geartrain-sqlite-normal", "geartrain-sqlite-nowrite",
                    "geartrain-sqlite-normal-inmem"):
            db = workdir / "geartrain.sqlite3"
            sync = "full" if name == "geartrain-sqlite" else "normal"
            argv += ["--queue-type", "sqlite", "--sqlite-db", str(db), "--queue-sync", sync]
            if name.endswith("-inmem"):
                argv += ["--memory-jobs", "0"]  # after `extra`: the last one given counts
            if name.endswith("-nowrite"):
                at = len(prefix) + 1
                argv[at:at + 2] = ["-c", NO_WRITE]
                return argv, None, None  # no rows to count
            return argv, db, "geartrain_jobs"
        return argv + ["--queue-type", "memory"], None, None
    # Never "-P /dev/null": gearmand unlinks its pid file when it exits.
    argv = [GEARMAND, "-p", str(port), "-L", HOST, "-t", "2", "-l", "none", "-P", str(workdir / "gearmand.pid")]
    if name == "gearmand-sqlite":
        db = workdir / "gearmand.sqlite3"
        return argv + ["-q", "libsqlite3", "--libsqlite3-db", str(db)], db, "gearman_queue"
    return argv, None, None


def run_clients(port: int, opts: argparse.Namespace) -> tuple[int, float]:
    """Run the client processes against a port: (JOB_CREATED counted, seconds from first submit to last answer)."""
    created, seconds, _ = run_clients_cpu(port, opts)
    return created, seconds


def run_clients_cpu(port: int, opts: argparse.Namespace) -> tuple[int, float, float]:
    """run_clients, and the CPU seconds the client processes spent."""
    results: mp.Queue = mp.Queue()
    per_proc = [opts.connections // opts.procs + (i < opts.connections % opts.procs) for i in range(opts.procs)]
    start_at = time.time() + 1.0
    procs = [mp.Process(target=_client_process,
                        args=((port, n, opts.window, opts.size, opts.duration, start_at, opts.empty_uniques), results))
             for n in per_proc if n]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=opts.duration + 700) for _ in procs]
    for proc in procs:
        proc.join(60)
    errors = [o[1] for o in outcomes if o[0] != "ok"]
    if errors:
        raise RuntimeError(f"port {port}: a client failed: {errors[0]}")
    created = sum(o[1][0] for o in outcomes)
    seconds = max(o[1][2] for o in outcomes) - min(o[1][1] for o in outcomes)
    return created, seconds, sum(o[1][3] for o in outcomes)


def run_one(name: str, opts: argparse.Namespace) -> Result:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        for _ in range(5):
            port = free_port()
            argv, db, table = server_command(name, port, workdir, shlex.split(opts.extra_args), opts.build)
            process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                wait_for_port(port, process)
                break
            except (RuntimeError, TimeoutError):
                process.kill()
                process.wait()
        else:
            raise RuntimeError(f"{name} did not start: {process.stderr.read().decode(errors='replace')[-500:]}")
        try:
            cpu0, loop0 = cpu_seconds(process.pid), cpu_seconds(process.pid, process.pid)
            created, seconds, client_cpu = run_clients_cpu(port, opts)
            cpu1, loop1 = cpu_seconds(process.pid), cpu_seconds(process.pid, process.pid)
            queued = admin_status(port)
        finally:
            stop_server(process, grace=60)
            if process.stderr is not None:
                process.stderr.close()
        stored = count_rows(db, table) if db is not None else None

        def per_job(before: float | None, after: float | None) -> float | None:
            return (after - before) / created * 1e6 if created and before is not None and after is not None else None

        return Result(name, created, seconds, stored, queued, per_job(cpu0, cpu1), loop_us=per_job(loop0, loop1),
                      client_us=per_job(0.0, client_cpu))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _cell(values: list[float | None], width: int) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.median(known):>{width}.1f}" if known else f"{'-':>{width}}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds of submitting per server (5)")
    p.add_argument("--connections", type=int, default=4, help="client connections (4)")
    p.add_argument("--procs", type=int, default=1, help="client processes the connections are spread over (1)")
    p.add_argument("--window", type=int, default=256, help="submits outstanding per connection (256)")
    p.add_argument("--size", type=int, default=64, help="bytes of data per job (64)")
    p.add_argument("--servers", default="geartrain-sqlite,geartrain-sqlite-normal,geartrain-memory,gearmand-sqlite,"
                   "gearmand-memory",
                   help="comma-separated list of the servers to run (also: geartrain-sqlite-nowrite, "
                        "geartrain-sqlite-normal-inmem)")
    p.add_argument("--empty-uniques", action="store_true",
                   help="submit without uniques (gearmand's SQLite queue then keeps a single row: a known bug)")
    p.add_argument("--repeat", type=int, default=1,
                   help="interleaved rounds over the servers; the table gives medians (1)")
    p.add_argument("--extra-args", default="", metavar="ARGS",
                   help='more options for every geartrain server, e.g. "--memory-jobs 0"')
    p.add_argument("--compiled", nargs="?", const="", metavar="BUILD",
                   help="run the geartrain servers on this checkout's compiled build (mypyc; built once per state "
                        "of the sources and cached), or on the one unpacked in BUILD (scripts/build-compiled BUILD)")
    p.add_argument("--against", type=int, metavar="PORT",
                   help="only run the clients against a server already listening on this loopback port")
    opts = p.parse_args(argv)
    if opts.against:
        created, seconds = run_clients(opts.against, opts)
        print(f"port {opts.against}: {created} acknowledged in {seconds:.2f}s: {created / seconds:.0f} submits/s")
        return 0
    names = [n for n in opts.servers.split(",") if n]
    opts.build = None if opts.compiled is None else Path(opts.compiled) if opts.compiled else compiled_build()
    print(f"background submit throughput: {opts.connections} connections in {opts.procs} process(es), window "
          f"{opts.window}, {opts.size}-byte jobs, {'empty' if opts.empty_uniques else 'distinct'} uniques, "
          f"{opts.duration:g}s per server, {os.cpu_count()} CPUs, geartrain "
          f"{'compiled (' + str(opts.build) + ')' if opts.build is not None else 'pure Python'}")
    with tempfile.TemporaryDirectory(prefix="bench-fsync-") as probe:
        fsync = fsync_seconds(Path(probe))
    in_flight = opts.connections * opts.window
    disk_limit = in_flight / fsync if fsync > 0 else float("inf")
    print(f"fsync of a 4 KiB append in {tempfile.gettempdir()}: {fsync * 1e3:.3f} ms (median of {FSYNC_SAMPLES}); "
          f"disk limit of a synced queue: {in_flight} jobs in flight / fsync = {disk_limit:,.0f} submits/s")
    rounds: list[dict[str, Result]] = []
    failed = False
    for _ in range(opts.repeat):
        results: dict[str, Result] = {}
        for name in names:
            if name.startswith("gearmand") and not os.access(GEARMAND, os.X_OK):
                if not rounds:
                    print(f"{name}: skipped, {GEARMAND} is not installed")
                continue
            result = run_one(name, opts)
            results[name] = result
            ok = result.queued == result.created and result.stored in (None, result.created)
            if opts.empty_uniques and name == "gearmand-sqlite":
                ok = True  # its rows are keyed by unique: the empty one is overwritten, as known
            failed |= not ok
            result.note = "ok" if ok else f"MISMATCH: status {result.queued}, rows {result.stored}"
        rounds.append(results)
    print()
    what = f"median of {len(rounds)} interleaved rounds" if len(rounds) > 1 else "one round"
    print(f"{what}; CPU in us per acknowledged job (user + system): the server's, of it its event loop thread's, "
          "and the load generator's")
    print(f"{'server':<29} {'acknowledged':>12} {'seconds':>8} {'submits/s':>10} {'srv CPU':>8} {'loop':>6} "
          f"{'client':>7} {'stored rows':>12}  check")
    for name in names:
        runs = [results[name] for results in rounds if name in results]
        if not runs:
            continue
        stored = "-" if runs[0].stored is None else "/".join(str(r.stored) for r in runs)
        notes = sorted({r.note for r in runs})
        median = statistics.median
        print(f"{name:<29} {median([r.created for r in runs]):>12.0f} {median([r.seconds for r in runs]):>8.2f} "
              f"{median([r.rate for r in runs]):>10.0f} {_cell([r.cpu_us for r in runs], 8)} "
              f"{_cell([r.loop_us for r in runs], 6)} {_cell([r.client_us for r in runs], 7)} {stored:>12}  "
              f"{', '.join(notes)}")
    print()
    for name in ("geartrain-sqlite", "gearmand-sqlite"):
        # The disk's limit, or the server's own in-memory rate where that is lower (a fast disk).
        to_disk = [r[name].rate / disk_limit for r in rounds if name in r]
        if not to_disk:
            continue
        line = f"{name} (fsync per commit) / disk limit: {statistics.median(to_disk):.3f}"
        if name.startswith("geartrain"):
            ceilings = [r[name].rate / min(disk_limit, r["geartrain-memory"].rate) for r in rounds
                        if name in r and r.get("geartrain-memory") and r["geartrain-memory"].rate]
            if ceilings and min(disk_limit, statistics.median([r["geartrain-memory"].rate for r in rounds
                                                     if "geartrain-memory" in r])) < disk_limit:
                line += f"; / min(disk limit, geartrain-memory): {statistics.median(ceilings):.2f}"
        print(line)
    for a, b in (("geartrain-sqlite-normal", "geartrain-memory"), ("geartrain-sqlite-normal-inmem", "geartrain-memory"),
                 ("geartrain-sqlite-nowrite", "geartrain-memory"),
                 ("geartrain-sqlite-normal", "geartrain-sqlite-nowrite"),
                 ("geartrain-sqlite", "geartrain-sqlite-normal"),
                 ("geartrain-sqlite", "gearmand-sqlite"), ("geartrain-sqlite", "geartrain-memory"),
                 ("geartrain-sqlite", "gearmand-memory"), ("geartrain-memory", "gearmand-memory")):
        ratios = [r[a].rate / r[b].rate for r in rounds if a in r and b in r and r[b].rate]
        if ratios:
            each = f" (rounds: {', '.join(f'{x:.2f}' for x in ratios)})" if len(ratios) > 1 else ""
            print(f"{a} / {b}: {statistics.median(ratios):.2f}x{each}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
