"""System calls, wakeups and CPU of the server per job, geartrain beside gearmand under the same loads.

    python benchmarks/syscalls.py                                   # foreground and large, /proc counters
    python benchmarks/syscalls.py --loads foreground --repeat 3     # interleaved rounds (A, B, A, B ...)
    python benchmarks/syscalls.py --no-perf                         # /proc counters only
    python benchmarks/syscalls.py --servers geartrain=/tmp/old/src,geartrain --no-perf --repeat 5   # A/B of trees
    python benchmarks/syscalls.py --servers geartrain=/tmp/build --no-perf --record /tmp/prof   # perf record

CPU, page faults and context switches come from /proc (utime, stime and minflt of /proc/PID/stat, the voluntary
and involuntary switches of every thread's /proc/PID/task/TID/status: a voluntary switch is a sleep, mostly an
epoll_wait that blocked, so it counts the wakeups). The system calls of each name are counted in the kernel by
`perf stat -e syscalls:sys_enter_NAME -p PID` over a second run of the same load (tracepoint counters: no record
per call, but each call costs more, so a server making many calls (gearmand: 12 per foreground job) shows 2-3x its
CPU while counted: the CPU figures come from the first run, without perf; --no-perf skips the second run).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import servers  # noqa: E402
from loads import MIB, Settings, make_plan  # noqa: E402

_CLK_TCK = os.sysconf("SC_CLK_TCK")

#: The system calls counted (those of a socket server's data path, its wakeups and its memory).
SYSCALLS = ("read", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg", "epoll_wait", "epoll_pwait",
            "futex", "mmap", "munmap", "mremap", "brk", "madvise")


@dataclass
class Counters:
    utime: float = 0.0
    stime: float = 0.0
    minflt: int = 0
    voluntary: int = 0
    involuntary: int = 0

    def __sub__(self, other: Counters) -> Counters:
        return Counters(*(getattr(self, k) - getattr(other, k) for k in self.__dataclass_fields__))


def read_counters(pid: int) -> Counters:
    c = Counters()
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    # After the command name (man proc, 1-based): minflt is field 10, utime 14, stime 15.
    c.minflt = int(fields[7])
    c.utime, c.stime = int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/status") as fh:
            for line in fh:
                if line.startswith("voluntary_ctxt_switches:"):
                    c.voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    c.involuntary += int(line.split()[1])
    return c


@dataclass
class Result:
    server: str
    load: str
    jobs: int
    counters: Counters
    jobs_per_s: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)

    def per_job(self, value: float) -> float:
        return value / self.jobs if self.jobs else float("nan")


LOADS = {
    # name: (plan keywords, settings key of the job count)
    "foreground": (dict(mode="foreground", clients=4, workers=4, inflight=16, payload=64), "jobs"),
    "lockstep": (dict(mode="foreground", clients=1, workers=1, inflight=1, payload=64), "lockstep_jobs"),
    "large": (dict(mode="foreground", clients=1, workers=1, inflight=1, payload=MIB), "large_jobs"),
}


def start_perf(pid: int, out: Path) -> subprocess.Popen[bytes]:
    events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS)
    proc = subprocess.Popen(["perf", "stat", "-x", ",", "-o", str(out), "-e", events, "-p", str(pid)],
                            stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached
    return proc


def stop_perf(proc: subprocess.Popen[bytes], out: Path) -> dict[str, int]:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    calls = {}
    for line in out.read_text().splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2].startswith("syscalls:sys_enter_") and parts[0].isdigit():
            calls[parts[2].removeprefix("syscalls:sys_enter_")] = int(parts[0])
    return calls


def start_record(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """perf record of the server's samples (user and kernel, call graphs) while the load runs."""
    proc = subprocess.Popen(["perf", "record", "-q", "-g", "-F", "2000", "-o", str(out), "-p", str(pid)],
                            stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached
    return proc


def run_load(server: servers.RunningServer, load: str, jobs: int, use_perf: bool, record: Path | None = None
             ) -> Result:
    kw, _ = LOADS[load]
    plan = make_plan(server, load[:2], Settings(duration=1e9), jobs=jobs, **kw)
    out = server.options.workdir / f"perf-{load}.txt"  # type: ignore[operator]
    perf = start_perf(server.pid, out) if use_perf else None
    recorder = start_record(server.pid, record / f"{server.spec.name}-{load}.data") if record else None
    before = read_counters(server.pid)
    outcome = loadgen.run_foreground(plan)
    after = read_counters(server.pid)
    if recorder is not None:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)
    if outcome.errors:
        raise SystemExit(f"{server.spec.name} {load}: {outcome.errors[:3]}")
    result = Result(server.spec.name, load, outcome.jobs, after - before, outcome.jobs_per_s)
    if perf is not None:
        result.calls = stop_perf(perf, out)
    return result


