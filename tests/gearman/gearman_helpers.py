"""Helpers and fixtures for the gearman (python-gearman API) tests: threaded workers, servers on set ports.

Test modules import the fixtures from here (a second conftest.py would shadow tests/conftest.py as the
module named "conftest" that other test directories import from).
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import gearman

# tests/conftest.py, loaded by path: "conftest" in sys.modules may be another directory's conftest.
_spec = importlib.util.spec_from_file_location("_geartrain_root_conftest", Path(__file__).parent.parent / "conftest.py")
_root = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules[_spec.name] = _root  # type: ignore[union-attr]
_spec.loader.exec_module(_root)  # type: ignore[union-attr]
GEARMAND = _root.GEARMAND
RunningServer = _root.RunningServer
free_port = _root.free_port
stop_process = _root.stop_process
wait_for_port = _root.wait_for_port
start_gearmand = _root.start_gearmand
start_geartrain = _root.start_geartrain

DEADLINE = 20.0  # generous bound for anything a test waits on


def wait_until(condition: Callable[[], object], timeout: float = DEADLINE, interval: float = 0.02) -> None:
    """Poll a condition until it holds; fail the test when the deadline passes."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s: {condition}")


def dead_address() -> str:
    """A loopback address where nothing listens (connects are refused)."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(params=["geartrain", "gearmand"])
def server_kind(request) -> str:
    return request.param


@pytest.fixture
def port_servers(server_factory) -> Callable[[str, int], RunningServer]:
    """Start a server of a kind on a chosen port (to restart one where clients expect it); tests/conftest.py's
    server_factory stops every one at the end."""
    return lambda kind, port: server_factory(kind, port=port)


class WorkerThread:
    """GearmanWorker.work() in a thread, stopped through after_poll and shutdown()."""

    def __init__(self, worker: gearman.GearmanWorker, poll_timeout: float = 5.0) -> None:
        self.worker = worker
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None
        original = worker.after_poll

        def after_poll(any_activity: bool) -> bool:
            return not self.stop_flag.is_set() and original(any_activity) is not False

        worker.after_poll = after_poll  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self._run, args=(poll_timeout,), daemon=True)

    def _run(self, poll_timeout: float) -> None:
        try:
            self.worker.work(poll_timeout=poll_timeout)
        except BaseException as exc:  # reported by the fixture: work() must never die
            self.error = exc

    def start(self) -> WorkerThread:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self.worker.shutdown()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "work() did not return after shutdown()"


@pytest.fixture
def run_worker() -> Iterator[Callable[..., WorkerThread]]:
    """Start GearmanWorker.work() in a thread; stopped at the end of the test, even on failure."""
    running: list[WorkerThread] = []

    def start(worker: gearman.GearmanWorker, poll_timeout: float = 5.0) -> WorkerThread:
        thread = WorkerThread(worker, poll_timeout).start()
        running.append(thread)
        return thread

    try:
        yield start
    finally:
        for thread in running:
            thread.stop()
        for thread in running:
            assert thread.error is None, f"work() raised {thread.error!r}"


def wait_for_workers(address: str, task: str, count: int = 1) -> None:
    """Wait until the server at address lists at least count workers for task."""
    admin = gearman.GearmanAdminClient([address])

    def registered() -> bool:
        return any(row["task"] == task and row["workers"] >= count for row in admin.get_status())

    try:
        wait_until(registered)
    finally:
        admin.shutdown()


class DroppingListener:
    """A listener that accepts connections and closes them unanswered: a server that keeps failing."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._closing = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self._closing:
                conn.close()
                return
            self.accepted += 1
            conn.settimeout(5.0)
            try:
                conn.recv(4096)  # wait for the request, then hang up without an answer
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self._closing = True
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5.0)


@pytest.fixture
def dropping_listener() -> Iterator[DroppingListener]:
    listener = DroppingListener()
    try:
        yield listener
    finally:
        listener.close()
