"""statsd metrics with gear's keys and kinds, received on a real UDP socket, from geard and gear.Server."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

import gear
from geartrain.protocol import constants as C

from conftest import start_geard_process
from wire import Wire

WAIT = 30.0


class StatsdSink:
    """A UDP socket standing in for statsd: collects the lines of every datagram it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []

    def wait_for(self, *wanted: str) -> list[str]:
        """Receive until a line starts with each of `wanted` (or fail after WAIT seconds)."""
        deadline = time.monotonic() + WAIT
        while not all(any(line.startswith(w) for line in self.lines) for w in wanted):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"statsd never received {wanted}; got {self.lines}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.lines.extend(data.decode("ascii").split("\n"))
        return self.lines

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sink() -> Iterator[StatsdSink]:
    sink = StatsdSink()
    try:
        yield sink
    finally:
        sink.close()


def run_one_job(host: str, port: int) -> None:
    with Wire(host, port, WAIT) as client, Wire(host, port, WAIT) as worker:
        handle = client.submit(b"counted", b"x")
        worker.register(b"counted")
        assert worker.grab(WAIT).args[0] == handle
        worker.send(C.WORK_COMPLETE, handle, b"done")
        client.expect(C.WORK_COMPLETE, WAIT)


def values(lines: list[str], key: str, kind: str) -> list[float]:
    return [float(line.split(":", 1)[1].split("|")[0]) for line in lines
            if line.startswith(key + ":") and line.split("|")[1] == kind]


def check_gear_keys(lines: list[str], prefix: str) -> None:
    for gauge in ("queue.total", "queue.running", "queue.waiting"):
        assert values(lines, f"{prefix}.{gauge}", "g"), gauge
    assert sum(values(lines, f"{prefix}.packet.SUBMIT_JOB", "c")) == 1
    assert sum(values(lines, f"{prefix}.packet.WORK_COMPLETE", "c")) == 1
    assert sum(values(lines, f"{prefix}.packet.CAN_DO", "c")) == 1
    assert all(t >= 0 for t in values(lines, f"{prefix}.packet.SUBMIT_JOB", "ms"))
    assert values(lines, f"{prefix}.packet.SUBMIT_JOB", "ms")


def test_geard_sends_gears_keys_to_statsd(sink):
    server = start_geard_process("--statsd-host", "127.0.0.1", "--statsd-port", str(sink.port),
                                 "--statsd-prefix", "geard")
    try:
        run_one_job(server.host, server.port)
        lines = sink.wait_for("geard.packet.WORK_COMPLETE:", "geard.packet.SUBMIT_JOB:", "geard.queue.total:")
        check_gear_keys(lines, "geard")
        # The job is done: a later send says the queue is empty.
        sink.lines.clear()
        total = values(sink.wait_for("geard.queue.total:"), "geard.queue.total", "g")
        assert total[-1] == 0
    finally:
        server.stop()


def test_geard_reads_statsd_from_gears_environment_variables(sink, monkeypatch):
    monkeypatch.setenv("STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("STATSD_PORT", str(sink.port))
    monkeypatch.setenv("STATSD_PREFIX", "fromenv")
    server = start_geard_process()
    try:
        with Wire(server.host, server.port, WAIT) as client:
            client.submit(b"queued", b"x", ptype=C.SUBMIT_JOB_BG)
            lines = sink.wait_for("fromenv.packet.SUBMIT_JOB_BG:", "fromenv.queue.waiting:")
        assert values(lines, "fromenv.queue.waiting", "g")[-1] == 1
        assert values(lines, "fromenv.queue.running", "g")[-1] == 0
    finally:
        server.stop()


@pytest.mark.parametrize("hooked", [False, True], ids=["engine", "gear-model"])
def test_gear_server_sends_gears_keys_to_statsd(sink, hooked):
    class Hooked(gear.Server):
        def getJobForConnection(self, connection, peek=False):
            return super().getJobForConnection(connection, peek)

    cls = Hooked if hooked else gear.Server
    server = cls(0, host="127.0.0.1", statsd_host="127.0.0.1", statsd_port=sink.port, statsd_prefix="zuul.gearman")
    try:
        assert server.statsd is not None  # gear's attribute: the statsd client
        run_one_job("127.0.0.1", server.port)
        server.shutdown()  # what was counted since the last send goes out as the server stops
        lines = sink.wait_for("zuul.gearman.packet.WORK_COMPLETE:", "zuul.gearman.packet.SUBMIT_JOB:")
        check_gear_keys(lines, "zuul.gearman")
    finally:
        server.shutdown()


def test_without_statsd_nothing_is_instrumented(monkeypatch):
    from geartrain.server import Server, ServerConfig
    from geartrain.server.cli import build_parser, config_from_args

    for name in ("STATSD_HOST", "STATSD_PORT", "STATSD_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    config = config_from_args(build_parser().parse_args(["--queue-type", "memory"]))
    assert (config.statsd_host, config.statsd_port, config.statsd_prefix) == (None, 8125, None)
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)]))
    assert server.statsd is None
    handler = server.broker.handlers[C.SUBMIT_JOB]  # the broker's own handler, unwrapped: a closure compiled or not
    name = getattr(handler, "__qualname__", type(handler).__name__)
    assert "submit" in name and "counted" not in name, name
