"""One side of a client-library ("face") measurement, run by faces.py under a chosen interpreter.

It imports only the library under test (``gear`` or ``gearman``), so the same file measures this checkout's
faces and the originals installed in throwaway virtualenvs (``geartrain`` is this checkout's asyncio
geartrain.client, ``floor`` gear's thread model alone on the protocol codec, ``asyncio-floor`` the least an asyncio
client and worker do per job on the same codec). Two roles, each in its own process:

- ``worker``: registers the function, prints ``ready`` and answers every job with its data reversed until it
  is terminated (SIGTERM from faces.py); ``--prefetch`` turns on the worker's prefetch (this checkout's gear, gearman
  and geartrain workers only);
- ``client``: submits jobs ``--batch`` at a time and waits for each batch, checks every result, and prints one
  JSON line (jobs, seconds, its own CPU time, errors).

    python face_script.py --api gear --role worker --port 4730 --function f [--prefetch]
    python face_script.py --api gear --role client --port 4730 --function f --jobs 2000 --batch 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

HOST = "127.0.0.1"
_ALPHABET = b"abcdefghijklmnopqrstuvwxyz0123456789"
_BLOCKS: dict[int, bytes] = {}


def payload(seq: int, size: int) -> bytes:
    """``size`` ASCII bytes that start with the job's number (ASCII so that str-only forks carry them too)."""
    block = _BLOCKS.get(size)
    if block is None:
        block = _BLOCKS[size] = bytes(random.Random(size).choices(_ALPHABET, k=size))
    head = b"%08d-" % seq
    return head + block[len(head):size]


def run_client(api: str, port: int, function: str, jobs: int, batch: int, size: int, duration: float,
               timeout: float, task_bytes: bool) -> dict[str, object]:
    submit = {"gear": GearFace, "gear-batch": GearBatchFace, "gearman": GearmanFace, "geartrain": GeartrainFace,
              "floor": FloorFace, "asyncio-floor": AsyncioFloorFace}[api]
    errors: list[str] = []
    done = 0

    def batches(stop_at: float) -> Iterator[list[tuple[int, bytes]]]:
        seq = 0
        while seq < jobs and time.monotonic() < stop_at and not errors:
            specs = [(s, payload(s, size)) for s in range(seq, min(seq + batch, jobs))]
            seq += len(specs)
            yield specs

    def check(specs: list[tuple[int, bytes]], results: list[bytes | str]) -> None:
        nonlocal done
        for (s, data), result in zip(specs, results, strict=True):
            if isinstance(result, str):
                errors.append(f"job {s}: {result}")
            elif result != data[::-1]:
                errors.append(f"job {s}: wrong result {result[:40]!r}")
            else:
                done += 1

    with submit(port, function, timeout, task_bytes) as face:
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        face.run_all(batches(time.monotonic() + duration), check)
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    return {"jobs": done, "seconds": seconds, "cpu": cpu, "errors": errors[:5]}


Specs = list[tuple[int, bytes]]