def format_result(r: Result) -> str:
    c = r.counters
    cpu = " ".join(f"{k} {r.per_job(v * 1e6):.1f}" for k, v in
                   (("user", c.utime), ("sys", c.stime), ("cpu", c.utime + c.stime)))
    line = (f"{r.server:10} {r.load:10} {r.jobs:7} jobs {r.jobs_per_s:7.0f}/s, us/job: {cpu}; "
            f"per job: faults {r.per_job(c.minflt):.2f} vol.sw {r.per_job(c.voluntary):.3f} "
            f"invol.sw {r.per_job(c.involuntary):.3f}")
    calls = [(k, v) for k, v in sorted(r.calls.items(), key=lambda kv: -kv[1]) if v]
    if calls:
        total = sum(r.calls.values())
        line += (f"\n{'':10} syscalls/job {r.per_job(total):.2f}: " +
                 " ".join(f"{k} {r.per_job(v):.3f}" for k, v in calls))
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="geartrain,gearmand", help="NAME or NAME=SRC (code from SRC), comma separated")
    ap.add_argument("--loads", default="foreground,large", help=f"comma-separated, from: {','.join(LOADS)}")
    ap.add_argument("--repeat", type=int, default=1, help="rounds, servers interleaved within each")
    ap.add_argument("--jobs", type=int, default=150_000, help="jobs of the foreground load")
    ap.add_argument("--lockstep-jobs", type=int, default=30_000)
    ap.add_argument("--large-jobs", type=int, default=200)
    ap.add_argument("--no-perf", action="store_true", help="no perf stat: CPU, faults and switches only")
    ap.add_argument("--record", type=Path, metavar="DIR",
                    help="perf record each server's samples over the first run into DIR/SERVER-LOAD.data")
    args = ap.parse_args()
    unknown = sorted(set(args.loads.split(",")) - set(LOADS))
    if unknown:
        ap.error(f"--loads: no load named {', '.join(unknown)} (this script has {', '.join(LOADS)})")
    os.environ.setdefault("SYSCALLS_PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    counts = {"jobs": args.jobs, "lockstep_jobs": args.lockstep_jobs, "large_jobs": args.large_jobs}
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC, {loadgen.LOOP_NAME}, "
          "per job:", flush=True)
    for _ in range(args.repeat):
        for entry in args.servers.split(","):
            # NAME=SRC runs the server NAME with its Python code from SRC (an older tree, for a paired A/B);
            # the rows name it NAME@ and the SRC's position in --servers.
            name, _, src = entry.partition("=")
            os.environ["PYTHONPATH"] = src or os.environ.get("SYSCALLS_PYTHONPATH", "")
            spec = servers.SERVERS[name]
            if src:
                spec = dataclasses.replace(spec, name=f"{name}@{args.servers.split(',').index(entry)}")
            with servers.running(spec) as server:
                for load in args.loads.split(","):
                    result = run_load(server, load, counts[LOADS[load][1]], False, args.record)
                    if not args.no_perf:
                        result.calls = run_load(server, load, counts[LOADS[load][1]], True).calls
                    print(format_result(result), flush=True)


if __name__ == "__main__":
    main()
