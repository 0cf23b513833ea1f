"""A backlog bigger than memory: server RSS with N queued background jobs, and the submit and drain rates, with
spilling (--memory-jobs M: past M per function and priority jobs wait only in the SQLite store) and without it
(--memory-jobs 0: every queued job in memory too), side by side with gearmand (in memory, and with its
libsqlite3 queue, which also keeps every job in memory).

Load: N SUBMIT_JOB_BG of SIZE bytes pipelined over a few connections (a window of outstanding submits each);
the submit rate counts JOB_CREATED. Then RSS (VmRSS, and the peak VmHWM) of the server process is read. Then
workers (GRAB_JOB, WORK_COMPLETE pipelined, PRE_SLEEP on NO_JOB) drain the queue; the drain rate counts
WORK_COMPLETE until all N ran. Checks: `status` shows N queued after the submits and 0 after the drain. With
--uniques each job has a distinct 36-byte UUID-shaped unique; --duplicates then submits every one of them again
before the drain (all coalesce: a spilled job's unique is confirmed by a store read) and reports that rate. Each
pass also reports the server's CPU (user + system) per job, steadier than rates on a shared machine.

    python benchmarks/backlog.py --jobs 200000                  # rates: spilling against all in memory
    python benchmarks/backlog.py --jobs 1000000 --servers spill # RSS of a big backlog
    python benchmarks/backlog.py --jobs 10000000 --servers spill --no-drain
    python benchmarks/backlog.py --jobs 200000 --uniques        # every job with a unique (gearmand's SQLite
                                                                #  queue needs them; geartrain indexes them)
    python benchmarks/backlog.py --jobs 200000 --servers spill,no-spill --repeat 3 --uniques --duplicates
    python benchmarks/backlog.py --jobs 10000000 --servers spill --no-drain --uniques
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from servers import admin_listing, free_port, stop_server, wait_for_port

HOST = "127.0.0.1"
GEARMAND = shutil.which("gearmand") or "/usr/sbin/gearmand"
SUBMIT_JOB_BG, JOB_CREATED, CAN_DO, GRAB_JOB, JOB_ASSIGN, NO_JOB, PRE_SLEEP, NOOP, WORK_COMPLETE = \
    18, 8, 1, 9, 11, 10, 4, 6, 13
FUNCTION = b"backlog"


def packet(ptype: int, *args: bytes) -> bytes:
    body = b"\x00".join(args)
    return b"\x00REQ" + struct.pack(">II", ptype, len(body)) + body


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                values[key] = int(value.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def cpu(pid: int) -> float:
    """CPU seconds (user + system) the process used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_command(kind: str, port: int, work: Path, memory_jobs: int) -> list[str]:
    if kind in ("spill", "no-spill"):
        return [sys.executable, "-m", "geartrain.server.cli", "-d", "-p", str(port), "--listen-address", HOST,
                "--queue-type", "sqlite", "--sqlite-db", str(work / "q.db"), "--max-queued-bytes", "0",
                "--memory-jobs", str(memory_jobs if kind == "spill" else 0), "--log-file", "none"]
    if kind == "memory":
        return [sys.executable, "-m", "geartrain.server.cli", "-d", "-p", str(port), "--listen-address", HOST,
                "--queue-type", "memory", "--max-queued-bytes", "0", "--log-file", "none"]
    base = [GEARMAND, "-p", str(port), "-L", HOST, "-t", "2", "-l", "none", "-P", str(work / "gearmand.pid")]
    if kind == "gearmand":
        return base
    if kind == "gearmand-sqlite":
        return [*base, "-q", "libsqlite3", "--libsqlite3-db", str(work / "g.db")]
    raise ValueError(kind)


def queued(port: int) -> int:
    for line in admin_listing(port, b"status").splitlines():
        fields = line.split(b"\t")
        if fields[0] == FUNCTION:
            return int(fields[1])
    return 0


def uuid_like(connection: int, number: int) -> bytes:
    """A distinct 36-byte unique shaped like a UUID string (what clients typically send)."""
    return b"%08x-0000-4000-8000-%012x" % (connection, number)


