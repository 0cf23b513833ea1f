"""Client-face benchmarks: this checkout's ``gear`` and ``gearman`` against the originals, on one gearmand.

The originals run from throwaway virtualenvs under /tmp/geartrain-bench-venvs: gear 0.16.0 and pygearman
0.2.6, a Python 3 fork of python-gearman (gearman3 0.2.1 is also tried: it does not import on Python 3.9+).
Each measurement runs face_script.py twice under the right interpreter: a worker process of the library, and
then a client process of the same library, which checks every result. The client and the worker are separate
processes, as they are in a deployment.

Each mode is also run with the load generator's raw protocol client and worker (loadgen.py) in the same shape:
that is the protocol limit the faces are compared with ("of raw"). In the batch modes it runs a second time with
one submit at a time awaiting its JOB_CREATED ("of serial raw"): the limit for an API whose submit call returns
the job handle, as gear's submitJob does.

Two more kinds of rows: the "prefetch" rows run this checkout's gear, gearman and geartrain.client workers with
their opt-in prefetch (the next job grabbed while one runs), and "gear thread floor" is gear's thread model with
nothing of gear in it (a reader thread hands each JOB_CREATED to the submitting thread and each job to the working
thread): the limit of a gear-shaped client and worker in Python. "asyncio floor" is the least an asyncio client and
worker do per job on the raw protocol (a future per job awaited by a Task, a Task per worker job, on uvloop): the
shape geartrain.client's API imposes; geartrain.client's rows get their jobs/s over it ("of floor"), and it runs
whenever a geartrain.client row does. "x original" is a row's jobs/s over the original
library of its API in the same mode (gear 0.16.0, or pygearman 0.2.6 for the gearman API).

With ``--baseline-src /path/to/other/checkout/src`` every face of this checkout also runs from that source tree,
as rows labelled "(before)", interleaved with this checkout's in the same run (same server, same rounds), and
each of this checkout's rows gets its jobs/s over the "(before)" row's ("vs before"): a before/after comparison
that the machine's drifts touch alike.

    python benchmarks/faces.py --quick
    python benchmarks/faces.py --repeat 3 --baseline-src /tmp/geartrain-before/src
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import servers  # noqa: E402
from servers import ServerUnavailable, read_cpu_seconds  # noqa: E402

SCRIPT = HERE / "face_script.py"
SRC = HERE.parent / "src"
RAW = "raw protocol"
#: The raw protocol with one submit at a time awaiting its JOB_CREATED: the limit for an API whose submit call
#: returns the job handle (gear's submitJob), in the batch modes.
RAW_SERIAL = "raw, serial submits"
RAWS = (RAW, RAW_SERIAL)
#: The shape geartrain.client's API imposes, with nothing of the client in it: its rows' "of floor" is over this.
ASYNCIO_FLOOR = "asyncio floor"
#: The suffix of the rows of --baseline-src's faces.
BEFORE = " (before)"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Impl:
    api: str  # "gear" or "gearman"
    name: str  # shown in the table
    venv: str | None  # None: this interpreter, importing this checkout
    requirement: str | None = None
    probe: str = ""
    task_bytes: bool = False
    src: str | None = None  # with venv None: the source tree to import (None: this checkout's)
    prefetch: bool = False  # the worker grabs its next job while one runs (this checkout's workers only)
    twin: bool = True  # with --baseline-src, also run from that tree (not for what an older tree lacks)


IMPLS = [
    Impl("gear", "geartrain gear", None),
    Impl("gear", "gear 0.16.0", f"gear-{servers.GEAR_VERSION}", f"gear=={servers.GEAR_VERSION}", "import gear"),
    Impl("gearman", "geartrain gearman", None),
    Impl("gearman", "pygearman 0.2.6", "pygearman-0.2.6", "pygearman==0.2.6", "import gearman", task_bytes=True),
    Impl("gearman", "gearman3 0.2.1", "gearman3-0.2.1", "gearman3==0.2.1", "import gearman", task_bytes=True),
    Impl("gearman", "geartrain gearman prefetch", None, prefetch=True, twin=False),
    Impl("geartrain", "geartrain.client", None),  # the asyncio client and worker: no original to compare with
    Impl("geartrain", "geartrain.client prefetch", None, prefetch=True, twin=False),
    # The least an asyncio client and worker do per job on the raw protocol (face_script._FloorClient,
    # _FloorWorker): a future per job awaited by the caller's Task, a Task per worker job. Runs with geartrain.client.
    Impl("asyncio-floor", ASYNCIO_FLOOR, None, twin=False),
    # This checkout's gear with its added Client.submitJobs (a batch pipelined): no original has it.
    Impl("gear-batch", "geartrain gear submitJobs", None),
    # This checkout's gear with the Worker's opt-in prefetch (gear.Worker(..., prefetch=True)): no original has it.
    Impl("gear", "geartrain gear prefetch", None, prefetch=True, twin=False),
    Impl("gear-batch", "geartrain gear submitJobs prefetch", None, prefetch=True, twin=False),
    # gear's thread model with nothing else (face_script.FloorFace, run_floor_worker): what a gear-shaped client
    # and worker cost at least in Python, the limit for geartrain gear short of changing gear's threads.
    Impl("floor", "gear thread floor", None, twin=False),
]
#: The faces compared with the originals of their API ("ours/this").
OURS = ("geartrain gear", "geartrain gearman")


@dataclass(frozen=True)
class Mode:
    batch: int  # jobs submitted before waiting for them
    size: int  # payload bytes
    jobs_share: float  # share of the job cap this mode may run (large payloads run fewer jobs)
    note: str


MODES = {
    "lockstep": Mode(1, 64, 1.0, "1 job at a time, 64 B"),
    "batch100": Mode(100, 64, 1.0, "100 submitted, then waited for, 64 B"),
    "batch5000": Mode(5000, 64, 1.0, "5,000 submitted, then waited for, 64 B"),
    "1mib": Mode(1, MIB, 0.005, "1 job at a time, 1 MiB"),
}


@dataclass
class FaceRow:
    api: str
    impl: str
    mode: str
    jobs: int = 0
    seconds: float = 0.0
    jobs_per_s: float | None = None
    client_cpu_us: float | None = None  # client process CPU per job
    worker_cpu_us: float | None = None  # worker process CPU per job
    ratio: float | None = None  # this checkout's jobs/s over the original's (on the original's rows)
    vs_before: float | None = None  # this checkout's jobs/s over the same face's from --baseline-src
    vs_original: float | None = None  # this checkout's jobs/s over the original library of its API
    of_raw: float | None = None  # jobs/s over the raw protocol's in the same mode
    of_serial_raw: float | None = None  # jobs/s over the raw protocol's with serial submits (batch modes)
    of_floor: float | None = None  # geartrain.client rows: jobs/s over the asyncio floor's in the same mode
    ok: bool = True
    note: str = ""
    errors: list[str] = field(default_factory=list)


def _python_for(impl: Impl, log: Callable[[str], None]) -> tuple[str | None, str | None]:
    """(interpreter, None) or (None, reason it cannot run)."""
    if impl.venv is None:
        return sys.executable, None
    try:
        bin_dir = servers.ensure_venv(impl.venv, [impl.requirement or ""], impl.probe, log)
    except ServerUnavailable as exc:
        return None, str(exc)
    return str(bin_dir / "python"), None


def _env(impl: Impl) -> dict[str, str]:
    if impl.venv is None:  # this checkout's faces (or --baseline-src's), whether or not it is pip-installed
        src = impl.src or str(SRC)
        rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(SRC)]
        return dict(os.environ, PYTHONPATH=os.pathsep.join([src, *rest]))
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _available_workers(port: int, function: str) -> int:
    """The "available workers" column of the server's ``status`` for function (0 when it is not listed)."""
    data = servers.admin_listing(port, b"status", timeout=5)
    for line in data.decode(errors="replace").splitlines():
        fields = line.split("\t")
        if len(fields) == 4 and fields[0] == function:
            return int(fields[3])
    return 0