class Face:
    """A connected client of one library: ``with Face(...) as face``, then run_all(); closed on the way out."""

    def __enter__(self) -> Face:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_all(self, batches: Iterable[Specs], check: Callable[[Specs, list[bytes | str]], None]) -> None:
        """Run every batch in turn, handing each one's results to check()."""
        for specs in batches:
            check(specs, self.run(specs))

    def run(self, specs: Specs) -> list[bytes | str]:
        """Submit the batch, wait for it, return each job's result bytes or a description of its failure."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class GearFace(Face):
    """gear.Client: submitJob() for each job of a batch, then wait for their WORK_COMPLETE."""

    def __init__(self, port: int, function: str, timeout: float, task_bytes: bool) -> None:
        import gear

        self.function, self.timeout = function, timeout
        # Jobs of the batch not yet ended; the poll thread counts them down and sets `done` at zero.
        self.left = 0
        self.done = threading.Event()
        face = self

        def ended() -> None:
            face.left -= 1
            if face.left == 0:
                face.done.set()

        class Client(gear.Client):
            def handleWorkComplete(self, packet):  # noqa: N802 - gear's hook name
                job = super().handleWorkComplete(packet)
                ended()
                return job

            def handleWorkFail(self, packet):  # noqa: N802
                job = super().handleWorkFail(packet)
                ended()
                return job

        self.gear = gear
        self.client = Client("bench-client")
        self.client.addServer(HOST, port)
        self.client.waitForServer(timeout)

    def close(self) -> None:
        self.client.shutdown()

    def submit(self, group: list) -> None:
        for job in group:
            self.client.submitJob(job, timeout=self.timeout)

    def run(self, specs: Specs) -> list[bytes | str]:
        group = [self.gear.Job(self.function, data, unique=f"u{s}".encode()) for s, data in specs]
        self.done.clear()
        self.left = len(group)
        self.submit(group)
        self.done.wait(self.timeout)
        return [b"".join(j.data) if j.complete and not j.failure
                else "failed" if j.complete else f"no result within the {self.timeout:g} s limit"
                for j in group]


class GearBatchFace(GearFace):
    """gear.Client.submitJobs() (this checkout's addition: the batch pipelined), then wait for the results."""

    def submit(self, group: list) -> None:
        self.client.submitJobs(group, timeout=self.timeout)


class GearmanFace(Face):
    """GearmanClient: submit_job() for a batch of one, submit_multiple_jobs() for larger batches."""

    def __init__(self, port: int, function: str, timeout: float, task_bytes: bool) -> None:
        import gearman

        self.gearman = gearman
        self.task: str | bytes = function.encode() if task_bytes else function
        self.timeout = timeout
        self.client = gearman.GearmanClient([f"{HOST}:{port}"])

    def close(self) -> None:
        self.client.shutdown()

    def run(self, specs: Specs) -> list[bytes | str]:
        # poll_timeout is always given: pygearman 0.2.6 returns at JOB_CREATED, without waiting for the
        # result, when it is None (its submit_multiple_requests tests `time_remaining is not None`).
        if len(specs) == 1:
            s, data = specs[0]
            requests = [self.client.submit_job(self.task, data, unique=f"u{s}", poll_timeout=self.timeout)]
        else:
            requests = self.client.submit_multiple_jobs(
                [{"task": self.task, "data": data, "unique": f"u{s}"} for s, data in specs],
                poll_timeout=self.timeout,
            )
        results: list[bytes | str] = []
        for req in requests:
            result = req.result
            if req.state != self.gearman.JOB_COMPLETE:
                results.append(f"state {req.state}")
            else:
                results.append(result.encode() if isinstance(result, str) else result)
        return results


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _Reader:
    """A socket with a daemon thread that decodes what arrives and hands each packet to ``on_packet``: the
    reading half of gear's thread model, with nothing of gear in it."""

    def __init__(self, port: int, on_packet: Callable[[object], None]) -> None:
        import socket

        from geartrain.protocol import Decoder

        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = Decoder(accept=b"\0RES")
        self.on_packet = on_packet
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            for packet in self.decoder.feed(data):
                self.on_packet(packet)


class FloorFace(Face):
    """gear's thread model alone ("gear thread floor"): submits one at a time, each waiting on a lock that a
    reader thread releases at its JOB_CREATED, then waits for the batch's WORK_COMPLETEs. What a gear-shaped
    client costs at least, against which geartrain's gear is measured."""

    def __init__(self, port: int, function: str, timeout: float, task_bytes: bool) -> None:
        from geartrain.protocol import constants

        self.c = constants
        self.prefix = function.encode() + b"\0"
        self.timeout = timeout
        self.created: list = []  # (lock, slot) of the submit awaiting its JOB_CREATED
        self.slots: dict[bytes, list] = {}  # handle -> [result]
        self.left = 0
        self.done = threading.Event()
        self.reader = _Reader(port, self._packet)

    def _packet(self, packet: object) -> None:
        ptype, args = packet.ptype, packet.args  # type: ignore[attr-defined]
        if ptype == self.c.JOB_CREATED:
            lock, slot = self.created.pop(0)
            self.slots[args[0]] = slot
            lock.release()
        elif ptype == self.c.WORK_COMPLETE:
            self.slots.pop(args[0]).append(args[1])
            self.left -= 1
            if self.left == 0:
                self.done.set()

    def close(self) -> None:
        self.reader.sock.close()

    def run(self, specs: list[tuple[int, bytes]]) -> list[bytes | str]:
        from geartrain.protocol import pack

        slots: list[list] = [[] for _ in specs]
        self.done.clear()
        self.left = len(specs)
        for (s, data), slot in zip(specs, slots, strict=True):
            lock = threading.Lock()
            lock.acquire()
            self.created.append((lock, slot))
            self.reader.sock.sendall(pack(b"\0REQ", self.c.SUBMIT_JOB, self.prefix + b"u%d\0" % s + data))
            lock.acquire()
        self.done.wait(self.timeout)
        return [slot[0] if slot else f"no result within the {self.timeout:g} s limit" for slot in slots]


def run_floor_worker(port: int, function: str) -> None:
    """gear's Worker thread model alone: a reader thread queues each JOB_ASSIGN_UNIQ for this thread, which
    answers it and asks for the next (the reader answers NO_JOB with PRE_SLEEP and NOOP with a grab)."""
    import queue

    from geartrain.protocol import constants as c
    from geartrain.protocol import pack

    grab, pre_sleep = pack(b"\0REQ", c.GRAB_JOB_UNIQ, b""), pack(b"\0REQ", c.PRE_SLEEP, b"")
    jobs: queue.SimpleQueue = queue.SimpleQueue()

    def on_packet(packet: object) -> None:
        ptype = packet.ptype  # type: ignore[attr-defined]
        if ptype == c.JOB_ASSIGN_UNIQ:
            jobs.put(packet.args)  # type: ignore[attr-defined]
        elif ptype == c.NO_JOB:
            reader.sock.sendall(pre_sleep)
        elif ptype == c.NOOP:
            reader.sock.sendall(grab)

    reader = _Reader(port, on_packet)
    reader.sock.sendall(pack(b"\0REQ", c.CAN_DO, function.encode()) + grab)
    print("ready", flush=True)
    while True:
        handle, _name, _unique, data = jobs.get()
        reader.sock.sendall(pack(b"\0REQ", c.WORK_COMPLETE, handle + b"\0" + data[::-1]) + grab)


class GeartrainFace(Face):
    """geartrain.client.Client (asyncio): every job of a batch submitted at once (pipelined), then awaited; the
    batches run in one coroutine, as in an asyncio program (not one run_until_complete per batch)."""

    def __init__(self, port: int, function: str, timeout: float, task_bytes: bool) -> None:
        from geartrain.client import Client

        self.function, self.timeout = function, timeout
        self.loop = _event_loop()
        self.client = Client([(HOST, port)])
        self.loop.run_until_complete(self.client.connect())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()

    def run_all(self, batches: Iterable[Specs], check: Callable[[Specs, list[bytes | str]], None]) -> None:
        async def run_all() -> None:
            for specs in batches:
                check(specs, await self.batch(specs))

        self.loop.run_until_complete(run_all())

    async def batch(self, specs: Specs) -> list[bytes | str]:
        if len(specs) == 1 and hasattr(asyncio, "timeout"):  # one job: awaited in this task, as a program would
            s, data = specs[0]
            try:
                async with asyncio.timeout(self.timeout):
                    return [await self.client.run(self.function, data, unique=f"u{s}")]
            except Exception as exc:
                return [f"{type(exc).__name__}: {exc}"]
        runs = asyncio.gather(*(self.client.run(self.function, data, unique=f"u{s}") for s, data in specs),
                              return_exceptions=True)
        results = await asyncio.wait_for(runs, self.timeout)  # one time limit for the batch, as the others
        return [r if isinstance(r, bytes) else f"{type(r).__name__}: {r}" for r in results]


class _FloorClient(asyncio.Protocol):
    """The least an asyncio client does per job ("asyncio floor"): a future per job, resolved from the raw
    protocol (geartrain.protocol's Decoder), awaited by the caller's coroutine; submits buffered and written once
    per loop pass. It stands in for geartrain.client.Client in GeartrainFace, so the batches run the same
    coroutines, Tasks (gather) and time limits: the shape geartrain.client's API imposes, without the client."""

    def __init__(self, port: int) -> None:
        from geartrain.protocol import Decoder, constants, pack

        self.port, self.c, self.pack = port, constants, pack
        self.decoder = Decoder(accept=b"\0RES")
        self.awaiting: deque[asyncio.Future[bytes]] = deque()  # submits awaiting their JOB_CREATED, in order
        self.running: dict[bytes, asyncio.Future[bytes]] = {}  # handle -> the job's future
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    async def connect(self) -> None:
        await asyncio.get_running_loop().create_connection(lambda: self, HOST, self.port)

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from geartrain.sockets import tune

        self.transport = transport  # type: ignore[assignment]
        tune(transport.get_extra_info("socket"))

    def connection_lost(self, exc: Exception | None) -> None:
        for future in [*self.awaiting, *self.running.values()]:
            if not future.done():
                future.set_exception(ConnectionError(f"connection lost: {exc}"))

    def _flush(self) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(self.out))
        self.out.clear()

    async def run(self, function: str, data: bytes, unique: str) -> bytes:
        future = asyncio.get_running_loop().create_future()
        self.awaiting.append(future)
        if not self.out:
            asyncio.get_running_loop().call_soon(self._flush)
        self.out.append(self.pack(b"\0REQ", self.c.SUBMIT_JOB, b"%s\0%s\0%s" % (function.encode(), unique.encode(),
                                                                              data)))
        return await future

    def data_received(self, data: bytes) -> None:
        c = self.c
        for packet in self.decoder.feed(data):
            ptype, args = packet.ptype, packet.args  # type: ignore[union-attr]
            if ptype == c.JOB_CREATED:
                self.running[args[0]] = self.awaiting.popleft()
            elif ptype == c.WORK_COMPLETE:
                self.running.pop(args[0]).set_result(args[1])
            elif ptype in (c.WORK_FAIL, c.WORK_EXCEPTION, c.ERROR):
                self.running.pop(args[0]).set_exception(RuntimeError(f"packet type {ptype}"))