async def submit(port: int, jobs: int, connections: int, window: int, data: bytes, uniques: bool) -> float:
    """Submit `jobs` over `connections`, `window` outstanding each; seconds until the last JOB_CREATED."""
    share = [jobs // connections + (1 if i < jobs % connections else 0) for i in range(connections)]
    marker = struct.pack(">I", JOB_CREATED)

    async def one(index: int, count: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        sent = answered = 0
        buffer = b""

        def more(n: int) -> None:
            nonlocal sent
            if uniques:
                writer.write(b"".join(packet(SUBMIT_JOB_BG, FUNCTION, uuid_like(index, sent + i), data)
                                      for i in range(n)))
            else:
                writer.write(packet(SUBMIT_JOB_BG, FUNCTION, b"", data) * n)
            sent += n

        more(min(window, count))
        while answered < count:
            chunk = await reader.read(1 << 16)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buffer += chunk
            got = 0
            while len(buffer) >= 12:
                size = struct.unpack(">I", buffer[8:12])[0]
                if len(buffer) < 12 + size:
                    break
                if buffer[4:8] != marker:
                    raise RuntimeError(f"unexpected answer {buffer[:12 + size]!r}")
                buffer = buffer[12 + size:]
                got += 1
            answered += got
            if got and sent < count:
                more(min(got, count - sent))
        writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(one(i, n) for i, n in enumerate(share) if n))
    return time.perf_counter() - began


async def drain(port: int, jobs: int, workers: int) -> float:
    """Workers run every job (GRAB_JOB, WORK_COMPLETE); seconds until `jobs` completed."""
    done = 0
    finished = asyncio.get_running_loop().create_future()

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(packet(CAN_DO, FUNCTION) + packet(GRAB_JOB))
        buffer = b""
        while not finished.done():
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 16), 1.0)
            except asyncio.TimeoutError:
                continue
            if not chunk:
                break
            buffer += chunk
            out = []
            while len(buffer) >= 12:
                ptype, size = struct.unpack(">II", buffer[4:12])
                if len(buffer) < 12 + size:
                    break
                body, buffer = buffer[12:12 + size], buffer[12 + size:]
                if ptype == JOB_ASSIGN:
                    out.append(packet(WORK_COMPLETE, body.split(b"\x00", 1)[0], b""))
                    out.append(packet(GRAB_JOB))
                    done += 1
                    if done >= jobs and not finished.done():
                        finished.set_result(None)
                elif ptype == NO_JOB:
                    out.append(packet(PRE_SLEEP))
                elif ptype == NOOP:
                    out.append(packet(GRAB_JOB))
            if out:
                writer.write(b"".join(out))
        writer.close()

    began = time.perf_counter()
    tasks = [asyncio.ensure_future(one()) for _ in range(workers)]
    await finished
    elapsed = time.perf_counter() - began
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return elapsed


