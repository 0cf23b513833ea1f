"""geartrain.client's Worker(prefetch=True): one job more than ``concurrency`` is grabbed, never one it cannot
start; against geartrain's server and gearmand."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest's importlib mode does not put this directory on sys.path

from client_support import DEADLINE, eventually, running_worker  # noqa: E402

from geartrain.client import Client, Worker, WorkerJob  # noqa: E402


def run(coro) -> object:
    return asyncio.run(asyncio.wait_for(coro, DEADLINE * 3))


async def running(client: Client, function: str) -> int:
    """Jobs of function the server has assigned to workers (the "running" column of its status listing)."""
    for line in (await client.admin("status")).lines:
        fields = line.decode().split("\t")
        if fields[0] == function:
            return int(fields[2])
    return 0


async def until_running(client: Client, function: str, count: int) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while await running(client, function) != count:
        assert loop.time() < end, f"never {count} jobs of {function} running"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("prefetch", [False, True])
def test_prefetch_holds_one_more_job_and_is_off_by_default(any_server, prefetch):
    async def body():
        release = asyncio.Event()

        async def hold(job: WorkerJob) -> bytes:
            await release.wait()
            return job.arguments

        assert Worker([any_server.address]).prefetch is False
        async with Client([any_server.address]) as client:
            jobs = [await client.submit("pf_hold", b"%d" % n) for n in range(3)]
            async with running_worker([any_server.address], {"pf_hold": hold}, prefetch=prefetch):
                await until_running(client, "pf_hold", 2 if prefetch else 1)
                release.set()
                assert [await job.result() for job in jobs] == [b"0", b"1", b"2"]

    run(body())


def test_a_held_job_of_a_function_unregistered_meanwhile_goes_back_to_the_server(any_server):
    """Whichever of two jobs runs first unregisters the other's function, whose job is already held here."""

    async def body():
        names = ("pf_x", "pf_y")
        release = asyncio.Event()
        ran_first: list[bytes] = []

        async def drop_the_other(job: WorkerJob) -> bytes:
            await release.wait()
            worker.unregister(names[1 - names.index(job.function.decode())])
            ran_first.append(job.function)
            return b"w1"

        async def second(job: WorkerJob) -> bytes:
            return b"w2"

        async with Client([any_server.address]) as client:
            jobs = [await client.submit(name, b"") for name in names]
            async with running_worker([any_server.address], dict.fromkeys(names, drop_the_other),
                                      prefetch=True) as worker:
                await until_running(client, names[0], 1)
                await until_running(client, names[1], 1)  # both assigned: one runs, one is held
                release.set()
                await eventually(lambda: bool(ran_first), "the first job ran")
                async with running_worker([any_server.address], dict.fromkeys(names, second)):
                    results = [await asyncio.wait_for(job.result(), DEADLINE) for job in jobs]
            assert sorted(results) == [b"w1", b"w2"]
            assert results[names.index(ran_first[0].decode())] == b"w1"

    run(body())


def test_jobs_held_when_the_worker_stops_go_back_to_the_server(any_server):
    async def body():
        release = asyncio.Event()

        async def first(job: WorkerJob) -> bytes:
            await release.wait()  # until the worker is stopping: the held job must not start here
            return b"w1"

        async with Client([any_server.address]) as client:
            jobs = [await client.submit("pf_stop", b"%d" % n) for n in range(2)]
            async with running_worker([any_server.address], {"pf_stop": first}, prefetch=True) as worker:
                await until_running(client, "pf_stop", 2)
                stopping = asyncio.create_task(worker.stop(timeout=DEADLINE))
                await asyncio.sleep(0)  # the stop's first step runs: the worker takes and starts no more jobs
                release.set()
                await asyncio.wait_for(stopping, DEADLINE * 2)
            async with running_worker([any_server.address], {"pf_stop": lambda job: b"w2"}):
                results = [await asyncio.wait_for(job.result(), DEADLINE) for job in jobs]
            assert results == [b"w1", b"w2"]

    run(body())


def test_a_prefetching_worker_runs_batches_of_jobs_each_once(any_server):
    async def body():
        ran: list[bytes] = []

        async def record(job: WorkerJob) -> bytes:
            ran.append(job.arguments)
            return job.arguments[::-1]

        async with Client([any_server.address]) as client, running_worker(
                [any_server.address], {"pf_stream": record}, prefetch=True):
            for start in (0, 200):
                data = [b"job-%d" % n for n in range(start, start + 200)]
                results = await asyncio.gather(*(client.run("pf_stream", d) for d in data))
                assert results == [d[::-1] for d in data]
        assert sorted(ran) == sorted(b"job-%d" % n for n in range(400))

    run(body())


def test_no_grab_goes_out_while_a_job_to_give_back_waits(any_server):
    """With concurrency 2: two jobs run, a third is held, its function is unregistered. When one of the two ends,
    a slot is free, but a grab now would take another job onto the connection that is about to be closed to give
    the held one back; none goes out until the give-back."""

    async def body():
        releases = {b"k0": asyncio.Event(), b"k1": asyncio.Event(), b"k2": asyncio.Event()}

        async def keep(job: WorkerJob) -> bytes:
            await releases[job.arguments].wait()
            return job.arguments

        async with Client([any_server.address]) as client:
            kept = [await client.submit("gb_keep", b"k0"), await client.submit("gb_keep", b"k1")]
            async with running_worker([any_server.address], {"gb_keep": keep, "gb_drop": keep}, concurrency=2,
                                      prefetch=True) as worker:
                await until_running(client, "gb_keep", 2)
                dropped = await client.submit("gb_drop", b"d0")
                await until_running(client, "gb_drop", 1)  # assigned by the server; held once it arrives
                (link,) = worker.links
                await eventually(lambda: [job.arguments for job in link.state.held] == [b"d0"],
                                 "the worker holds d0: both slots are taken")
                worker.unregister("gb_drop")
                kept.append(await client.submit("gb_keep", b"k2"))
                releases[b"k0"].set()
                assert await asyncio.wait_for(kept[0].result(), DEADLINE) == b"k0"
                # The worker chose when k0's result was written, before the server relayed it.
                assert link.conn.grabs == 0 and [job.arguments for job in link.state.held] == [b"d0"]
                releases[b"k1"].set()
                releases[b"k2"].set()
                assert [await asyncio.wait_for(job.result(), DEADLINE) for job in kept[1:]] == [b"k1", b"k2"]
                async with running_worker([any_server.address], {"gb_drop": lambda job: b"elsewhere"}):
                    assert await asyncio.wait_for(dropped.result(), DEADLINE) == b"elsewhere"

    run(body())
