"""Client-face benchmarks: this checkout's ``gear`` and ``gearman`` against the originals, on one gearmand.

The originals run from throwaway virtualenvs under /tmp/geartrain-bench-venvs: gear 0.16.0 and pygearman
0.2.6, a Python 3 fork of python-gearman (gearman3 0.2.1 is also tried: it does not import on Python 3.9+).
Each measurement is face_script.py in a subprocess of the right interpreter: a client and a worker thread in
one process, every result checked.

    python benchmarks/faces.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import servers  # noqa: E402
from servers import ServerUnavailable  # noqa: E402

SCRIPT = HERE / "face_script.py"
SRC = HERE.parent / "src"


@dataclass(frozen=True)
class Impl:
    api: str  # "gear" or "gearman"
    name: str  # shown in the table
    venv: str | None  # None: this interpreter, importing this checkout
    requirement: str | None = None
    probe: str = ""
    task_bytes: bool = False


IMPLS = [
    Impl("gear", "geartrain gear", None),
    Impl("gear", "gear 0.16.0", f"gear-{servers.GEAR_VERSION}", f"gear=={servers.GEAR_VERSION}", "import gear"),
    Impl("gearman", "geartrain gearman", None),
    Impl("gearman", "pygearman 0.2.6", "pygearman-0.2.6", "pygearman==0.2.6", "import gearman", task_bytes=True),
    Impl("gearman", "gearman3 0.2.1", "gearman3-0.2.1", "gearman3==0.2.1", "import gearman", task_bytes=True),
]

MODES = {"lockstep": 1, "batch100": 100}


@dataclass
class FaceRow:
    api: str
    impl: str
    mode: str
    jobs: int = 0
    seconds: float = 0.0
    jobs_per_s: float | None = None
    ratio: float | None = None  # this checkout's jobs/s over the original's (on the original's rows)
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


def run_one(python: str, impl: Impl, mode: str, port: int, jobs: int, duration: float) -> FaceRow:
    row = FaceRow(impl.api, impl.name, mode)
    argv = [python, str(SCRIPT), "--api", impl.api, "--port", str(port), "--jobs", str(jobs),
            "--batch", str(MODES[mode]), "--duration", str(duration), "--timeout", str(duration + 20)]
    if impl.task_bytes:
        argv.append("--task-bytes")
    if impl.venv is None:  # this checkout's faces, whether or not it is pip-installed
        env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    else:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=duration + 60, env=env, cwd="/tmp")
    except subprocess.TimeoutExpired:
        row.ok = False
        row.errors.append(f"no answer within {duration + 60:g} s")
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
    return row


def run_faces(jobs: int, duration: float, log: Callable[[str], None] = print) -> list[FaceRow]:
    rows: list[FaceRow] = []
    spec = servers.SERVERS["gearmand"]
    reason = spec.check()
    if reason is not None:
        return [FaceRow(i.api, i.name, m, ok=False, note=f"skipped: {reason}") for i in IMPLS for m in MODES]
    with servers.running(spec) as server:
        log(f"faces: gearmand on {servers.HOST}:{server.port}")
        for impl in IMPLS:
            python, why = _python_for(impl, log)
            for mode in MODES:
                if python is None:
                    rows.append(FaceRow(impl.api, impl.name, mode, ok=False, note=f"skipped: {why}"))
                    continue
                t0 = time.monotonic()
                row = run_one(python, impl, mode, server.port, jobs, duration)
                log(f"faces: {impl.name} {mode}: "
                    + (f"{row.jobs_per_s:,.0f} jobs/s" if row.ok else f"FAILED {row.errors[:1]}")
                    + f" ({time.monotonic() - t0:.1f} s)")
                rows.append(row)
    ours = {(r.api, r.mode): r.jobs_per_s for r in rows if r.impl.startswith("geartrain") and r.ok}
    for r in rows:
        mine = ours.get((r.api, r.mode))
        if r.ok and r.jobs_per_s and mine and not r.impl.startswith("geartrain"):
            r.ratio = mine / r.jobs_per_s
    return rows


def format_faces(rows: list[FaceRow]) -> str:
    header = ["api", "implementation", "mode", "jobs", "jobs/s", "ours/this", "notes"]
    body = []
    for r in rows:
        if r.ok:
            ratio = "-" if r.ratio is None else f"{r.ratio:.1f}x"
            body.append([r.api, r.impl, r.mode, str(r.jobs), f"{r.jobs_per_s:,.0f}", ratio, r.note])
        else:
            why = r.errors[0] if r.errors else r.note
            body.append([r.api, r.impl, r.mode, str(r.jobs), "FAILED" if r.errors else "skipped", "-",
                         why.splitlines()[0][:100]])
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    right = {3, 4, 5}

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join((c.rjust(w) if i in right else c.ljust(w)) for i, (c, w) in pairs).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(b) for b in body)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--jobs", type=int, help="job cap per measurement")
    p.add_argument("--duration", type=float, help="seconds cap per measurement")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    jobs = args.jobs or (5000 if args.quick else 20000)
    duration = args.duration or (2.0 if args.quick else 5.0)
    rows = run_faces(jobs, duration, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_faces(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 1 if any(r.errors for r in rows if r.impl.startswith("geartrain")) else 0


if __name__ == "__main__":
    sys.exit(main())
