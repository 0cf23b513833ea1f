"""One client-library ("face") measurement, run by faces.py under a chosen interpreter.

It imports only the library under test (``gear`` or ``gearman``), so the same file measures this checkout's
faces and the originals installed in throwaway virtualenvs. A worker thread in the same process answers every
job with its data reversed; the client checks each result. Prints one JSON line.

    python face_script.py --api gear --port 4730 --jobs 2000 --mode lockstep
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

HOST = "127.0.0.1"


def payload(seq: int) -> bytes:
    """64 ASCII bytes that differ per job (ASCII so that str-only forks can carry them too)."""
    return (f"{seq:08d}-" + "abcdefghijklmnopqrstuvwxyz0123456789" * 2)[:64].encode()


def run_gear(port: int, jobs: int, batch: int, duration: float, timeout: float, fname: str,
             task_bytes: bool) -> dict[str, object]:
    import gear

    del task_bytes  # gear takes str names everywhere
    cond = threading.Condition()

    class Client(gear.Client):
        def handleWorkComplete(self, packet):  # noqa: N802 - gear's hook name
            job = super().handleWorkComplete(packet)
            with cond:
                cond.notify_all()
            return job

        def handleWorkFail(self, packet):  # noqa: N802
            job = super().handleWorkFail(packet)
            with cond:
                cond.notify_all()
            return job

    client = Client("bench-client")
    worker = gear.Worker("bench-worker")
    stop = threading.Event()
    errors: list[str] = []
    try:
        client.addServer(HOST, port)
        worker.addServer(HOST, port)
        client.waitForServer(timeout)
        worker.waitForServer(timeout)
        worker.registerFunction(fname)

        def work() -> None:
            while not stop.is_set():
                try:
                    job = worker.getJob()
                except gear.InterruptedError:
                    return
                except Exception as exc:  # report, do not hang
                    errors.append(f"worker: {exc!r}")
                    return
                job.sendWorkComplete(bytes(job.arguments)[::-1])

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        time.sleep(0.2)  # let the worker register and sleep
        deadline = time.monotonic() + timeout
        stop_at = time.monotonic() + duration
        done = 0
        t0 = time.perf_counter()
        seq = 0
        while seq < jobs and time.monotonic() < stop_at:
            group = []
            for _ in range(min(batch, jobs - seq)):
                job = gear.Job(fname, payload(seq), unique=f"u{os.getpid()}-{seq}".encode())
                client.submitJob(job, timeout=timeout)
                group.append((seq, job))
                seq += 1
            with cond:
                cond.wait_for(lambda g=group: all(j.complete for _, j in g),
                              timeout=max(0.0, deadline - time.monotonic()))
            for s, job in group:
                if not job.complete:
                    errors.append(f"job {s} did not complete")
                elif job.failure or b"".join(job.data) != payload(s)[::-1]:
                    errors.append(f"job {s}: wrong result {b''.join(job.data)[:40]!r}")
                else:
                    done += 1
            if errors:
                break
        seconds = time.perf_counter() - t0
    finally:
        stop.set()
        worker.stopWaitingForJobs()
        worker.shutdown()
        client.shutdown()
    return {"jobs": done, "seconds": seconds, "errors": errors[:5], "version": _version("gear")}


def run_gearman(port: int, jobs: int, batch: int, duration: float, timeout: float, fname: str,
                task_bytes: bool) -> dict[str, object]:
    import gearman

    stop = threading.Event()
    errors: list[str] = []

    class Worker(gearman.GearmanWorker):
        def after_poll(self, any_activity):  # python-gearman's hook: keep working until told to stop
            return not stop.is_set()

    def reverse(_worker, job):
        data = job.data
        return data[::-1]

    task: str | bytes = fname.encode() if task_bytes else fname
    worker = Worker([f"{HOST}:{port}"])
    worker.set_client_id("bench-worker")
    worker.register_task(task, reverse)

    def work() -> None:
        try:
            worker.work(poll_timeout=0.1)
        except Exception as exc:
            errors.append(f"worker: {exc!r}")

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    client = gearman.GearmanClient([f"{HOST}:{port}"])
    done = 0
    deadline = time.monotonic() + timeout
    stop_at = time.monotonic() + duration
    t0 = time.perf_counter()
    seq = 0
    try:
        while seq < jobs and time.monotonic() < stop_at:
            n = min(batch, jobs - seq)
            specs = [(seq + i, payload(seq + i)) for i in range(n)]
            seq += n
            left = max(0.1, deadline - time.monotonic())
            if n == 1:
                requests = [client.submit_job(task, specs[0][1], unique=f"u{os.getpid()}-{specs[0][0]}",
                                              poll_timeout=left)]
            else:
                requests = client.submit_multiple_jobs(
                    [{"task": task, "data": d, "unique": f"u{os.getpid()}-{s}"} for s, d in specs],
                    poll_timeout=left,
                )
            for (s, data), req in zip(specs, requests, strict=True):
                result = req.result
                if isinstance(result, str):
                    result = result.encode()
                if req.state != gearman.JOB_COMPLETE:
                    errors.append(f"job {s}: state {req.state}")
                elif result != data[::-1]:
                    errors.append(f"job {s}: wrong result {result!r:.40}")
                else:
                    done += 1
            if errors:
                break
        seconds = time.perf_counter() - t0
    finally:
        stop.set()
        thread.join(timeout=5)
        worker.shutdown()
        client.shutdown()
    version = _version("gearman", "pygearman", "gearman3")
    return {"jobs": done, "seconds": seconds, "errors": errors[:5], "version": version}


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
    p.add_argument("--api", choices=("gear", "gearman"), required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--batch", type=int, default=1, help="jobs submitted before waiting for their results")
    p.add_argument("--duration", type=float, default=5.0, help="stop submitting after this many seconds")
    p.add_argument("--timeout", type=float, default=30.0, help="hard limit, after which a job is lost")
    p.add_argument("--task-bytes", action="store_true", help="pass task names as bytes (Python 3 forks)")
    p.add_argument("--function", default=f"face_{os.getpid()}")
    args = p.parse_args()
    run = run_gear if args.api == "gear" else run_gearman
    try:
        result = run(args.port, args.jobs, args.batch, args.duration, args.timeout, args.function,
                     args.task_bytes)
    except Exception as exc:
        result = {"jobs": 0, "seconds": 0.0, "errors": [f"{type(exc).__name__}: {exc}"]}
    result["module"] = getattr(sys.modules.get(args.api), "__file__", "?")
    print(json.dumps(result), flush=True)
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
