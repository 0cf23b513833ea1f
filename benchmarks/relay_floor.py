"""The floor of the 1 MiB load: the CPU a process spends just moving its bytes through loopback sockets.

    python benchmarks/relay_floor.py                       # 300 round trips of 1 MiB, 3 rounds
    python benchmarks/relay_floor.py --jobs 500 --repeat 5 --size 65536
    python benchmarks/relay_floor.py --loop                # the relay on uvloop too (asyncio BufferedProtocol)

A job of run.py's `large` load moves 1 MiB from the client into the server, out to the worker, 1 MiB back from the
worker into the server and out to the client. Here a relay process does only that: a client process sends SIZE
bytes, the relay reads them (recv_into a buffer it reuses) and sends them on to an echo process, reads the echo's
SIZE bytes back and sends them to the client; blocking sockets, TCP_NODELAY, no framing, no event loop, no
allocation per round trip. Its user + system CPU per round trip (from /proc, as run.py's "srv CPU") is what any
server that copies a payload through its own memory pays on this machine: the kernel's copies and TCP work. Each
round runs the relay floor, then the same count of jobs of run.py's `large` load on gearmand (1.1.20) for a
comparison in the same minute. With --loop the same relay also runs as geard reads and writes, on uvloop: two
asyncio BufferedProtocols that read into one reused buffer each and write it whole to the other side once full (no
framing, no allocation per round trip): what the event loop adds to the blocking relay.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import servers  # noqa: E402
from loads import MIB, Settings, make_plan  # noqa: E402

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def per_job(before: tuple[float, float], after: tuple[float, float], jobs: int) -> tuple[float, float]:
    """User and system CPU microseconds per job between two cpu_seconds()."""
    return (after[0] - before[0]) / jobs * 1e6, (after[1] - before[1]) / jobs * 1e6


def read_exactly(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError("peer closed")
        got += n


def connected_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection, TCP_NODELAY on both."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    for sock in (a, b):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


def fork(run: object) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            run()  # type: ignore[operator]
        finally:
            os._exit(0)
    return pid


def loop_relay(front: socket.socket, back: socket.socket, size: int, jobs: int) -> None:
    """The relay on uvloop (asyncio's own loop without it) for `jobs` round trips: each side's protocol reads SIZE
    bytes into its buffer, then writes them whole to the other side."""
    import asyncio

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux CPython
        uvloop = None

    class Side(asyncio.BufferedProtocol):
        def __init__(self, done: asyncio.Future[None]) -> None:
            self.view = memoryview(bytearray(size))
            self.got = 0
            self.done = done
            self.passed = 0
            self.transport: asyncio.Transport | None = None
            self.other: Side | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def get_buffer(self, sizehint: int) -> memoryview:
            return self.view[self.got:]

        def buffer_updated(self, nbytes: int) -> None:
            self.got += nbytes
            if self.got == size:  # the other side's next SIZE bytes come only after these went through
                self.got = 0
                assert self.other is not None and self.other.transport is not None
                self.other.transport.write(self.view)
                self.passed += 1
                if self is sides[1] and self.passed == jobs and not self.done.done():
                    self.done.set_result(None)  # the last answer is on its way to the client

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.done.done():
                self.done.set_result(None)

    sides: list[Side] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        sides.extend((Side(done), Side(done)))
        sides[0].other, sides[1].other = sides[1], sides[0]
        for sock, side in zip((front, back), sides, strict=True):
            await loop.connect_accepted_socket(lambda side=side: side, sock=sock)
        await done
        for side in sides:
            assert side.transport is not None
            while side.transport.get_write_buffer_size():
                await asyncio.sleep(0.001)

    (uvloop.run if uvloop is not None else asyncio.run)(run())


def relay_round(size: int, jobs: int, event_loop: bool = False) -> tuple[float, float]:
    """User and system CPU microseconds of the relay per round trip of `size` bytes each way (with event_loop: the
    relay on uvloop, loop_relay())."""
    client_end, relay_front = connected_pair()
    relay_back, echo_end = connected_pair()
    payload = os.urandom(size)

    def echo() -> None:
        view = memoryview(bytearray(size))
        for _ in range(jobs):
            read_exactly(echo_end, view)
            echo_end.sendall(view)

    def relay() -> None:
        view = memoryview(bytearray(size))
        for _ in range(jobs):
            read_exactly(relay_front, view)
            relay_back.sendall(view)
            read_exactly(relay_back, view)
            relay_front.sendall(view)

    echo_pid = fork(echo)
    relay_pid = fork(lambda: loop_relay(relay_front, relay_back, size, jobs)) if event_loop else fork(relay)
    for sock in (relay_front, relay_back, echo_end):
        sock.close()
    before = cpu_seconds(relay_pid)
    back = memoryview(bytearray(size))
    for _ in range(jobs):
        client_end.sendall(payload)
        read_exactly(client_end, back)
    after = cpu_seconds(relay_pid)
    assert back == payload
    client_end.close()
    for pid in (relay_pid, echo_pid):
        os.waitpid(pid, 0)
    return per_job(before, after, jobs)


def gearmand_round(server: servers.RunningServer, size: int, jobs: int) -> tuple[float, float]:
    plan = make_plan(server, "la", Settings(duration=1e9), jobs=jobs, mode="foreground", clients=1, workers=1,
                     inflight=1, payload=size)
    before = cpu_seconds(server.pid)
    outcome = loadgen.run_foreground(plan)
    if outcome.errors:
        raise SystemExit(f"gearmand: {outcome.errors[:3]}")
    return per_job(before, cpu_seconds(server.pid), outcome.jobs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=MIB)
    ap.add_argument("--loop", action="store_true", help="also the relay on uvloop (asyncio BufferedProtocols)")
    args = ap.parse_args()
    floors: list[float] = []
    loops: list[float] = []
    gearmands: list[float] = []
    with servers.running(servers.SERVERS["gearmand"]) as server:
        for _ in range(args.repeat):
            floor = relay_round(args.size, args.jobs)
            floors.append(sum(floor))
            line = f"relay floor {floors[-1]:7.1f} us/job (user {floor[0]:.1f}, sys {floor[1]:.1f})   "
            if args.loop:
                on_loop = relay_round(args.size, args.jobs, event_loop=True)
                loops.append(sum(on_loop))
                line += f"on uvloop {loops[-1]:7.1f} us/job (user {on_loop[0]:.1f}, sys {on_loop[1]:.1f})   "
            gearmand = gearmand_round(server, args.size, args.jobs)
            gearmands.append(sum(gearmand))
            print(f"{line}gearmand {gearmands[-1]:7.1f} us/job (user {gearmand[0]:.1f}, sys {gearmand[1]:.1f})",
                  flush=True)
    on_loop_median = f", on uvloop {statistics.median(loops):.1f} us" if loops else ""
    print(f"median: relay floor {statistics.median(floors):.1f} us{on_loop_median}, gearmand "
          f"{statistics.median(gearmands):.1f} us ({args.jobs} jobs of {args.size} bytes per round, CPU ticks of "
          f"{1e6 / _CLK_TCK:.0f} us)")


if __name__ == "__main__":
    main()
