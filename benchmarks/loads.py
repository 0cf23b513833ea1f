"""The loads run.py can run: each takes a running server and the settings and returns table rows.

A load is registered as a LoadDef: its name, its function, and the queue type its server needs, so that
durable-queue loads get a server of their own. scale.py adds more loads to the same registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import loadgen
from loadgen import LoadOutcome, Plan
from servers import RunningServer, count_stored_jobs

MIB = 1024 * 1024


@dataclass
class Settings:
    """Sizes of a run; --quick and the command line adjust them."""

    duration: float = 15.0  # seconds cap of the timed loads
    jobs: int = 300_000  # job cap of the foreground and lock-step loads
    bg_jobs: int = 200_000  # background jobs submitted then drained
    large_jobs: int = 600  # 1 MiB jobs
    durable_jobs: int = 20_000  # background jobs into a SQLite queue
    functions: int = 10_000  # functions of the many-functions load (the speed issue's scale target)
    idle: int = 10_000  # idle connections held open during the idle-connections load
    client_procs: int = 1
    worker_procs: int = 1
    timeout: float = 180.0  # hard limit of one load
    repeat: int = 1  # runs per load; the median run is reported
    pin: bool = False  # the server on the last CPU, the load generator on the others (run.py --pin)


QUICK = {"duration": 4.0, "jobs": 150_000, "bg_jobs": 40_000, "large_jobs": 100, "durable_jobs": 5_000}


@dataclass
class Row:
    server: str
    load: str
    jobs: int = 0
    seconds: float = 0.0
    jobs_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    ratio: float | None = None  # jobs_per_s / gearmand's jobs_per_s for the same load
    cpu_us_per_job: float | None = None  # server CPU time (user + system, all threads) per job
    note: str = ""
    ok: bool = True
    errors: list[str] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)


# A load takes the running server and the settings and returns one or more rows (without the server name).
LoadFn = Callable[[RunningServer, Settings], list[Row]]


def make_plan(server: RunningServer, label: str, settings: Settings, **kw: object) -> Plan:
    tag = loadgen.new_tag(label)
    base: dict[str, object] = {
        "port": server.port, "func": f"bench_{tag}".encode(), "tag": tag, "duration": settings.duration,
        "client_procs": settings.client_procs, "worker_procs": settings.worker_procs,
        "timeout": settings.timeout,
    }
    base.update(kw)
    return Plan(**base)  # type: ignore[arg-type]


def make_row(load: str, outcome: LoadOutcome, note: str = "") -> Row:
    return Row(
        server="", load=load, jobs=outcome.jobs, seconds=outcome.seconds,
        jobs_per_s=outcome.jobs_per_s if not outcome.errors else None,
        p50_ms=outcome.p50_ms, p99_ms=outcome.p99_ms, note=note, ok=not outcome.errors,
        errors=outcome.errors, extra=dict(outcome.extra),
    )


def cpu_per_job(server: RunningServer, before: float | None, jobs: int) -> float | None:
    after = server.cpu_seconds()
    if before is None or after is None or jobs <= 0:
        return None
    return (after - before) / jobs * 1e6


def foreground_row(server: RunningServer, load: str, plan: Plan, note: str) -> Row:
    cpu0 = server.cpu_seconds()
    outcome = loadgen.run_foreground(plan)
    row = make_row(load, outcome, note)
    row.cpu_us_per_job = cpu_per_job(server, cpu0, outcome.jobs)
    return row


def load_foreground(server: RunningServer, s: Settings) -> list[Row]:
    plan = make_plan(server, "fg", s, mode="foreground", clients=4, workers=4, inflight=16, payload=64,
                     jobs=s.jobs)
    return [foreground_row(server, "foreground", plan, "4 clients x 16 in flight, 4 workers, 64 B")]


def load_lockstep(server: RunningServer, s: Settings) -> list[Row]:
    plan = make_plan(server, "ls", s, mode="foreground", clients=1, workers=1, inflight=1, payload=64,
                     jobs=s.jobs)
    return [foreground_row(server, "lockstep", plan, "1 client x 1 job, 1 worker, 64 B")]


def background_rows(server: RunningServer, plan: Plan, label: str, note: str, crash: bool = False
                    ) -> list[Row]:
    """Submit then drain (loadgen.run_background); a submit row and a drain row, with RSS per queued job.

    With crash (durable queues), the server is SIGKILLed once every JOB_CREATED arrived: the SQLite file must
    then hold every job, and after a restart on the same file the drain must run each of them exactly once.
    """
    rss_before = server.rss_kib()
    cpu0 = server.cpu_seconds()
    cpu1: list[float | None] = [None]
    db = server.options.db_path if crash else None

    def between() -> dict[str, float]:
        cpu1[0] = server.cpu_seconds()
        out: dict[str, float] = {}
        rss = server.rss_kib()
        if rss is not None and rss_before is not None:
            out["rss_kib_queued"] = float(rss)
            out["bytes_per_queued_job"] = (rss - rss_before) * 1024 / plan.jobs
        if db is not None:
            t0 = time.perf_counter()
            server.crash_and_restart()
            out["restart_s"] = time.perf_counter() - t0
            cpu1[0] = 0.0  # the new process starts from zero; its replay counts towards the drain
        return out

    outcome = loadgen.run_background(plan, between)
    cpu2 = server.cpu_seconds()
    if db is not None and not outcome.errors:
        left = count_stored_jobs(db)  # None while the server holds an exclusive lock (geartrain)
        if left not in (None, 0):
            outcome.errors.append(f"{left} jobs still in the SQLite file after the drain")
    submit = make_row(f"{label}-submit", outcome, note)
    drain = make_row(f"{label}-drain", outcome, f"then {plan.workers} workers drain the queue")
    if outcome.errors:
        drain.errors = []  # reported once, on the submit row
        drain.note = f"see {label}-submit"
    else:
        submit.jobs_per_s = float(outcome.extra["submit_per_s"])
        submit.seconds = float(outcome.extra["submit_s"])
        drain.jobs_per_s = float(outcome.extra["drain_per_s"])
        drain.seconds = float(outcome.extra["drain_s"])
        if cpu0 is not None and cpu1[0] is not None and cpu2 is not None:
            submit.cpu_us_per_job = (cpu1[0] - cpu0) / outcome.jobs * 1e6 if db is None else None
            drain.cpu_us_per_job = (cpu2 - cpu1[0]) / outcome.jobs * 1e6
        per_job = outcome.extra.get("bytes_per_queued_job")
        if per_job is not None:
            submit.note += f"; RSS +{per_job:.0f} B/job"
        if db is not None:
            drain.note = (f"SIGKILL, restart ({outcome.extra['restart_s']:.1f} s), then {plan.workers} workers "
                          f"drain every job")
    return [submit, drain]


def load_background(server: RunningServer, s: Settings) -> list[Row]:
    plan = make_plan(server, "bg", s, mode="background", clients=4, workers=4, inflight=0, payload=64,
                     jobs=s.bg_jobs, window=1000)
    return background_rows(server, plan, "bg", f"{plan.jobs} SUBMIT_JOB_BG over 4 conns, no worker")


def load_large(server: RunningServer, s: Settings) -> list[Row]:
    plan = make_plan(server, "lg", s, mode="foreground", clients=1, workers=1, inflight=1, payload=MIB,
                     jobs=s.large_jobs)
    row = foreground_row(server, "large-1MiB", plan, "")
    outcome = loadgen.LoadOutcome(row.jobs, row.seconds, row.jobs_per_s or 0.0, errors=row.errors)
    if not outcome.errors:
        # Bytes that pass through the server per second: the 1 MiB submitted and the result sent back.
        mb_s = outcome.jobs_per_s * 2 * MIB / 1e6
        row.extra["mb_per_s"] = mb_s
        row.note = f"1 client, 1 worker, 1 MiB each way: {mb_s:.0f} MB/s through the server"
    return [row]


@dataclass(frozen=True)
class LoadDef:
    name: str
    fn: LoadFn
    queue: str = "memory"  # the server's queue type this load needs
    doc: str = ""


CORE_LOADS: list[LoadDef] = [
    LoadDef("foreground", load_foreground, doc="4 clients x 16 in flight, 4 workers, 64 B payloads"),
    LoadDef("lockstep", load_lockstep, doc="1 client, 1 job at a time, 1 worker"),
    LoadDef("background", load_background, doc="pipelined SUBMIT_JOB_BG with no worker, then a drain"),
    LoadDef("large", load_large, doc="1 MiB payloads, 1 client, 1 worker"),
]