@contextlib.contextmanager
def face_worker(python: str, impl: Impl, port: int, function: str, timeout: float) -> Iterator[int]:
    """A worker process of the face, registered with the server; yields its pid and always kills it."""
    argv = [python, str(SCRIPT), "--api", impl.api, "--role", "worker", "--port", str(port),
            "--function", function, "--timeout", str(timeout)]
    if impl.task_bytes:
        argv.append("--task-bytes")
    if impl.prefetch:
        argv.append("--prefetch")
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=_env(impl), cwd="/tmp")

        def failed(what: str) -> ServerUnavailable:
            proc.kill()
            proc.wait(timeout=10)
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-2:]
            return ServerUnavailable(f"{what}: {' | '.join(tail)}")

        try:
            deadline = time.monotonic() + timeout
            assert proc.stdout is not None
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                if not sel.select(timeout) or proc.stdout.readline().strip() != b"ready":
                    raise failed("the worker did not start")
            while _available_workers(port, function) < 1:  # its CAN_DO has reached the server
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise failed(f"the worker never registered {function}")
                time.sleep(0.01)
            yield proc.pid
        finally:
            proc.kill()  # our own child, by its handle
            proc.wait(timeout=10)
            proc.stdout.close()  # type: ignore[union-attr]


def run_one(python: str, impl: Impl, mode: str, port: int, jobs: int, duration: float) -> FaceRow:
    row = FaceRow(impl.api, impl.name, mode)
    m = MODES[mode]
    function = f"face_{loadgen.new_tag(mode)}"
    timeout = duration + 30
    argv = [python, str(SCRIPT), "--api", impl.api, "--role", "client", "--port", str(port),
            "--function", function, "--jobs", str(jobs), "--batch", str(m.batch), "--size", str(m.size),
            "--duration", str(duration), "--timeout", str(timeout)]
    if impl.task_bytes:
        argv.append("--task-bytes")
    try:
        with face_worker(python, impl, port, function, timeout) as worker_pid:
            worker_cpu0 = read_cpu_seconds(worker_pid)
            proc = subprocess.run(argv, capture_output=True, timeout=timeout + 30, env=_env(impl), cwd="/tmp")
            worker_cpu1 = read_cpu_seconds(worker_pid)
    except (ServerUnavailable, subprocess.TimeoutExpired) as exc:
        row.ok = False
        row.errors.append(str(exc))
        return row
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-2:]
        row.ok = False
        row.errors.append(f"exit {proc.returncode}: {' | '.join(tail)}")
        return row
    row.jobs = int(result["jobs"])
    row.seconds = float(result["seconds"])
    row.errors = list(result["errors"])
    row.ok = not row.errors and row.jobs > 0
    if row.ok:
        row.jobs_per_s = row.jobs / max(row.seconds, 1e-9)
        row.client_cpu_us = float(result["cpu"]) / row.jobs * 1e6
        if worker_cpu0 is not None and worker_cpu1 is not None:
            row.worker_cpu_us = (worker_cpu1 - worker_cpu0) / row.jobs * 1e6
    return row


