"""One side of a client-library ("face") measurement, run by faces.py under a chosen interpreter.

It imports only the library under test (``gear`` or ``gearman``), so the same file measures this checkout's
faces and the originals installed in throwaway virtualenvs (``geartrain`` is this checkout's asyncio
geartrain.client). Two roles, each in its own process:

- ``worker``: registers the function, prints ``ready`` and answers every job with its data reversed until it
  is terminated (SIGTERM from faces.py); ``--prefetch`` turns on the worker's prefetch (this checkout's gearman
  and geartrain workers only);
- ``client``: submits jobs ``--batch`` at a time and waits for each batch, checks every result, and prints one
  JSON line (jobs, seconds, its own CPU time, errors).

    python face_script.py --api gear --role worker --port 4730 --function f
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
from collections.abc import Callable, Iterable, Iterator

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
    submit = {"gear": GearFace, "gear-batch": GearBatchFace, "gearman": GearmanFace, "geartrain": GeartrainFace}[api]
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
        runs = asyncio.gather(*(self.client.run(self.function, data, unique=f"u{s}") for s, data in specs),
                              return_exceptions=True)
        results = await asyncio.wait_for(runs, self.timeout)  # one time limit for the batch, as the others
        return [r if isinstance(r, bytes) else f"{type(r).__name__}: {r}" for r in results]


def run_worker(api: str, port: int, function: str, timeout: float, task_bytes: bool, prefetch: bool = False) -> None:
    """Answer jobs until killed; ``ready`` on stdout once the function is registered."""
    if api == "geartrain":
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

        worker = gear.Worker("bench-worker")
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
    p.add_argument("--api", choices=("gear", "gear-batch", "gearman", "geartrain"), required=True)
    p.add_argument("--role", choices=("client", "worker"), required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--function", required=True)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--batch", type=int, default=1, help="jobs submitted before waiting for their results")
    p.add_argument("--size", type=int, default=64, help="payload bytes")
    p.add_argument("--duration", type=float, default=5.0, help="stop submitting after this many seconds")
    p.add_argument("--timeout", type=float, default=30.0, help="hard limit, after which a job is lost")
    p.add_argument("--task-bytes", action="store_true", help="pass task names as bytes (Python 3 forks)")
    p.add_argument("--prefetch", action="store_true", help="worker: grab the next job while one runs")
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
