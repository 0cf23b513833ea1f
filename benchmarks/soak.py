"""A bounded soak run: clients, workers and faults against a geard subprocess, ending with a census of every job.

Several client threads submit foreground and background jobs (pipelined, each with a unique id) and now and then
drop their connection at random points; several worker subprocesses run the jobs and are SIGKILLed and restarted
at random. After --duration seconds the clients stop, the workers drain the queue, and the census says what became
of every acknowledged job:

- background: executed once, executed more than once (allowed only when a worker that ran it was killed),
  still queued, or LOST;
- foreground: result received (and equal to what was sent), abandoned by a client that disconnected on purpose,
  or LOST (acknowledged, the client stayed, no result came).

Workers log each job they run before they send WORK_COMPLETE, so a job is "executed" when its work was done,
whether or not the worker lived to report it. The exit status is 1 when any job was lost, corrupted or run twice
without a killed worker to excuse it.

    python benchmarks/soak.py --duration 120 --clients 4 --workers 4
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from geartrain.protocol import AdminResponse, ClientConnection, Packet
from geartrain.protocol import constants as C

HOST = "127.0.0.1"
FUNCTION = b"soak"


# --------------------------------------------------------------------------------------------- a tiny peer


class Peer:
    """A blocking raw-protocol connection with deadlines (the soak's clients, workers and admin)."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = ClientConnection()
        self.events: list = []
        self.timeout = timeout

    def send(self, ptype: int, *args: bytes) -> None:
        self.sock.sendall(self.conn.send_packet(ptype, *args))

    def next_event(self, deadline: float | None = None):
        deadline = deadline or time.monotonic() + self.timeout
        while not self.events:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer in time")
            self.sock.settimeout(remaining)
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("closed by the server")
            self.events.extend(self.conn.receive_data(data))
        return self.events.pop(0)

    def admin(self, command: str) -> AdminResponse:
        self.sock.sendall(self.conn.send_admin(command))
        event = self.next_event()
        assert isinstance(event, AdminResponse), event
        return event

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------------------------- worker process


def worker_main(port: int, wid: str, log_path: str) -> None:
    """Run jobs until the connection ends: log "<wid> <unique>" once the work is done, then WORK_COMPLETE."""
    rng = random.Random()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    peer = Peer(port, timeout=3600)
    peer.send(C.SET_CLIENT_ID, wid.encode())
    peer.send(C.CAN_DO, FUNCTION)
    try:
        while True:
            peer.send(C.GRAB_JOB_UNIQ)
            event = peer.next_event()
            if isinstance(event, Packet) and event.ptype == C.NO_JOB:
                peer.send(C.PRE_SLEEP)
                while not (isinstance(event, Packet) and event.ptype == C.NOOP):
                    event = peer.next_event()
                continue
            assert isinstance(event, Packet) and event.ptype == C.JOB_ASSIGN_UNIQ, event
            handle, _, unique, data = event.args
            if rng.random() < 0.2:
                peer.send(C.WORK_DATA, handle, b"partial")
            if rng.random() < 0.3:
                time.sleep(rng.random() * 0.02)  # a little work: kills land mid-job now and then
            os.write(fd, b"%s %s\n" % (wid.encode(), unique))
            if rng.random() < 0.1:
                time.sleep(rng.random() * 0.02)  # done but not yet reported: a kill here means a second run
            peer.send(C.WORK_COMPLETE, handle, data)
    except (ConnectionError, OSError):
        return


# --------------------------------------------------------------------------------------------- orchestration


class Census:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.payload: dict[bytes, bytes] = {}
        self.acked_bg: set[bytes] = set()
        self.acked_fg: set[bytes] = set()
        self.fg_done: set[bytes] = set()
        self.fg_wrong: set[bytes] = set()
        self.fg_failed: set[bytes] = set()
        self.fg_abandoned: set[bytes] = set()
        self.fg_lost: set[bytes] = set()
        self.submitted = 0
        self.refused = 0
        self.disconnects = 0
        self.client_errors: Counter = Counter()


def client_loop(port: int, cid: int, stop: threading.Event, census: Census, seed: int) -> None:
    rng = random.Random(seed)
    seq = 0
    while not stop.is_set():
        try:
            peer = Peer(port, timeout=60)
        except OSError as exc:
            census.client_errors[type(exc).__name__] += 1
            time.sleep(0.1)
            continue
        try:
            batch = []
            for _ in range(rng.randrange(1, 16)):
                seq += 1
                unique = b"c%d-%d" % (cid, seq)
                background = rng.random() < 0.5
                payload = unique + b":" + rng.randbytes(rng.randrange(0, 64)).hex().encode()
                ptype = rng.choice([C.SUBMIT_JOB_BG, C.SUBMIT_JOB_HIGH_BG, C.SUBMIT_JOB_LOW_BG] if background
                                   else [C.SUBMIT_JOB, C.SUBMIT_JOB_HIGH, C.SUBMIT_JOB_LOW])
                batch.append((unique, background, payload))
                with census.lock:
                    census.payload[unique] = payload
                    census.submitted += 1
                peer.send(ptype, FUNCTION, unique, payload)
            mode = rng.random()
            if mode < 0.05:  # gone before any acknowledgement: nothing is promised
                census.disconnects += 1
                continue
            handles: dict[bytes, bytes] = {}
            early: list = []  # WORK_* of a job acknowledged first may come before the next JOB_CREATED
            for unique, background, _ in batch:
                event = peer.next_event()
                while isinstance(event, Packet) and event.ptype not in (C.JOB_CREATED, C.ERROR):
                    early.append(event)
                    event = peer.next_event()
                if isinstance(event, Packet) and event.ptype == C.JOB_CREATED:
                    with census.lock:
                        (census.acked_bg if background else census.acked_fg).add(unique)
                    if not background:
                        handles[event.args[0]] = unique
                else:
                    with census.lock:
                        census.refused += 1
                        census.client_errors[f"ERROR {event.args[0].decode(errors='replace')}"] += 1
            if mode < 0.15 and handles:  # drops its connection with foreground jobs in flight
                census.disconnects += 1
                with census.lock:
                    census.fg_abandoned.update(handles.values())
                continue
            deadline = time.monotonic() + 60
            pending = dict(handles)
            while pending:
                try:
                    event = early.pop(0) if early else peer.next_event(deadline)
                except TimeoutError:
                    break
                if not isinstance(event, Packet) or event.args[0] not in pending:
                    continue
                if event.ptype == C.WORK_COMPLETE:
                    unique = pending.pop(event.args[0])
                    with census.lock:
                        census.fg_done.add(unique)
                        if event.args[1] != census.payload[unique]:
                            census.fg_wrong.add(unique)
                elif event.ptype in (C.WORK_FAIL, C.WORK_EXCEPTION):
                    with census.lock:
                        census.fg_failed.add(pending.pop(event.args[0]))
            with census.lock:
                census.fg_lost.update(pending.values())
        except (OSError, ConnectionError) as exc:
            census.client_errors[type(exc).__name__] += 1
        finally:
            peer.close()
        time.sleep(rng.random() * 0.02)


def read_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def wait_for_port(port: int, process: subprocess.Popen, deadline: float = 15.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"geard exited with code {process.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("geard did not listen in time")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load before the drain (120)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--kill-every", type=float, default=1.5, help="mean seconds between worker SIGKILLs (1.5)")
    p.add_argument("--drain", type=float, default=90.0, help="seconds allowed for the final drain (90)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--queue-type", default="memory", help="geard --queue-type (memory)")
    p.add_argument("--role", choices=["orchestrator", "worker"], default="orchestrator", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--wid", help=argparse.SUPPRESS)
    p.add_argument("--log", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "worker":
        worker_main(args.port, args.wid, args.log)
        return 0
    return orchestrate(args)


def orchestrate(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="geartrain-soak-"))
    port = free_port()
    server_log = open(work / "geard.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "geartrain.server.cli", "-d", "-L", HOST, "-p", str(port), "-q", args.queue_type,
         *(["--sqlite-db", str(work / "soak.db")] if args.queue_type == "sqlite" else [])],
        stdout=server_log, stderr=subprocess.STDOUT)
    worker_output = open(work / "workers.log", "ab")  # not /dev/null: a stray gearmand may unlink it
    workers: dict[str, subprocess.Popen] = {}
    killed: set[str] = set()
    started = 0
    census = Census()
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start_worker() -> None:
        nonlocal started
        started += 1
        wid = f"w{started}"
        workers[wid] = subprocess.Popen(
            [sys.executable, __file__, "--role", "worker", "--port", str(port), "--wid", wid,
             "--log", str(work / "executions.log")], stdout=worker_output, stderr=subprocess.STDOUT)

    print(f"soak: seed {seed}, {args.duration:.0f} s, {args.clients} clients, {args.workers} workers, "
          f"geard pid {server.pid} port {port}, files in {work}", flush=True)
    try:
        wait_for_port(port, server)
        baseline_rss = read_kb(server.pid, "VmRSS")
        for _ in range(args.workers):
            start_worker()
        for cid in range(args.clients):
            thread = threading.Thread(target=client_loop, args=(port, cid, stop, census, rng.randrange(2**32)),
                                      daemon=True)
            thread.start()
            threads.append(thread)
        end = time.monotonic() + args.duration
        next_kill = time.monotonic() + rng.expovariate(1 / args.kill_every)
        next_report = time.monotonic() + 10
        while time.monotonic() < end:
            if server.poll() is not None:
                raise RuntimeError(f"geard died with code {server.returncode}")
            now = time.monotonic()
            if now >= next_kill:
                wid = rng.choice(sorted(workers))
                workers[wid].send_signal(signal.SIGKILL)
                workers.pop(wid).wait(10)
                killed.add(wid)
                start_worker()
                next_kill = now + rng.expovariate(1 / args.kill_every)
            if now >= next_report:
                with census.lock:
                    print(f"  t={args.duration - (end - now):5.0f}s submitted {census.submitted} "
                          f"acked bg {len(census.acked_bg)} fg {len(census.acked_fg)}, workers killed "
                          f"{len(killed)}, geard RSS {read_kb(server.pid, 'VmRSS')} kB", flush=True)
                next_report = now + 10
            time.sleep(0.02)
        stop.set()
        for thread in threads:
            thread.join(90)
        # Drain: no more kills; the workers finish what is queued.
        admin = Peer(port)
        drain_end = time.monotonic() + args.drain
        while time.monotonic() < drain_end:
            lines = [line for line in admin.admin("status").lines if line.split(b"\t")[0] == FUNCTION]
            if not lines or lines[0].split(b"\t")[1] == b"0":
                break
            time.sleep(0.2)
        still_queued = set(admin.admin("show unique jobs").lines)
        admin.close()
        end_rss, peak_rss = read_kb(server.pid, "VmRSS"), read_kb(server.pid, "VmHWM")
        server_alive = server.poll() is None
    finally:
        stop.set()
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
        server_log.close()
        worker_output.close()

    runs: dict[bytes, list[str]] = {}
    log_path = work / "executions.log"
    if log_path.exists():
        for line in log_path.read_bytes().splitlines():
            parts = line.split(b" ")
            if len(parts) == 2:
                runs.setdefault(parts[1], []).append(parts[0].decode())

    def dup_excused(unique: bytes) -> bool:
        by = runs.get(unique, [])
        return any(wid in killed for wid in by[:-1])

    bg = census.acked_bg
    bg_once = {u for u in bg if len(runs.get(u, [])) == 1}
    bg_dups = {u for u in bg if len(runs.get(u, [])) > 1}
    bg_dups_excused = {u for u in bg_dups if dup_excused(u)}
    bg_queued = {u for u in bg if u not in runs and u in still_queued}
    bg_lost = bg - bg_once - bg_dups - bg_queued
    fg = census.acked_fg
    fg_dups = {u for u in fg if len(runs.get(u, [])) > 1}
    fg_dups_excused = {u for u in fg_dups if dup_excused(u)}
    unacked_runs = {u for u in runs if u not in bg and u not in fg}
    rows = [
        ("jobs submitted", census.submitted),
        ("refused with ERROR", census.refused),
        ("client disconnects on purpose", census.disconnects),
        ("client errors", ", ".join(f"{k} {v}" for k, v in sorted(census.client_errors.items())) or 0),
        ("workers started / SIGKILLed", f"{started} / {len(killed)}"),
        ("background acknowledged", len(bg)),
        ("  executed once", len(bg_once)),
        ("  executed more than once (worker killed)", len(bg_dups_excused)),
        ("  executed more than once (NO kill: bug)", len(bg_dups - bg_dups_excused)),
        ("  still queued", len(bg_queued)),
        ("  LOST", len(bg_lost)),
        ("foreground acknowledged", len(fg)),
        ("  result received", len(census.fg_done)),
        ("  result corrupted", len(census.fg_wrong)),
        ("  failed (WORK_FAIL)", len(census.fg_failed)),
        ("  abandoned by its client", len(census.fg_abandoned)),
        ("  LOST (client waited, no result)", len(census.fg_lost)),
        ("  executed more than once (worker killed / no kill)",
         f"{len(fg_dups_excused)} / {len(fg_dups - fg_dups_excused)}"),
        ("executed without an acknowledgement", len(unacked_runs)),
        ("geard RSS baseline / end / peak kB", f"{baseline_rss} / {end_rss} / {peak_rss}"),
        ("geard alive at the end", server_alive),
    ]
    width = max(len(label) for label, _ in rows)
    print("\nsoak census")
    print("-" * (width + 14))
    for label, value in rows:
        print(f"{label:<{width}}  {value:>10}")
    print("-" * (width + 14))
    bad = (bg_lost or census.fg_lost or census.fg_wrong or (bg_dups - bg_dups_excused)
           or (fg_dups - fg_dups_excused) or not server_alive)
    if bg_lost:
        print("lost background jobs (first 10):", sorted(bg_lost)[:10])
    if census.fg_lost:
        print("lost foreground jobs (first 10):", sorted(census.fg_lost)[:10])
    print("verdict:", "FAIL" if bad else "OK", f"(seed {seed}; server log {work / 'geard.log'})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