def run_raw(mode: str, port: int, jobs: int, duration: float, serial: bool = False) -> FaceRow:
    """The load generator's client and worker in the mode's shape: a window of ``batch`` jobs in flight
    (``serial``: of which one submit at a time awaits its JOB_CREATED)."""
    m = MODES[mode]
    tag = loadgen.new_tag(f"raw{mode}")
    plan = loadgen.Plan(port=port, func=f"face_{tag}".encode(), tag=tag, mode="foreground", clients=1,
                        workers=1, inflight=m.batch, payload=m.size, jobs=jobs, duration=duration,
                        timeout=duration + 60, serial_submits=serial)
    outcome = loadgen.run_foreground(plan)
    row = FaceRow("-", RAW_SERIAL if serial else RAW, mode, jobs=outcome.jobs, seconds=outcome.seconds,
                  errors=outcome.errors[:5])
    row.ok = not row.errors and row.jobs > 0
    row.jobs_per_s = outcome.jobs_per_s if row.ok else None
    return row


def run_faces(jobs: int, duration: float, log: Callable[[str], None] = print,
              modes: list[str] | None = None, repeat: int = 1, impls: list[Impl] | None = None) -> list[FaceRow]:
    """Every implementation in every mode, ``repeat`` times; the median run of each is reported.

    Runs are interleaved (mode by mode, then round by round, then implementation by implementation), so that
    the machine's slow drifts fall on every implementation alike rather than on whichever ran last.
    """
    modes = modes or list(MODES)
    impls = IMPLS if impls is None else impls
    spec = servers.SERVERS["gearmand"]
    reason = spec.check()
    if reason is not None:
        return [FaceRow(i.api, i.name, m, ok=False, note=f"skipped: {reason}") for i in impls for m in modes]
    pythons = {impl: _python_for(impl, log) for impl in impls}
    rows: list[FaceRow] = []
    with servers.running(spec) as server:
        log(f"faces: gearmand on {servers.HOST}:{server.port}")
        for mode in modes:
            cap = max(10, int(jobs * MODES[mode].jobs_share))
            runs: dict[str, list[FaceRow]] = {}
            for _ in range(repeat):
                for impl in [*RAWS, *impls]:
                    name = impl if isinstance(impl, str) else impl.name
                    if name == RAW_SERIAL and MODES[mode].batch == 1:
                        continue  # one job at a time: the same as the raw protocol row
                    if any(not r.ok for r in runs.get(name, ())):
                        continue  # failed once: not again (a time-out would only cost another 35 s)
                    t0 = time.monotonic()
                    if isinstance(impl, str):
                        row = run_raw(mode, server.port, cap, duration, serial=impl == RAW_SERIAL)
                    else:
                        python, why = pythons[impl]
                        if python is None:
                            row = FaceRow(impl.api, impl.name, mode, ok=False, note=f"skipped: {why}")
                        else:
                            row = run_one(python, impl, mode, server.port, cap, duration)
                    log(f"faces: {name} {mode}: "
                        + (f"{row.jobs_per_s:,.0f} jobs/s" if row.ok else f"FAILED {(row.errors or [row.note])[:1]}")
                        + f" ({time.monotonic() - t0:.1f} s)")
                    runs.setdefault(name, []).append(row)
            rows += [median_row(group) for group in runs.values()]
    add_ratios(rows)
    return rows


