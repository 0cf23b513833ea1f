"""A benchmark floor, not a product: the least a Gearman job server in Python on uvloop does to serve run.py's
`foreground`, `lockstep` and `background` loads correctly.

    python benchmarks/floor_server.py -p PORT [--listen-address 127.0.0.1]

It is geard's transport with every feature removed, so that geard's CPU per job can be set against the least a
Python server on the same loop spends: the same uvloop, one asyncio BufferedProtocol per connection reading into
one receive buffer of the server (transport.READ_SIZE), TCP_NODELAY through geartrain.sockets.tune, a peer's own
answers written at the end of its read and what it caused for other peers written once per loop pass, and the
same collector settings as geard (geartrain.server.collector).

What it does: binary request packets only (no admin protocol, no text lines: a stream that is not a request
packet is closed); CAN_DO, PRE_SLEEP, GRAB_JOB / GRAB_JOB_UNIQ / GRAB_JOB_ALL, SUBMIT_JOB, SUBMIT_JOB_BG and
WORK_COMPLETE; any other packet gets an ERROR. One normal priority, a dict function -> deque of queued jobs, a dict
function -> set of sleeping workers, a dict handle -> the waiting client, handles b"H:" + a counter. A queued job is
its handle and the SUBMIT body as it came (function, unique, data), which with its handle in front is the body of
JOB_ASSIGN_UNIQ; a WORK_COMPLETE's body is relayed to the client as it came. One NOOP wakes one sleeping worker per
job queued.

What it leaves out, and geard does: unique coalescing, priorities, GET_STATUS and the other requests, the admin
protocol, a job's worker (a worker that disconnects loses its job: no requeue), limits, validation of names,
timeouts, counters, logging, the durable queue, flow control, TLS. The 1 MiB load runs, but its bodies are joined
piece by piece (no direct reads into the payload): it is no floor of that load (relay_floor.py is).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
from collections import deque
from typing import Any, Final

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux CPython
    uvloop = None

from geartrain.protocol import constants as C
from geartrain.server.collector import tune_collector
from geartrain.sockets import tune

READ_SIZE: Final = 256 * 1024 - 4096  # geard's (transport.READ_SIZE)
HEADER: Final = struct.Struct(">III")
REQ_MAGIC: Final = 0x00524551  # b"\0REQ"
RES_MAGIC: Final = 0x00524553  # b"\0RES"

# The packet types it handles, read once from the protocol's constants into names a compiled build keeps as statics.
CAN_DO: Final = C.CAN_DO
PRE_SLEEP: Final = C.PRE_SLEEP
NOOP: Final = C.NOOP
SUBMIT_JOB: Final = C.SUBMIT_JOB
JOB_CREATED: Final = C.JOB_CREATED
GRAB_JOB: Final = C.GRAB_JOB
NO_JOB: Final = C.NO_JOB
JOB_ASSIGN: Final = C.JOB_ASSIGN
WORK_COMPLETE: Final = C.WORK_COMPLETE
ERROR: Final = C.ERROR
SUBMIT_JOB_BG: Final = C.SUBMIT_JOB_BG
GRAB_JOB_UNIQ: Final = C.GRAB_JOB_UNIQ
JOB_ASSIGN_UNIQ: Final = C.JOB_ASSIGN_UNIQ
GRAB_JOB_ALL: Final = C.GRAB_JOB_ALL

NOOP_PACKET: Final = HEADER.pack(RES_MAGIC, NOOP, 0)
NO_JOB_PACKET: Final = HEADER.pack(RES_MAGIC, NO_JOB, 0)
UNKNOWN: Final = b"UNKNOWN_COMMAND\x00the floor server takes no such request"
ERROR_PACKET: Final = HEADER.pack(RES_MAGIC, ERROR, len(UNKNOWN)) + UNKNOWN


class Server:
    """What the connections share: the queues, the sleepers, the waiting clients and the write batching."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.read_view = memoryview(bytearray(READ_SIZE))
        self.queues: dict[bytes, deque[tuple[bytes, bytes]]] = {}  # function -> (handle, SUBMIT body)
        self.sleepers: dict[bytes, set[Conn]] = {}
        self.clients: dict[bytes, Conn | None] = {}  # handle -> its client (None: a background job)
        self.counter = 0
        self.dirty: list[Conn] = []  # other peers with output, written at the end of the loop pass
        self.flush_scheduled = False

    def flush(self) -> None:
        self.flush_scheduled = False
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            out = conn.out
            if out:
                conn.out = []
                if conn.transport is not None:
                    conn.transport.write(out[0] if len(out) == 1 else b"".join(out))


