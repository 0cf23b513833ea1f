"""Helpers for the asyncio client tests: a server that restarts on the same port, a worker running in a task,
a proxy that swallows the first submit, and bounded waits on conditions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable

from geartrain.client import Worker
from geartrain.protocol import Decoder, Packet, encode_request
from geartrain.protocol import constants as C
from geartrain.protocol.constants import REQ

from conftest import GEARMAND, RunningServer, free_port, stop_process, wait_for_port

DEADLINE = 30.0


class RestartableServer:
    """A geartrain (in-process) or gearmand server that can be stopped and started again on one fixed port."""

    def __init__(self, kind: str, host: str = "127.0.0.1") -> None:
        self.kind = kind
        self.host = host
        self.port = free_port(host)
        self.current: RunningServer | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        assert self.current is None
        if self.kind == "geartrain":
            from geartrain.server import Server, ServerConfig

            server = Server(ServerConfig(listen=[(self.host, self.port)]))
            server.start_in_thread()
            self.current = RunningServer("geartrain", self.host, self.port, server=server)
            return
        if GEARMAND is None:
            raise RuntimeError("gearmand is not installed")
        folder = tempfile.mkdtemp(prefix="gearmand-")
        pidfile = os.path.join(folder, "gearmand.pid")
        cmd = [GEARMAND, "-p", str(self.port), "-L", self.host, "-l", "none", "-P", pidfile, "-t", "2"]
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_port(self.host, self.port, process=process)
        except BaseException:
            stop_process(process)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.current = RunningServer("gearmand", self.host, self.port, process=process, folder=folder)

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


async def eventually(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Wait (bounded) until a condition observed from the outside holds, yielding to the loop in between."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_worker(
    servers: list[str], functions: dict[str, Callable], concurrency: int = 1, client_id: str | None = None,
    connected: int | None = None, prefetch: bool = False,
) -> AsyncIterator[Worker]:
    """A Worker running in a task for the duration of the block, always stopped afterwards."""
    worker = Worker(servers, client_id=client_id, prefetch=prefetch)
    for name, handler in functions.items():
        worker.register(name, handler)
    task = asyncio.create_task(worker.run(concurrency=concurrency))
    try:
        await worker.wait_connected(connected, timeout=DEADLINE)
        yield worker
    finally:
        await asyncio.wait_for(worker.stop(timeout=DEADLINE), DEADLINE * 2)
        await asyncio.wait_for(task, DEADLINE)


class SubmitSwallowingProxy:
    """A TCP proxy to a server whose FIRST connection drops, unanswered, at the first SUBMIT_JOB it carries.

    That makes a submit that was sent but never acknowledged, deterministically; later connections are piped.
    With ``garbage`` the first connection answers that submit with undecodable bytes and stays open instead.
    """

    GARBAGE = b"\x00XYZ" + b"\xff" * 20

    def __init__(self, target_host: str, target_port: int, garbage: bool = False) -> None:
        self.target = (target_host, target_port)
        self.garbage = garbage
        self.connections = 0
        self.swallowed = 0
        self.server: asyncio.base_events.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self._writers:
            writer.close()
        if self.server is not None:
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        first = self.connections == 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        async def upstream() -> None:
            decoder = Decoder(accept=REQ)
            while data := await reader.read(65536):
                if not first:
                    up_writer.write(data)
                else:
                    for event in decoder.feed(data):
                        assert type(event) is Packet, event
                        if event.ptype == C.SUBMIT_JOB:
                            self.swallowed += 1
                            if self.garbage:
                                await up_writer.drain()
                                writer.write(self.GARBAGE)
                                await writer.drain()
                                await reader.read()  # until the client hangs up on the garbage
                            return
                        up_writer.write(encode_request(event.ptype, *event.args))
                await up_writer.drain()

        down = asyncio.create_task(downstream())
        try:
            await upstream()
        except (ConnectionError, OSError):
            pass
        finally:
            down.cancel()
            with contextlib.suppress(BaseException):
                await down
            writer.close()
            up_writer.close()
