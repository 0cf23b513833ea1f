"""The server's per-packet path in-process: bytes into the transport's protocol objects, through the decoder and
the broker, out through the flush pass, with no sockets and no event loop.

    python benchmarks/hotpath.py [JOBS] [--profile] [--once] [--loads=foreground,background,large]
    valgrind --tool=callgrind python benchmarks/hotpath.py 20000     # instruction counts: repeatable on a busy box
    HOTPATH_SRC=/tmp/build python benchmarks/hotpath.py              # the code of another folder (a compiled build)
    python benchmarks/hotpath.py --floor                             # floor_server.py in the same shapes
    FLOOR_SRC=DIR python benchmarks/hotpath.py --floor               # ... from DIR (servers.floor_compiled_build())

Three loads, shaped as benchmarks/run.py's: `foreground` (a client pipelines 16 SUBMIT_JOB per write; a worker
answers each JOB_ASSIGN_UNIQ with WORK_COMPLETE + GRAB_JOB_UNIQ in one write), `background` (16 SUBMIT_JOB_BG
per write, then the worker drains) and `large` (one 1 MiB job at a time, its payload and its result each read as
a socket would deliver them: through get_buffer() / buffer_updated(), READ bytes at most per read; JOBS / 100 of
them). The server is built as geard builds it (app.Server, memory queue: counters, lifecycle hooks, admin), not
started. With --floor the connections are floor_server.py's (the least a Python server does per job; no `large`
shape), each read copied into its server's receive buffer as the loop does. Prints ns per job (fastest of a few
rounds); under callgrind the instruction count of the whole run is the figure to compare before and after a change
(subtract a run of 16 jobs for the start-up; the load's own client and worker, encode_request and the Sink, are
about a third of a foreground job's count).
"""

from __future__ import annotations

import cProfile
import gc
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

#: The code measured: this checkout's sources, or the folder HOTPATH_SRC names (a compiled build, an older tree).
sys.path.insert(0, os.environ.get("HOTPATH_SRC") or str(Path(__file__).resolve().parent.parent / "src"))

from geartrain.protocol import constants as C  # noqa: E402
from geartrain.protocol.codec import encode_request, pack_header  # noqa: E402
from geartrain.server import memory  # noqa: E402
from geartrain.server.app import Server  # noqa: E402
from geartrain.server.config import ServerConfig  # noqa: E402
from geartrain.server.transport import GearmanProtocol  # noqa: E402

BATCH = 16
#: Bytes per read of the large load (what uvloop's reads of geard delivered per read on loopback: about 170 KiB).
READ = 170 * 1024
LARGE = 1024 * 1024


class Sink:
    """The transport's write side: keeps the last write for the load to parse handles from."""

    def __init__(self) -> None:
        self.last: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.last.append(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.last.extend(chunks)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.last)
        self.last.clear()
        return data


class Loop:
    """call_soon without a loop: the load runs the flush itself, as the loop would at the end of the pass."""

    def __init__(self) -> None:
        self.ready: list[Any] = []

    def call_soon(self, callback: Any, *args: Any) -> None:
        self.ready.append(callback)

    def run_once(self) -> None:
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()


