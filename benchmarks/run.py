"""Run the same Gearman loads against geartrain, gearmand and gear 0.16.0's geard; print one table.

    python benchmarks/run.py                # full run (a few minutes)
    python benchmarks/run.py --quick        # short run (about two minutes)
    python benchmarks/run.py --servers gearmand,geard --loads foreground,lockstep --json out.json
    python benchmarks/run.py --metrics --quick --loads foreground,background   # CPU per job, metrics on/off

Each server is started on an ephemeral loopback port for its loads and stopped afterwards. A load whose jobs
did not all come back intact is reported as FAILED and the command exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import servers  # noqa: E402
from faces import format_faces, run_faces  # noqa: E402
from loads import CORE_LOADS, QUICK, LoadDef, Row, Settings  # noqa: E402
from scale import SCALE_LOADS  # noqa: E402
from servers import ServerOptions, ServerUnavailable  # noqa: E402
from startup import format_startup, run_startup  # noqa: E402

LOADS: dict[str, LoadDef] = {d.name: d for d in [*CORE_LOADS, *SCALE_LOADS]}
DEFAULT_LOADS = [d.name for d in CORE_LOADS + SCALE_LOADS]


# --- the table ------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.3f}x" if ratio < 0.1 else f"{ratio:.2f}x"


def add_ratios(rows: list[Row]) -> None:
    """jobs/s and server CPU per job of each row over gearmand's for the same load (CPU: extra["cpu_ratio"])."""
    base = {r.load: r for r in rows if r.server == "gearmand" and r.ok}
    for r in rows:
        ref = base.get(r.load)
        if not r.ok or ref is None:
            continue
        if r.jobs_per_s and ref.jobs_per_s:
            r.ratio = r.jobs_per_s / ref.jobs_per_s
        if r.cpu_us_per_job and ref.cpu_us_per_job:
            r.extra["cpu_ratio"] = r.cpu_us_per_job / ref.cpu_us_per_job