def run(kind: str, args: argparse.Namespace) -> dict:
    # "spill@SRC": the same server run from another source tree (an earlier commit), in the same interleaving.
    base, _, source = kind.partition("@")
    work = Path(tempfile.mkdtemp(prefix=f"backlog-{base}-"))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": source} if source else None
    process = subprocess.Popen(server_command(base, port, work, args.memory_jobs), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for_port(port, process, time.monotonic() + 60)
        before = rss(process.pid)[0]
        cpu0 = cpu(process.pid)
        uniques = args.uniques or base == "gearmand-sqlite"  # its table is keyed by unique
        data = b"x" * args.size
        submit_s = asyncio.run(submit(port, args.jobs, args.connections, args.window, data, uniques))
        cpu1 = cpu(process.pid)
        # The same uniques again: every submit coalesces (a spilled job's unique is confirmed by a store read).
        again_s = asyncio.run(submit(port, args.jobs, args.connections, args.window, data, uniques)) \
            if args.duplicates else float("nan")
        cpu2 = cpu(process.pid)
        held = queued(port)
        resident, peak = rss(process.pid)
        if args.no_drain:
            drain_s, left, drain_cpu = float("nan"), 0, float("nan")
        else:
            cpu3 = cpu(process.pid)
            drain_s = asyncio.run(drain(port, args.jobs, args.workers))
            left = queued(port)
            deadline = time.monotonic() + 30
            while left and time.monotonic() < deadline:  # the last WORK_COMPLETEs may still be on their way
                time.sleep(0.1)
                left = queued(port)
            drain_cpu = cpu(process.pid) - cpu3
        return {
            "server": kind, "jobs": args.jobs, "uniques": uniques, "submit_per_s": args.jobs / submit_s,
            "duplicates_per_s": args.jobs / again_s,
            # Server CPU (user + system) per job: steadier than rates on a shared machine.
            "submit_cpu_us": (cpu1 - cpu0) / args.jobs * 1e6, "drain_cpu_us": drain_cpu / args.jobs * 1e6,
            "again_cpu_us": (cpu2 - cpu1) / args.jobs * 1e6 if args.duplicates else float("nan"),
            "drain_per_s": args.jobs / drain_s, "rss_mb": resident / 1e6, "peak_mb": peak / 1e6,
            "bytes_per_job": (resident - before) / args.jobs, "ok": held == args.jobs and left == 0,
            "status_after_submit": held, "status_after_drain": left,
        }
    finally:
        stop_server(process, grace=120)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--memory-jobs", type=int, default=100_000, help="geard --memory-jobs of the spill server")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--no-drain", action="store_true", help="measure submits and RSS only (a big backlog "
                        "takes long to drain)")
    parser.add_argument("--duplicates", action="store_true", help="with --uniques: submit every unique a second "
                        "time after the first pass (all coalesce) and report that rate too")
    parser.add_argument("--uniques", action="store_true", help="a unique per job, a distinct 36-byte "
                        "UUID-shaped string (default: empty uniques)")
    parser.add_argument("--servers", default="spill,no-spill,gearmand",
                        help="spill, no-spill (both geartrain with SQLite), memory (geartrain), gearmand, "
                        "gearmand-sqlite (an fsync per job: slow); KIND@SRC runs geard from the source tree SRC "
                        "(PYTHONPATH), e.g. spill@/tmp/main/src against spill")
    parser.add_argument("--repeat", type=int, default=1, help="rounds, interleaved across the servers; the "
                        "median round per server is reported")
    args = parser.parse_args()
    kinds = []
    for kind in args.servers.split(","):
        if kind.startswith("gearmand") and not os.path.exists(GEARMAND):
            print(f"{kind}: skipped, gearmand is not installed")
        else:
            kinds.append(kind)
    rounds: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for number in range(args.repeat):
        for kind in kinds:
            result = run(kind, args)
            rounds[kind].append(result)
            print(f"round {number + 1} {kind:16} jobs {result['jobs']:>9}  submit {result['submit_per_s']:>9.0f}/s  "
                  f"drain {result['drain_per_s']:>9.0f}/s  again {result['duplicates_per_s']:>9.0f}/s  "
                  f"CPU/job submit {result['submit_cpu_us']:.1f} drain {result['drain_cpu_us']:.1f} "
                  f"again {result['again_cpu_us']:.1f} us  "
                  f"RSS {result['rss_mb']:>8.1f} MB (peak {result['peak_mb']:.1f})  "
                  f"{result['bytes_per_job']:>6.0f} B/job  "
                  f"{'ok' if result['ok'] else 'CHECK FAILED'}", flush=True)
    results = []
    for kind in kinds:
        median = {key: statistics.median(r[key] for r in rounds[kind])
                  for key in ("submit_per_s", "drain_per_s", "duplicates_per_s", "rss_mb", "peak_mb",
                              "bytes_per_job", "submit_cpu_us", "drain_cpu_us", "again_cpu_us")}
        results.append({**rounds[kind][0], **median, "ok": all(r["ok"] for r in rounds[kind])})
        if args.repeat > 1:
            print(f"median {kind:16} submit {median['submit_per_s']:>9.0f}/s  drain {median['drain_per_s']:>9.0f}/s"
                  f"  again {median['duplicates_per_s']:>9.0f}/s  CPU/job submit {median['submit_cpu_us']:.1f} "
                  f"drain {median['drain_cpu_us']:.1f} again {median['again_cpu_us']:.1f} us"
                  f"  RSS {median['rss_mb']:>8.1f} MB")
    by = {r["server"]: r for r in results}
    if "spill" in by and "no-spill" in by:
        s, n = by["spill"], by["no-spill"]
        print(f"spill / no-spill: submit {s['submit_per_s'] / n['submit_per_s']:.2f}x, "
              f"drain {s['drain_per_s'] / n['drain_per_s']:.2f}x, RSS {s['rss_mb'] / n['rss_mb']:.2f}x; CPU per job: "
              f"submit {s['submit_cpu_us'] / n['submit_cpu_us']:.2f}x, "
              f"drain {s['drain_cpu_us'] / n['drain_cpu_us']:.2f}x")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
