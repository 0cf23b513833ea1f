"""libgearman's command-line tools (gearman, gearadmin) against geartrain and gearmand, side by side.

Each scenario runs against both servers and the tools' output must be the same (after normalising what
legitimately differs: handles, file descriptors, process ids and version strings).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from conftest import RunningServer, start_gearmand, start_geartrain, stop_process, stopping_all
from wire import Wire

GEARMAN = shutil.which("gearman")
GEARADMIN = shutil.which("gearadmin")
pytestmark = pytest.mark.skipif(
    not (GEARMAN and GEARADMIN), reason="gearman-tools is not installed (.ci/run installs it)"
)


@pytest.fixture
def both() -> Iterator[dict[str, RunningServer]]:
    servers = {"gearmand": start_gearmand()}
    try:
        servers["geartrain"] = start_geartrain()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture
def workers() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `gearman -w` workers; every one is stopped at the end."""
    def start(server: RunningServer, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [GEARMAN, "-h", server.host, "-p", str(server.port), "-w", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    with stopping_all(start, lambda process: stop_process(process, timeout=5)) as make:
        yield make


def gearman(server: RunningServer, *args: str, input: bytes | None = None) -> bytes:
    out = subprocess.run([GEARMAN, "-h", server.host, "-p", str(server.port), *args], input=input,
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def gearadmin(server: RunningServer, *args: str) -> str:
    out = subprocess.run([GEARADMIN, "-h", server.host, "-p", str(server.port), *args],
                         capture_output=True, timeout=30, text=True)
    return out.stdout + out.stderr


def wait_for_workers(server: RunningServer, function: bytes, count: int = 1, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    with Wire(server.host, server.port) as w:
        while time.monotonic() < end:
            for line in w.admin("status").lines:
                fields = line.split(b"\t")
                if fields[0] == function and int(fields[3]) >= count:
                    return
            time.sleep(0.02)
    raise TimeoutError(f"{count} worker(s) for {function!r} did not register")


def wait_until_drained(server: RunningServer, function: bytes, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    with Wire(server.host, server.port) as w:
        while time.monotonic() < end:
            if all(not line.startswith(function + b"\t") or line.split(b"\t")[1] == b"0"
                   for line in w.admin("status").lines):
                return
            time.sleep(0.02)
    raise TimeoutError(f"jobs of {function!r} were not all done")


def normalise(text: str) -> str:
    text = re.sub(r"H:[^\s:]+:\d+", "HANDLE", text)
    text = re.sub(r"(?m)^\d+ (\S+) ", r"FD \1 ", text)
    return text


def test_foreground_job_through_a_gearman_worker(both, workers):
    outputs = {}
    for kind, server in both.items():
        workers(server, "-f", "rev", "--", "rev")
        wait_for_workers(server, b"rev")
        outputs[kind] = gearman(server, "-f", "rev", "hello world")
    assert outputs["geartrain"] == outputs["gearmand"]
    assert b"dlrow olleh" in outputs["geartrain"]


def test_one_job_per_line_and_unique(both, workers):
    outputs = {}
    for kind, server in both.items():
        workers(server, "-f", "up", "--", "tr", "a-z", "A-Z")
        wait_for_workers(server, b"up")
        outputs[kind] = gearman(server, "-f", "up", "-n", "-u", "same", input=b"abc\ndef\n")
    assert outputs["geartrain"] == outputs["gearmand"] == b"ABC\nDEF\n"


def test_background_jobs_with_priorities_run_high_normal_low(both, workers, tmp_path):
    orders = {}
    for kind, server in both.items():
        for flag, data in (("-L", "low"), (None, "normal"), ("-I", "high")):
            gearman(server, "-f", "pri", "-b", *([flag] if flag else []), data)
        out = tmp_path / f"{kind}.txt"
        workers(server, "-f", "pri", "-c", "3", "--", "sh", "-c", f"cat >> {out}; echo >> {out}")
        wait_until_drained(server, b"pri")
        orders[kind] = out.read_text().split()
    assert orders["geartrain"] == orders["gearmand"] == ["high", "normal", "low"]


def test_gearadmin_status_workers_and_jobs_listings_match(both, workers):
    outputs = {}
    for kind, server in both.items():
        workers(server, "-f", "listed", "--", "cat")
        wait_for_workers(server, b"listed")
        gearman(server, "-f", "queued", "-b", "-u", "unique-1", "payload")
        gearman(server, "-f", "queued", "-b", "-I", "-u", "unique-2", "payload")
        outputs[kind] = {
            flag: normalise(gearadmin(server, flag))
            for flag in ("--status", "--priority-status", "--show-jobs", "--show-unique-jobs")
        }
        workers_lines = normalise(gearadmin(server, "--workers")).splitlines()
        outputs[kind]["--workers"] = sorted(line for line in workers_lines if line.endswith(": listed"))
    for flag in ("--status", "--priority-status", "--show-unique-jobs"):
        assert sorted(outputs["geartrain"][flag].splitlines()) == sorted(outputs["gearmand"][flag].splitlines()), flag
    assert outputs["geartrain"]["--show-jobs"] == outputs["gearmand"]["--show-jobs"]
    assert outputs["geartrain"]["--workers"] == outputs["gearmand"]["--workers"] == ["FD 127.0.0.1 - : listed"]


def test_gearadmin_cancel_create_drop_function(both):
    outputs = {}
    for kind, server in both.items():
        gearman(server, "-f", "victim", "-b", "payload")
        handle = gearadmin(server, "--show-jobs").split("\t")[0]
        steps = [
            gearadmin(server, "--cancel-job", handle),
            gearadmin(server, "--show-jobs"),
            gearadmin(server, "--create-function", "made"),
            gearadmin(server, "--drop-function", "made"),
        ]
        outputs[kind] = [normalise(step) for step in steps]
    ours, theirs = outputs["geartrain"], outputs["gearmand"]
    assert ours[0] == theirs[0] == "OK\n"
    assert ours[2:] == theirs[2:] == ["OK\n", "OK\n"]
    # gearmand keeps a cancelled job listed as ignored (IGNORE_JOB=1, not queued); geartrain removes it.
    assert theirs[1] == "HANDLE\t0\t1\t0\n.\n"
    assert ours[1] == ".\n"


def test_gearadmin_getpid_and_version(both):
    for kind, server in both.items():
        pid = gearadmin(server, "--getpid").strip()
        expected = server.process.pid if server.process else __import__("os").getpid()
        assert pid == str(expected), kind
        assert re.match(r"^\d+\.\d+", gearadmin(server, "--server-version").strip()), kind


def test_shutdown_admin_command_stops_geartrain_where_gearmand_1_1_20_refuses_it(gearmand_server):
    # gearadmin 1.1.20 has no --shutdown flag and Debian's gearmand answers the admin line with ERR.
    with Wire(gearmand_server.host, gearmand_server.port) as w:
        assert w.admin("shutdown").lines[0].startswith(b"ERR UNKNOWN_COMMAND")
    server = start_geartrain()
    try:
        with Wire(server.host, server.port) as w:
            assert w.admin("shutdown").lines == (b"OK",)
        end = time.monotonic() + 15
        while time.monotonic() < end:
            try:
                Wire(server.host, server.port, timeout=1).close()
            except OSError:
                break
            time.sleep(0.05)
        else:
            pytest.fail("geartrain still listens after the shutdown command")
    finally:
        server.stop()