class Conn(asyncio.BufferedProtocol):
    """One connection: its requests handled in one function, its answers written at the end of its read."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.rest = b""  # the start of a packet not whole yet
        self.out: list[bytes] = []
        self.abilities: list[bytes] = []
        self.sleeping = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        tune(transport.get_extra_info("socket"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.sleeping = False

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.read_view

    def buffer_updated(self, nbytes: int) -> None:
        server = self.server
        chunk = bytes(server.read_view[:nbytes])
        if self.rest:
            chunk = self.rest + chunk
        queues = server.queues
        out = self.out
        dirty = server.dirty
        unpack_from = HEADER.unpack_from
        pack = HEADER.pack
        n = len(chunk)
        pos = 0
        while n - pos >= 12:
            magic, ptype, size = unpack_from(chunk, pos)
            end = pos + 12 + size
            if end > n:
                break
            body = chunk[pos + 12:end]
            pos = end
            if magic != REQ_MAGIC:
                if self.transport is not None:
                    self.transport.close()
                return
            if ptype == WORK_COMPLETE:
                client = server.clients.pop(body[:body.index(b"\x00")], None)
                if client is not None and client.transport is not None:
                    if not client.out and client is not self:
                        dirty.append(client)
                    client.out.append(pack(RES_MAGIC, WORK_COMPLETE, size) + body)
            elif ptype == GRAB_JOB_UNIQ or ptype == GRAB_JOB_ALL or ptype == GRAB_JOB:
                self.sleeping = False
                for name in self.abilities:
                    queue = queues.get(name)
                    if queue:
                        handle, job = queue.popleft()
                        if ptype == GRAB_JOB:
                            name, _, rest = job.split(b"\x00", 2)
                            job = name + b"\x00" + rest
                            out.append(pack(RES_MAGIC, JOB_ASSIGN, len(handle) + 1 + len(job)) + handle + b"\x00"
                                       + job)
                        else:
                            out.append(pack(RES_MAGIC, JOB_ASSIGN_UNIQ, len(handle) + 1 + len(job)) + handle
                                       + b"\x00" + job)
                        break
                else:
                    out.append(NO_JOB_PACKET)
            elif ptype == SUBMIT_JOB or ptype == SUBMIT_JOB_BG:
                server.counter += 1
                handle = b"H:%d" % server.counter
                name = body[:body.index(b"\x00")]
                server.clients[handle] = self if ptype == SUBMIT_JOB else None
                out.append(pack(RES_MAGIC, JOB_CREATED, len(handle)) + handle)
                queue = queues.get(name)
                if queue is None:
                    queue = queues[name] = deque()
                queue.append((handle, body))
                sleepers = server.sleepers.get(name)
                while sleepers:
                    worker = sleepers.pop()
                    if worker.sleeping:
                        worker.sleeping = False
                        if not worker.out and worker is not self:
                            dirty.append(worker)
                        worker.out.append(NOOP_PACKET)
                        break
            elif ptype == PRE_SLEEP:
                for name in self.abilities:
                    if queues.get(name):
                        out.append(NOOP_PACKET)
                        break
                else:
                    self.sleeping = True
                    for name in self.abilities:
                        server.sleepers.setdefault(name, set()).add(self)
            elif ptype == CAN_DO:
                if body not in self.abilities:
                    self.abilities.append(body)
            else:
                out.append(ERROR_PACKET)
        self.rest = chunk[pos:] if pos < n else b""
        if out and self.transport is not None:
            self.out = []
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        if dirty and not server.flush_scheduled:
            server.flush_scheduled = True
            server.loop.call_soon(server.flush)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = Server(loop)
    listener = await loop.create_server(lambda: Conn(server), host, port, reuse_address=True, backlog=1024)
    tune_collector()
    await listener.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the floor server (a benchmark, not a product)")
    parser.add_argument("-p", "--port", type=int, default=4730)
    parser.add_argument("--listen-address", default="127.0.0.1")
    args = parser.parse_args(argv)
    if uvloop is not None:
        uvloop.run(serve(args.listen_address, args.port))
    else:
        asyncio.run(serve(args.listen_address, args.port))


if __name__ == "__main__":
    main(sys.argv[1:])