class AsyncioFloorFace(GeartrainFace):
    """GeartrainFace's batches on _FloorClient instead of geartrain.client.Client."""

    def __init__(self, port: int, function: str, timeout: float, task_bytes: bool) -> None:
        self.function, self.timeout = function, timeout
        self.loop = _event_loop()
        self.client = _FloorClient(port)  # type: ignore[assignment]
        self.loop.run_until_complete(self.client.connect())


class _FloorWorker(asyncio.Protocol):
    """The least an asyncio worker does per job: a Task per job that awaits the handler (a coroutine) and writes
    its WORK_COMPLETE and the next grab in one write; the raw protocol's GRAB / NO_JOB / PRE_SLEEP / NOOP loop."""

    def __init__(self, function: str, handler: Callable[[bytes], Any], ready: asyncio.Future[None]) -> None:
        from geartrain.protocol import Decoder, constants, pack

        self.c, self.pack, self.handler, self.ready = constants, pack, handler, ready
        self.decoder = Decoder(accept=b"\0RES")
        self.grab = pack(b"\0REQ", constants.GRAB_JOB_UNIQ, b"")
        self.pre_sleep = pack(b"\0REQ", constants.PRE_SLEEP, b"")
        self.hello = pack(b"\0REQ", constants.CAN_DO, function.encode()) + self.grab
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from geartrain.sockets import tune

        self.transport = transport  # type: ignore[assignment]
        tune(transport.get_extra_info("socket"))
        transport.write(self.hello)  # type: ignore[attr-defined]

    async def work(self, handle: bytes, data: bytes) -> None:
        result = await self.handler(data)
        self.transport.write(self.pack(b"\0REQ", self.c.WORK_COMPLETE, handle + b"\0" + result) + self.grab)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        c = self.c
        for packet in self.decoder.feed(data):
            ptype = packet.ptype  # type: ignore[union-attr]
            if ptype == c.JOB_ASSIGN_UNIQ:
                handle, _function, _unique, job_data = packet.args  # type: ignore[union-attr]
                asyncio.get_running_loop().create_task(self.work(handle, job_data))
            elif ptype == c.NO_JOB:
                self.transport.write(self.pre_sleep)  # type: ignore[union-attr]
                if not self.ready.done():
                    self.ready.set_result(None)
            elif ptype == c.NOOP:
                self.transport.write(self.grab)  # type: ignore[union-attr]