def median_row(group: list[FaceRow]) -> FaceRow:
    """The median run by jobs/s (a failed run, if any, stands for the group); the spread goes in its note."""
    failed = [r for r in group if not r.ok]
    if failed or len(group) == 1:
        return failed[0] if failed else group[0]
    ordered = sorted(group, key=lambda r: r.jobs_per_s or 0.0)
    row = ordered[len(ordered) // 2]
    row.note = f"{MODES[row.mode].note}; median of " + ", ".join(f"{r.jobs_per_s:,.0f}" for r in group)
    return row


def add_ratios(rows: list[FaceRow]) -> None:
    ours = {(r.api, r.mode): r.jobs_per_s for r in rows if r.impl in OURS and r.ok}
    originals: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.ok and r.jobs_per_s and not r.impl.startswith("geartrain") and r.impl not in RAWS:
            originals.setdefault((r.api, r.mode), r.jobs_per_s)
    raw = {r.mode: r.jobs_per_s for r in rows if r.impl == RAW and r.ok}
    serial = {r.mode: r.jobs_per_s for r in rows if r.impl == RAW_SERIAL and r.ok}
    floor = {r.mode: r.jobs_per_s for r in rows if r.impl == ASYNCIO_FLOOR and r.ok}
    for r in rows:
        if not r.ok or not r.jobs_per_s or r.impl == RAW:
            continue
        if raw.get(r.mode):
            r.of_raw = r.jobs_per_s / raw[r.mode]
        if serial.get(r.mode) and r.impl != RAW_SERIAL:
            r.of_serial_raw = r.jobs_per_s / serial[r.mode]
        if floor.get(r.mode) and r.api == "geartrain":
            r.of_floor = r.jobs_per_s / floor[r.mode]
        mine = ours.get((r.api, r.mode))
        if mine and r.impl not in RAWS and not r.impl.startswith("geartrain"):
            r.ratio = mine / r.jobs_per_s
        api = "gear" if r.api == "gear-batch" else r.api
        if r.impl.startswith("geartrain") and originals.get((api, r.mode)):
            r.vs_original = r.jobs_per_s / originals[(api, r.mode)]
    before = {(r.impl.removesuffix(BEFORE), r.mode): r.jobs_per_s for r in rows if r.impl.endswith(BEFORE) and r.ok}
    for r in rows:
        old = before.get((r.impl, r.mode))
        if r.ok and r.jobs_per_s and old:
            r.vs_before = r.jobs_per_s / old


def with_baseline(impls: list[Impl], src: str) -> list[Impl]:
    """Each of this checkout's faces, followed by its twin importing the source tree ``src`` (those with one)."""
    out: list[Impl] = []
    for impl in impls:
        out.append(impl)
        if impl.venv is None and impl.twin:
            out.append(dataclasses.replace(impl, name=impl.name + BEFORE, src=src))
    return out


def format_faces(rows: list[FaceRow]) -> str:
    header = ["api", "implementation", "mode", "jobs", "jobs/s", "of raw", "of serial raw", "of floor", "client us/job",
              "worker us/job", "ours/this", "x original", "vs before", "notes"]

    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    body = []
    for r in rows:
        if r.ok:
            body.append([r.api, r.impl, r.mode, str(r.jobs), f"{r.jobs_per_s:,.0f}", num(r.of_raw, ".2f"),
                         num(r.of_serial_raw, ".2f"), num(r.of_floor, ".2f"), num(r.client_cpu_us, ",.0f"),
                         num(r.worker_cpu_us, ",.0f"),
                         "-" if r.ratio is None else f"{r.ratio:.1f}x", num(r.vs_original, ".2f"),
                         num(r.vs_before, ".2f"),
                         r.note or MODES[r.mode].note])
        else:
            why = r.errors[0] if r.errors else r.note
            body.append([r.api, r.impl, r.mode, str(r.jobs), "FAILED" if r.errors else "skipped", "-", "-", "-", "-",
                         "-", "-", "-", "-", why.splitlines()[0][:100]])
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    right = {3, 4, 5, 6, 7, 8, 9, 10, 11, 12}

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join((c.rjust(w) if i in right else c.ljust(w)) for i, (c, w) in pairs).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(b) for b in body)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--jobs", type=int, help="job cap per measurement (1 MiB modes run a 200th of it)")
    p.add_argument("--duration", type=float, help="seconds cap per measurement")
    p.add_argument("--modes", help=f"comma-separated, from: {','.join(MODES)}")
    p.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the median is reported")
    p.add_argument("--impls", help="comma-separated implementation names to run (the raw protocol always runs): "
                   + ", ".join(repr(i.name) for i in IMPLS))
    p.add_argument("--baseline-src", metavar="DIR",
                   help="another checkout's src directory: its faces run beside this one's, labelled (before)")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    jobs = args.jobs or (10000 if args.quick else 20000)
    duration = args.duration or (2.0 if args.quick else 5.0)
    modes = args.modes.split(",") if args.modes else None
    unknown = set(modes or ()) - set(MODES)
    if unknown:
        p.error(f"unknown modes: {', '.join(sorted(unknown))}")
    impls = [i for i in IMPLS if i.name in args.impls.split(",")] if args.impls else None
    if args.impls and len(impls or ()) != len(args.impls.split(",")):
        p.error(f"unknown implementations in {args.impls!r}")
    if impls is not None and any(i.api == "geartrain" for i in impls) and ASYNCIO_FLOOR not in args.impls.split(","):
        impls.append(next(i for i in IMPLS if i.name == ASYNCIO_FLOOR))  # geartrain.client's "of floor"
    if args.baseline_src:
        baseline = Path(args.baseline_src).resolve()
        if not (baseline / "geartrain" / "protocol").is_dir():
            p.error(f"{baseline} is not a geartrain src directory (no geartrain/protocol in it)")
        impls = with_baseline(IMPLS if impls is None else impls, str(baseline))
    rows = run_faces(jobs, duration, log=lambda m: print(m, file=sys.stderr, flush=True), modes=modes,
                     repeat=args.repeat, impls=impls)
    print(format_faces(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 1 if any(r.errors for r in rows if r.impl.startswith("geartrain") or r.impl in RAWS) else 0


if __name__ == "__main__":
    sys.exit(main())
