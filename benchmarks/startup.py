"""Start-up figures: how soon each server answers after it is started, and how long the faces take to import.

- serving: from spawning the server process to its first answer to the admin ``version`` command over
  loopback (geartrain's ``geard`` with an in-memory queue, and gearmand); median of ``--runs``.
- imports: ``import gear`` and ``import gearman`` in a fresh interpreter, timed inside it after start-up (so
  the interpreter's own site imports are not counted); median of ``--runs``. Bytecode is compiled first, as a
  pip install does: with PYTHONDONTWRITEBYTECODE set every run would compile the sources again.

    python benchmarks/startup.py
"""

from __future__ import annotations

import argparse
import compileall
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import servers  # noqa: E402

SRC = HERE.parent / "src"


@dataclass
class StartupRow:
    what: str
    median_ms: float | None
    runs: list[float]
    note: str = ""


def _answers_version(port: int) -> bool:
    try:
        with socket.create_connection((servers.HOST, port), timeout=1) as sock:
            sock.sendall(b"version\n")
            return sock.recv(100).startswith(b"OK")
    except OSError:
        return False


def time_to_serve(spec: servers.ServerSpec, timeout: float = 20.0) -> float:
    """Seconds from Popen to the first ``version`` answer (polled every millisecond)."""
    port = servers.free_port()
    with tempfile.TemporaryDirectory(prefix="geartrain-startup-") as workdir:
        options = servers.ServerOptions(workdir=Path(workdir))
        argv = spec.command(port, options)
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
        try:
            while not _answers_version(port):
                if proc.poll() is not None:
                    raise servers.ServerUnavailable(f"{spec.name} exited with {proc.returncode}")
                if time.perf_counter() - t0 > timeout:
                    raise servers.ServerUnavailable(f"{spec.name} not serving after {timeout:g} s")
                time.sleep(0.001)
            return time.perf_counter() - t0
        finally:
            servers.stop_server(proc)


def import_time(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, env=env, cwd="/tmp")
    return float(out.stdout.decode().strip())


def run_startup(runs: int = 5) -> list[StartupRow]:
    rows: list[StartupRow] = []
    for name in ("geartrain", "gearmand"):
        spec = servers.SERVERS[name]
        reason = spec.check()
        if reason is not None:
            rows.append(StartupRow(f"{name} serving", None, [], f"skipped: {reason}"))
            continue
        times = [time_to_serve(spec) * 1000 for _ in range(runs)]
        rows.append(StartupRow(f"{name} serving", statistics.median(times), times, "spawn to first `version` answer"))
    compileall.compile_dir(str(SRC), quiet=1)
    for module in ("gear", "gearman"):
        times = [import_time(module) * 1000 for _ in range(runs)]
        rows.append(StartupRow(f"import {module}", statistics.median(times), times, "in a fresh interpreter"))
    return rows


def format_startup(rows: list[StartupRow]) -> str:
    lines = []
    for r in rows:
        if r.median_ms is None:
            lines.append(f"{r.what:<20} {'-':>9}  {r.note}")
        else:
            spread = ", ".join(f"{x:.0f}" for x in r.runs)
            lines.append(f"{r.what:<20} {r.median_ms:>6.0f} ms  median of {spread}; {r.note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    print(format_startup(run_startup(args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