class FloorConn:
    """A floor_server.Conn fed as the loop feeds it: each chunk copied into get_buffer(), then buffer_updated()."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.conn.get_buffer(-1)[:len(data)] = data
        self.conn.buffer_updated(len(data))


FLOOR = "--floor" in sys.argv
if FLOOR:
    sys.path.insert(0, os.environ.get("FLOOR_SRC") or str(Path(__file__).resolve().parent))
    import floor_server


def _server() -> tuple[Any, Loop]:
    """The connections' state of a server built as geard builds it (app.Server: counters, lifecycle hooks, admin),
    memory queue, not started; or (--floor) a floor_server.Server."""
    if FLOOR:
        loop = Loop()
        return floor_server.Server(loop), loop  # type: ignore[arg-type]
    state = Server(ServerConfig(job_handle_prefix="H:bench", queue_type="memory")).state
    loop = Loop()
    state.loop = loop  # type: ignore[assignment]
    return state, loop


def _connect(state: Any) -> tuple[Any, Sink]:
    conn = floor_server.Conn(state) if FLOOR else GearmanProtocol(state)
    sink = Sink()
    conn.connection_made(sink)  # type: ignore[arg-type]
    return (FloorConn(conn) if FLOOR else conn), sink


def _handles(data: bytes, ptype: int) -> list[bytes]:
    """The first argument of every `ptype` response in a byte string."""
    out, pos = [], 0
    while pos < len(data):
        kind = int.from_bytes(data[pos + 4:pos + 8], "big")
        size = int.from_bytes(data[pos + 8:pos + 12], "big")
        body = data[pos + 12:pos + 12 + size]
        if kind == ptype:
            out.append(body.split(b"\x00", 1)[0])
        pos += 12 + size
    return out


def run(jobs: int, background: bool) -> float:
    """ns per job of one round."""
    state, loop = _server()
    client, client_sink = _connect(state)
    worker, worker_sink = _connect(state)
    worker.data_received(encode_request(C.CAN_DO, b"f"))
    submit_type = C.SUBMIT_JOB_BG if background else C.SUBMIT_JOB
    batch = b"".join(encode_request(submit_type, b"f", b"", b"x" * 64) for _ in range(BATCH))
    grab = encode_request(C.GRAB_JOB_UNIQ)
    gc.collect()
    began = time.perf_counter()
    done = 0
    while done < jobs:
        if background:
            for _ in range(max(1, jobs // BATCH)):
                client.data_received(batch)
                loop.run_once()
            client_sink.take()
            pending = jobs
        else:
            client.data_received(batch)
            loop.run_once()
            client_sink.take()
            pending = BATCH
        worker.data_received(grab)
        loop.run_once()
        for _ in range(pending):
            assigned = _handles(worker_sink.take(), C.JOB_ASSIGN_UNIQ)
            if not assigned:
                break
            worker.data_received(encode_request(C.WORK_COMPLETE, assigned[0], b"result") + grab)
            loop.run_once()
            done += 1
        worker_sink.take()
        client_sink.take()
        if background:
            break
    return (time.perf_counter() - began) / max(done, 1) * 1e9


def deliver(conn: GearmanProtocol, *chunks: bytes) -> None:
    """Hand the chunks to the connection as the loop's reads would: into its get_buffer(), READ bytes at most a
    time, reads crossing chunk boundaries."""
    views = [memoryview(chunk) for chunk in chunks]
    while views:
        space = conn.get_buffer(-1)
        room = min(len(space), READ)
        n = 0
        while views and n < room:
            take = min(room - n, len(views[0]))
            space[n:n + take] = views[0][:take]
            n += take
            views[0] = views[0][take:]
            if not views[0]:
                views.pop(0)
        conn.buffer_updated(n)


def run_large(jobs: int) -> float:
    """ns per 1 MiB job of one round (lock-step: submit, grab, assign, complete, result)."""
    memory.return_large_buffers()  # as geard does
    state, loop = _server()
    client, client_sink = _connect(state)
    worker, worker_sink = _connect(state)
    worker.data_received(encode_request(C.CAN_DO, b"f"))
    payload, result = b"p" * LARGE, b"r" * LARGE
    submit = encode_request(C.SUBMIT_JOB, b"f", b"", payload)
    grab = encode_request(C.GRAB_JOB_UNIQ)
    gc.collect()
    began = time.perf_counter()
    for _ in range(jobs):
        deliver(client, submit)
        loop.run_once()
        client_sink.last.clear()
        deliver(worker, grab)
        loop.run_once()
        handle = worker_sink.last[0][12:].split(b"\x00", 1)[0]  # JOB_ASSIGN_UNIQ's head, then its payload chunk
        assert len(worker_sink.last[-1]) == LARGE
        worker_sink.last.clear()
        deliver(worker, pack_header(C.REQ, C.WORK_COMPLETE, len(handle) + 1 + LARGE) + handle + b"\x00", result)
        loop.run_once()
        assert len(client_sink.last[-1]) == LARGE
        client_sink.last.clear()
    return (time.perf_counter() - began) / jobs * 1e9


def main(argv: list[str]) -> int:
    args = [a for a in argv[1:] if not a.startswith("--")]
    jobs = int(args[0]) if args else 20_000
    if "--profile" in argv:
        profile = cProfile.Profile()
        profile.enable()
        run(jobs, False)
        run(jobs, True)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return 0
    rounds = 1 if "--once" in argv else 5
    loads = next((a.split("=", 1)[1] for a in argv if a.startswith("--loads=")),
                 "foreground,background" if FLOOR else "foreground,background,large")
    for load in loads.split(","):
        if load == "large":
            count = max(1, jobs // 100)
            best = min(run_large(count) for _ in range(rounds))
            print(f"{load:>10}: {best:7.0f} ns/job (fastest of {rounds}, {count} jobs of 1 MiB)")
        else:
            best = min(run(jobs, load == "background") for _ in range(rounds))
            print(f"{load:>10}: {best:7.0f} ns/job (fastest of {rounds})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