def format_table(rows: list[Row]) -> str:
    header = ["server", "load", "jobs/s", "p50 ms", "p99 ms", "vs gearmand", "srv CPU us/job", "CPU vs gearmand",
              "notes"]
    body = []
    for r in rows:
        if not r.ok:
            status = "FAILED" if r.errors else "skipped"
            first = r.errors[0].splitlines()[0] if r.errors else r.note
            body.append([r.server, r.load, status, "-", "-", "-", "-", "-", first[:90]])
            continue
        body.append([
            r.server, r.load, _fmt(r.jobs_per_s, 0), _fmt(r.p50_ms, 3), _fmt(r.p99_ms, 3),
            _fmt_ratio(r.ratio), _fmt(r.cpu_us_per_job, 1), _fmt_ratio(r.extra.get("cpu_ratio")),  # type: ignore[arg-type]
            r.note,
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    right = {2, 3, 4, 5, 6, 7}

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join((c.rjust(w) if i in right else c.ljust(w)) for i, (c, w) in pairs).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    return "\n".join(out)


#: Issue 19's CPU loads: the rows whose server CPU per job is summed for each (background is submit + drain).
CPU_TARGET_LOADS = {"foreground": ("foreground",), "background": ("bg-submit", "bg-drain"), "large": ("large-1MiB",)}


def format_targets(rows: list[Row]) -> str:
    """Per server, against gearmand in the same run: server CPU per job of the CPU loads (target <= 0.8x),
    the lowest jobs/s ratio of any load (target >= 1.0x) and the lock-step p99 (target <= 1.0x)."""
    def of(server: str) -> dict[str, Row]:
        return {r.load: r for r in rows if r.server == server and r.ok}

    ref = of("gearmand")
    if not ref:
        return ""
    lines = ["against gearmand (issue 19: CPU per job <= 0.8x, jobs/s >= 1.0x in every load, lock-step p99 "
             "<= 1.0x):"]
    for server in dict.fromkeys(r.server for r in rows if r.server != "gearmand"):
        ours = of(server)
        cells = []
        for name, loads in CPU_TARGET_LOADS.items():
            a = [ours[load].cpu_us_per_job for load in loads if load in ours]
            b = [ref[load].cpu_us_per_job for load in loads if load in ref]
            if len(a) == len(b) == len(loads) and all(a) and all(b):
                cells.append(f"CPU {name} {sum(a):.1f}/{sum(b):.1f} us = {sum(a) / sum(b):.2f}x")  # type: ignore
        ratios = [(r.ratio, load) for load, r in ours.items() if r.ratio]
        if ratios:
            low, load = min(ratios)
            cells.append(f"lowest jobs/s {low:.2f}x ({load})")
        if "lockstep" in ours and "lockstep" in ref and ours["lockstep"].p99_ms and ref["lockstep"].p99_ms:
            cells.append(f"lock-step p99 {ours['lockstep'].p99_ms / ref['lockstep'].p99_ms:.2f}x")
        if cells:
            lines.append(f"  {server}: " + "; ".join(cells))
    return "\n".join(lines) if len(lines) > 1 else ""


def _version(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (proc.stdout or proc.stderr).decode(errors="replace").strip().splitlines()[0:1][0] \
        if (proc.stdout or proc.stderr) else "?"


def machine_info() -> dict[str, str]:
    commit = _version(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"])
    if not all(c in "0123456789abcdef" for c in commit):
        commit = "?"
    return {
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "loop": loadgen.LOOP_NAME,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
        "gearmand": _version([servers.GEARMAND, "--version"]).split(" - ")[0],
        "gear": servers.GEAR_VERSION,
        "geartrain_commit": commit,
        "kernel": platform.release(),
        "loadavg": _loadavg(),
    }


def _loadavg() -> str:
    """The 1-minute load average before the run: other work on the machine makes the numbers noisy."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run: ~3 s per timed load, fewer jobs")
    p.add_argument("--servers", default="geartrain,gearmand,geard",
                   help="comma-separated, from: " + ",".join(servers.SERVERS))
    p.add_argument("--loads", default=",".join(DEFAULT_LOADS),
                   help="comma-separated, from: " + ",".join(LOADS))
    p.add_argument("--duration", type=float, help="seconds cap of each timed load")
    p.add_argument("--jobs", type=int, help="job cap of the foreground and lock-step loads")
    p.add_argument("--bg-jobs", type=int, help="jobs of the background load")
    p.add_argument("--large-jobs", type=int, help="jobs of the 1 MiB load")
    p.add_argument("--durable-jobs", type=int, help="jobs of the durable (SQLite) background load")
    p.add_argument("--functions", type=int, help="functions of the many-functions load (10000)")
    p.add_argument("--idle", type=int, help="idle connections held open during the idle load (10000)")
    p.add_argument("--repeat", type=int, default=1, help="run each load N times, report the median run")
    p.add_argument("--client-procs", type=int, default=1, help="processes that run the clients (default 1)")
    p.add_argument("--worker-procs", type=int, default=1, help="processes that run the workers (default 1)")
    p.add_argument("--no-faces", action="store_true",
                   help="skip the client-face table (gear / gearman: this checkout against the originals)")
    p.add_argument("--pin", action="store_true",
                   help="give each server the last CPU and the load generator the others (needs 2+ CPUs): the "
                   "server's CPU per job then leaves out the cache it loses to the load generator on a shared core")
    p.add_argument("--json", metavar="FILE", help="also write the rows and the machine line as JSON")
    p.add_argument("--metrics", action="store_true",
                   help="measure what metrics cost: geartrain with counters and /metrics on, then with "
                   "--no-stats, and print the server CPU per job of both (skips the faces and start-up tables)")
    args = p.parse_args(argv)
    if args.metrics:
        args.servers = "geartrain-metrics,geartrain-nometrics"
        args.no_faces = True
    for name in args.servers.split(","):
        if name not in servers.SERVERS:
            p.error(f"unknown server {name!r}; choose from {', '.join(servers.SERVERS)}")
    for name in args.loads.split(","):
        if name not in LOADS:
            p.error(f"unknown load {name!r}; choose from {', '.join(LOADS)}")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings()
    if args.quick:
        for key, value in QUICK.items():
            setattr(s, key, value)
    for key in ("duration", "jobs", "bg_jobs", "large_jobs", "durable_jobs", "functions", "idle"):
        value = getattr(args, key)
        if value is not None:
            setattr(s, key, value)
    s.jobs = max(s.jobs, 4)
    s.bg_jobs = max(s.bg_jobs, 4)
    s.large_jobs = max(s.large_jobs, 1)
    s.repeat = max(1, args.repeat)
    s.client_procs = max(1, args.client_procs)
    s.worker_procs = max(1, args.worker_procs)
    s.timeout = max(60.0, s.duration * 4 + 60)
    s.pin = args.pin
    return s


def _run_once(d: LoadDef, server: servers.RunningServer, settings: Settings) -> list[Row]:
    try:
        produced = d.fn(server, settings)
    except Exception as exc:  # a broken load must not hide the others
        produced = [Row("", d.name, ok=False, errors=[f"{type(exc).__name__}: {exc}"])]
    if server.proc.poll() is not None:
        for r in produced:
            r.ok = False
            r.errors.append(f"server exited with {server.proc.returncode}: {server.log_tail(300)}")
    return produced


#: The CPUs this process may use at start (--pin narrows its own set to all but the last).
_CPUS = sorted(os.sched_getaffinity(0))


def _pin(running: Iterable[servers.RunningServer]) -> None:
    """run.py --pin: every server on the last CPU this process may use, this process (and so the load generator
    it starts) on the others."""
    cpus = _CPUS
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    for server in running:
        server.pin({cpus[-1]})
    os.sched_setaffinity(0, set(cpus[:-1]))


def _median_run(runs: list[list[Row]]) -> list[Row]:
    """The run with the median jobs/s of its first row (a failed run, if any, stands for them all)."""
    for produced in runs:
        if not all(r.ok for r in produced):
            return produced
    ordered = sorted(runs, key=lambda rows: rows[0].jobs_per_s or 0.0)
    chosen = ordered[(len(ordered) - 1) // 2]
    if len(runs) > 1:
        chosen[0].extra["repeat_jobs_per_s"] = [rows[0].jobs_per_s for rows in runs]
        for i, row in enumerate(chosen):  # per round, in round order: run.py --metrics pairs them
            row.extra["repeat_cpu_us_per_job"] = [rows[i].cpu_us_per_job for rows in runs if len(rows) > i]
        chosen[0].note += "; median of " + ", ".join(f"{rows[0].jobs_per_s:,.0f}" for rows in runs)
    return chosen


def _run_queue(names: list[str], queue: str, defs: list[LoadDef], settings: Settings,
               log: Callable[[str], None]) -> list[Row]:
    """Start every server that has this queue type, side by side, and run each load on each in turn.

    A load's repeats are interleaved (round 1 on every server, then round 2 in the reverse order, ...), so that the
    machine's slow drifts fall on every server alike; the median run of each server is kept.
    """
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        running: dict[str, servers.RunningServer] = {}
        for name in names:
            spec = servers.SERVERS[name]
            if queue not in spec.queues:
                rows += [Row(name, d.name, ok=False, note=f"skipped: {name} has no {queue} queue") for d in defs]
                continue
            try:
                running[name] = stack.enter_context(servers.running(spec, ServerOptions(queue=queue)))
            except ServerUnavailable as exc:
                log(f"{name}: could not start: {exc}")
                rows.append(Row(name, ",".join(d.name for d in defs), ok=False, errors=[f"could not start: {exc}"]))
                continue
            log(f"{name}: {queue} queue, listening on {servers.HOST}:{running[name].port} "
                f"(pid {running[name].pid})")
        if settings.pin:
            _pin(running.values())
        for d in defs:
            runs: dict[str, list[list[Row]]] = {name: [] for name in running}
            for round_number in range(settings.repeat):
                # Every other round in the reverse order, so that neither server always runs first after the other
                # (run.py --metrics pairs the rounds: a bias of the first slot would read as a cost).
                order = list(running.items())
                for name, server in order[::-1] if round_number % 2 else order:
                    done = runs[name]
                    if server.proc.poll() is not None or any(not r.ok for run in done for r in run):
                        continue  # failed or exited: its failure is what gets reported
                    t0 = time.monotonic()
                    produced = _run_once(d, server, settings)
                    rss = server.rss_kib()
                    for r in produced:
                        r.server = name
                        if rss is not None:
                            r.extra["server_rss_kib"] = float(rss)
                        log(f"{name}: {r.load}: " + (f"{_fmt(r.jobs_per_s, 0)} jobs/s" if r.ok else "FAILED")
                            + f" ({time.monotonic() - t0:.1f} s)")
                        for e in r.errors[:3]:
                            log(f"    {e}")
                    done.append(produced)
            rows += [r for name in running if runs[name] for r in _median_run(runs[name])]
    return rows


def run_servers(names: list[str], loads: list[str], settings: Settings, log: Callable[[str], None]) -> list[Row]:
    """Every load on every available server; rows ordered by server, then load."""
    rows: list[Row] = []
    available: list[str] = []
    for name in names:
        reason = servers.SERVERS[name].check()
        if reason is None:
            available.append(name)
        else:
            log(f"{name}: skipped: {reason}")
            rows += [Row(name, load, ok=False, note=f"skipped: {reason}") for load in loads]
    groups: dict[str, list[LoadDef]] = {}
    for load in loads:
        groups.setdefault(LOADS[load].queue, []).append(LOADS[load])
    for queue, defs in groups.items():
        rows += _run_queue(available, queue, defs, settings, log)
    position = {name: i for i, name in enumerate(names)}
    return sorted(rows, key=lambda r: position.get(r.server, len(names)))  # stable: loads keep their order


def format_metrics_cost(rows: list[Row]) -> str:
    """Server CPU per job with the counters and /metrics on and off, per load, and the difference: with --repeat,
    the median of the rounds' own ratios (round i on against round i off: the servers ran one after the other in
    each round, so a drift of the machine falls on both)."""
    on = {r.load: r for r in rows if r.server == "geartrain-metrics" and r.ok}
    off = {r.load: r for r in rows if r.server == "geartrain-nometrics" and r.ok}
    lines = ["CPU per job with metrics on and off (server CPU, user + system, us/job):"]
    for load in [r.load for r in rows if r.server == "geartrain-metrics"]:
        a, b = on.get(load), off.get(load)
        if a is None or b is None or not a.cpu_us_per_job or not b.cpu_us_per_job:
            lines.append(f"  {load:<24} -  (a run failed or was skipped)")
            continue
        pairs = [(x, y) for x, y in zip(a.extra.get("repeat_cpu_us_per_job", []),
                                        b.extra.get("repeat_cpu_us_per_job", []), strict=False) if x and y]
        line = f"  {load:<24} on {a.cpu_us_per_job:8.1f}   off {b.cpu_us_per_job:8.1f}"
        if len(pairs) > 1:
            ratios = sorted(x / y for x, y in pairs)
            cost = statistics.median(ratios) - 1
            line += (f"   cost {100 * cost:+6.1f}% (median of {len(pairs)} paired rounds: "
                     + ", ".join(f"{100 * (r - 1):+.1f}%" for r in ratios) + ")")
        else:
            line += f"   cost {100 * (a.cpu_us_per_job - b.cpu_us_per_job) / b.cpu_us_per_job:+6.1f}%"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    loads = args.loads.split(",")
    names = args.servers.split(",")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    info = machine_info()  # before the run: its load average is the machine's, not ours
    started = time.monotonic()
    rows = run_servers(names, loads, settings, log)
    add_ratios(rows)
    face_rows = [] if args.no_faces else run_faces(
        jobs=5000 if args.quick else 20000, duration=2.0 if args.quick else 5.0, log=log, repeat=settings.repeat
    )
    startup_rows = [] if args.metrics else run_startup(3 if args.quick else 5)
    print()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"settings: {'quick' if args.quick else 'full'}, duration cap {settings.duration:g} s, "
          f"job cap {settings.jobs}, background {settings.bg_jobs} jobs, large {settings.large_jobs} jobs, "
          f"durable {settings.durable_jobs} jobs, {settings.functions} functions, "
          f"{settings.idle} idle conns, "
          f"client procs {settings.client_procs}, worker procs {settings.worker_procs}, "
          f"repeat {settings.repeat}{', server pinned to a CPU of its own' if settings.pin else ''}; "
          f"run took {time.monotonic() - started:.0f} s")
    print(format_table(rows))
    targets = format_targets(rows)
    if targets:
        print("\n" + targets)
    if face_rows:
        print("\nclient faces on gearmand (a worker process and a client process of each library; of raw = jobs/s "
              "over the load generator's in the same mode; ours/this = our jobs/s over its):")
        print(format_faces(face_rows))
    if args.metrics:
        print("\n" + format_metrics_cost(rows))
    if startup_rows:
        print("\nstart-up:")
        print(format_startup(startup_rows))
    failed = [r for r in rows if not r.ok and r.errors]
    for r in failed:
        print(f"\n{r.server} {r.load} FAILED:")
        for e in r.errors[:10]:
            print(f"  {e}")
    face_failed = [r for r in face_rows if r.errors and r.impl.startswith("geartrain")]
    for r in face_failed:
        print(f"\nface {r.impl} {r.mode} FAILED:")
        for e in r.errors[:10]:
            print(f"  {e}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": info, "settings": asdict(settings), "rows": [asdict(r) for r in rows],
             "faces": [asdict(r) for r in face_rows], "startup": [asdict(r) for r in startup_rows]}, indent=2
        ) + "\n")
    return 1 if failed or face_failed else 0


if __name__ == "__main__":
    sys.exit(main())