def run_worker(api: str, port: int, function: str, timeout: float, task_bytes: bool, prefetch: bool = False) -> None:
    """Answer jobs until killed; ``ready`` on stdout once the function is registered."""
    if api == "floor":
        run_floor_worker(port, function)
    elif api == "asyncio-floor":
        async def reverse_bytes(data: bytes) -> bytes:
            return data[::-1]

        async def serve_floor() -> None:
            loop = asyncio.get_running_loop()
            ready = loop.create_future()
            transport, _ = await loop.create_connection(lambda: _FloorWorker(function, reverse_bytes, ready), HOST,
                                                        port)
            await ready  # the first NO_JOB: CAN_DO is in
            print("ready", flush=True)
            await loop.create_future()  # until killed

        _event_loop().run_until_complete(serve_floor())
    elif api == "geartrain":
        from geartrain.client import Worker

        async def reverse(job: object) -> bytes:
            return job.arguments[::-1]  # type: ignore[attr-defined]

        async def serve() -> None:
            worker = Worker([(HOST, port)], client_id="bench-worker", **({"prefetch": True} if prefetch else {}))
            worker.register(function, reverse)
            running = asyncio.ensure_future(worker.run())
            await worker.wait_connected(timeout=timeout)
            print("ready", flush=True)
            await running

        _event_loop().run_until_complete(serve())
    elif api in ("gear", "gear-batch"):
        import gear

        # --prefetch: this checkout's opt-in Worker prefetch (the next job asked for while one runs).
        worker = gear.Worker("bench-worker", prefetch=True) if prefetch else gear.Worker("bench-worker")
        worker.addServer(HOST, port)
        worker.waitForServer(timeout)
        worker.registerFunction(function)
        print("ready", flush=True)
        while True:
            job = worker.getJob()
            job.sendWorkComplete(bytes(job.arguments)[::-1])
    else:
        import gearman

        def reverse(_worker: object, job: object) -> bytes:
            return job.data[::-1]  # type: ignore[attr-defined]

        worker = gearman.GearmanWorker([f"{HOST}:{port}"], **({"prefetch": True} if prefetch else {}))
        worker.set_client_id("bench-worker")
        worker.register_task(function.encode() if task_bytes else function, reverse)
        print("ready", flush=True)
        worker.work(poll_timeout=1.0)


