"""Instructions per job of one side of a client face, under callgrind, without start-up.

One side (the client or the worker of face_script.py's ``--api``) runs under ``valgrind --tool=callgrind``
against gearmand, the other side of the same library beside it; two runs of different lengths, and the difference
of their totals over the difference of their jobs is that side's instructions per job (imports, connecting and
shutting down cancel out). ``--src`` is the folder put on PYTHONPATH: this checkout's src (pure Python) or a
compiled build from scripts/build-compiled. Each run leaves its callgrind file in ``--out`` for
``callgrind_annotate --inclusive=yes``.

    python benchmarks/face_callgrind.py --side client --api geartrain --batch 100 --src /tmp/build
    python benchmarks/face_callgrind.py --side worker --api asyncio-floor --batch 1 --src /tmp/build
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import servers  # noqa: E402

SCRIPT = HERE / "face_script.py"


def callgrind_total(path: Path) -> int:
    """The instruction total of a callgrind output file."""
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise ValueError(f"no total in {path}")


def measure(side: str, api: str, batch: int, jobs: int, src: str, out: Path) -> int:
    """Instructions of the whole ``side`` process for one run of ``jobs`` jobs; its callgrind file is ``out``."""
    env = dict(os.environ, PYTHONPATH=src)
    valgrind = ["valgrind", "--tool=callgrind", "-q", f"--callgrind-out-file={out}"]
    with servers.running(servers.SERVERS["gearmand"]) as server:
        common = [sys.executable, str(SCRIPT), "--api", api, "--port", str(server.port), "--function", "f"]
        worker = subprocess.Popen([*(valgrind if side == "worker" else []), *common, "--role", "worker",
                                   "--timeout", "120"], stdout=subprocess.PIPE, env=env)
        try:
            assert worker.stdout is not None
            ready = worker.stdout.readline()
            if ready.strip() != b"ready":
                raise RuntimeError(f"the worker did not start: {ready!r}")
            client = subprocess.run([*(valgrind if side == "client" else []), *common, "--role", "client",
                                     "--jobs", str(jobs), "--batch", str(batch), "--duration", "1000",
                                     "--timeout", "600"], capture_output=True, env=env, timeout=1200)
            if b'"errors": []' not in client.stdout:
                raise RuntimeError(f"the client failed: {client.stdout!r} {client.stderr[-2000:]!r}")
        finally:
            worker.send_signal(signal.SIGTERM)  # callgrind writes its file as the worker exits
            worker.wait(timeout=120)
    return callgrind_total(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=("client", "worker"), required=True)
    p.add_argument("--api", default="geartrain", help="face_script.py's --api (geartrain, asyncio-floor, ...)")
    p.add_argument("--batch", type=int, default=100, help="jobs in flight (1: lock-step)")
    p.add_argument("--jobs", default="1000,3000", help="the two run lengths")
    p.add_argument("--src", default=str(HERE.parent / "src"), help="PYTHONPATH of both sides")
    p.add_argument("--out", help="folder for the callgrind files (default: a new temporary one)")
    args = p.parse_args(argv)
    short, long = (int(n) for n in args.jobs.split(","))
    out = Path(args.out or tempfile.mkdtemp(prefix="face-callgrind-"))
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.side}.{args.api}.{args.batch}"
    first = measure(args.side, args.api, args.batch, short, args.src, out / f"{stem}.{short}.out")
    second = measure(args.side, args.api, args.batch, long, args.src, out / f"{stem}.{long}.out")
    print(f"{args.side} {args.api} batch {args.batch} ({args.src}): {(second - first) / (long - short):,.0f} "
          f"instructions per job; callgrind files in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
