"""Fixtures shared by every test: real servers on ephemeral loopback ports, always stopped afterwards."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Test helper modules (wire.py, certs.py) import by name from this folder under --import-mode=importlib.
sys.path.insert(0, str(Path(__file__).resolve().parent))

GEARMAND = shutil.which("gearmand") or ("/usr/sbin/gearmand" if os.path.exists("/usr/sbin/gearmand") else None)


@dataclass
class RunningServer:
    """A server the test can reach: its kind ("geartrain" or "gearmand"), address, and a way to stop it."""

    kind: str
    host: str
    port: int
    process: subprocess.Popen | None = None
    server: object | None = None
    extra: dict = field(default_factory=dict)
    #: A temporary folder of the server's own (gearmand's pid file), removed when it stops.
    folder: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()  # type: ignore[attr-defined]
            self.server = None
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


@contextmanager
def machine_lock(folder: Path) -> Iterator[None]:
    """Hold folder's lock file: what is built once per machine in folder is built by one test run at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago (for servers that cannot listen on port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, deadline: float = 15.0, process: subprocess.Popen | None = None) -> None:
    """Wait until a TCP connect succeeds; fail early when the process died."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {deadline}s")


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop a process we started, by its PID: SIGTERM, then SIGKILL if it does not go."""
    if process.poll() is None:
        try:
            process.send_signal(sig)
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def _start_process(kind: str, command, host: str, port: int | None, stdout=subprocess.DEVNULL) -> RunningServer:
    """Start a server process on `port` (or a free one) and wait until it listens.

    A fixed port may still be held for a moment by the server it replaces: then keep trying for a while.
    """
    last: Exception | None = None
    for _ in range(5 if port is None else 50):
        chosen = free_port(host) if port is None else port
        process = subprocess.Popen(command(chosen), stdout=stdout, stderr=subprocess.PIPE)
        try:
            wait_for_port(host, chosen, process=process)
            return RunningServer(kind, host, chosen, process=process)
        except (RuntimeError, TimeoutError) as exc:
            last = exc
            stop_process(process)
            if port is not None:
                time.sleep(0.1)
    raise RuntimeError(f"{kind} did not start: {last}")


def start_gearmand(*extra: str, host: str = "127.0.0.1", port: int | None = None) -> RunningServer:
    """Start Debian's gearmand on a loopback port (an ephemeral one unless `port` is given)."""
    if GEARMAND is None:
        pytest.fail("gearmand is not installed: apt-get install gearman-job-server (.ci/run does)")
    # Never "-P /dev/null": gearmand unlinks its pid file when it exits.
    folder = tempfile.mkdtemp(prefix="gearmand-")
    pidfile = os.path.join(folder, "gearmand.pid")
    try:
        server = _start_process(
            "gearmand",
            lambda p: [GEARMAND, "-p", str(p), "-L", host, "-l", "none", "-P", pidfile, "-t", "2", *extra],
            host, port)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    server.folder = folder
    return server


def start_geartrain(host: str = "127.0.0.1", port: int | None = None, **options) -> RunningServer:
    """Start geartrain's server in this process, in a thread, on `port` (default: an ephemeral one)."""
    from geartrain.server import Server, ServerConfig

    last: Exception | None = None
    for _ in range(1 if port is None else 50):
        server = Server(ServerConfig(listen=[(host, port or 0)], **options))
        try:
            server.start_in_thread()
            return RunningServer("geartrain", host, server.port, server=server)
        except OSError as exc:  # the previous server on this port has not let go of it yet
            last = exc
            time.sleep(0.1)
    raise RuntimeError(f"geartrain could not listen on {host}:{port}: {last}")


def start_geard_process(*args: str, host: str = "127.0.0.1", port: int | None = None) -> RunningServer:
    """Start geartrain's `geard` command as a subprocess in the foreground on a loopback port.

    Without a queue option in args it runs in memory, so tests never share geard's default SQLite file.
    """
    if not any(a.startswith(("--queue-type", "-q", "--sqlite-db", "--libsqlite3-db")) for a in args):
        args = ("--queue-type", "memory", *args)
    return _start_process(
        "geard",
        lambda p: [sys.executable, "-m", "geartrain.server.cli", "-d", "--listen-address", host, "-p", str(p), *args],
        host, port, stdout=subprocess.PIPE)


@pytest.fixture
def geartrain_server() -> Iterator[RunningServer]:
    server = start_geartrain()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gearmand_server() -> Iterator[RunningServer]:
    server = start_gearmand()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["geartrain", "gearmand"])
def any_server(request) -> Iterator[RunningServer]:
    """The same test against geartrain's server and against gearmand."""
    server = start_geartrain() if request.param == "geartrain" else start_gearmand()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def stopping_all(start: Callable, stop: Callable = lambda thing: thing.stop()) -> Iterator[Callable]:
    """A factory fixture's body: `start` wrapped so that everything it started is stopped (last first) when the
    block ends, even on failure."""
    started: list = []

    def make(*args, **kwargs):
        thing = start(*args, **kwargs)
        started.append(thing)
        return thing

    try:
        yield make
    finally:
        for thing in reversed(started):
            stop(thing)


def _start_any(kind: str = "geartrain", *args, **kwargs) -> RunningServer:
    if kind == "geartrain":
        return start_geartrain(**kwargs)
    if kind == "gearmand":
        return start_gearmand(*args, **kwargs)
    if kind == "geard":
        return start_geard_process(*args, **kwargs)
    raise ValueError(kind)


@pytest.fixture
def server_factory() -> Iterator:
    """Start any number of servers in a test; all are stopped at the end, even on failure."""
    with stopping_all(_start_any) as make:
        yield make


REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def postgres_server() -> Iterator:
    """A throwaway PostgreSQL server for the whole session (tests/pgserver.py); removed even on failure."""
    from pgserver import missing, running

    why = missing()
    if why is not None:
        pytest.skip(why)
    with running() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server) -> str:
    """The DSN of a fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.new_database()