def _version(*dists: str) -> str:
    from importlib import metadata

    for dist in dists:
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "this checkout"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--api", choices=("gear", "gear-batch", "gearman", "geartrain", "floor", "asyncio-floor"),
                   required=True)
    p.add_argument("--role", choices=("client", "worker"), required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--function", required=True)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--batch", type=int, default=1, help="jobs submitted before waiting for their results")
    p.add_argument("--size", type=int, default=64, help="payload bytes")
    p.add_argument("--duration", type=float, default=5.0, help="stop submitting after this many seconds")
    p.add_argument("--timeout", type=float, default=30.0, help="hard limit, after which a job is lost")
    p.add_argument("--task-bytes", action="store_true", help="pass task names as bytes (Python 3 forks)")
    p.add_argument("--prefetch", action="store_true",
                   help="worker: grab the next job while one runs (this checkout's gear, gearman and geartrain)")
    args = p.parse_args()
    if args.role == "worker":
        run_worker(args.api, args.port, args.function, args.timeout, args.task_bytes, args.prefetch)
        return 0
    try:
        result = run_client(args.api, args.port, args.function, args.jobs, args.batch, args.size,
                            args.duration, args.timeout, args.task_bytes)
    except Exception as exc:
        result = {"jobs": 0, "seconds": 0.0, "cpu": 0.0, "errors": [f"{type(exc).__name__}: {exc}"]}
    result["module"] = getattr(sys.modules.get(args.api.split("-")[0]), "__file__", "?")
    result["version"] = _version("gear", "pygearman", "gearman3") if "site-packages" in str(
        result["module"]) else "this checkout"
    print(json.dumps(result), flush=True)
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
