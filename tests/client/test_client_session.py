"""geartrain.client over the shared session core: routing that ignores the order of the server list, and servers
that ignore OPTION_REQ (gear 0.16.0's geard) or refuse it with ERROR, without any answer shifting."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest's importlib mode does not put this directory on sys.path

from client_support import DEADLINE, running_worker  # noqa: E402
from other_servers import OptionRefusingServer, original_gear, original_geard  # noqa: E402, F401

from geartrain.client import Client, WorkerJob  # noqa: E402


def run(coro) -> object:
    return asyncio.run(asyncio.wait_for(coro, DEADLINE * 3))


async def upper(job: WorkerJob) -> bytes:
    return job.arguments.upper()


@pytest.mark.parametrize("kind", ["geartrain", "gearmand"])
def test_a_unique_goes_to_the_same_server_whatever_the_order_of_the_list(kind, server_factory):
    addresses = [server_factory(kind).address for _ in range(3)]

    async def body():
        async with Client(addresses) as one, Client(list(reversed(addresses))) as two, \
                Client(addresses[1:] + addresses[:1]) as three:
            for n in range(12):
                unique = f"same-{n}"
                jobs = [await client.submit("cs_nobody", b"x", unique=unique, background=True)
                        for client in (one, two, three)]
                assert len({job.server for job in jobs}) == 1, [job.server for job in jobs]
                assert len({job.handle for job in jobs}) == 1  # coalesced: that server already holds the unique
                status = await two.get_status_unique(unique)
                assert status.known
            used = {(await one.submit("cs_nobody", b"x", unique=f"spread-{n}", background=True)).server
                    for n in range(30)}
            assert len(used) > 1  # the uniques spread over the pool

    run(body())


def test_option_ignored_by_gear_0_16_geard_shifts_no_handle_or_result(original_geard):  # noqa: F811
    address = original_geard.address

    async def body():
        async with Client([address]) as client, running_worker([address], {"cs_up": upper}):
            jobs = [await client.submit("cs_up", f"job {n}") for n in range(5)]
            assert len({job.handle for job in jobs}) == 5
            results = await asyncio.gather(*(job.result() for job in jobs))
            assert results == [f"JOB {n}".encode() for n in range(5)]
            assert await client.run("cs_up", "once more") == b"ONCE MORE"
            assert not client.links[0].conn.exceptions

    run(body())


def test_option_refused_with_error_shifts_no_handle_or_result():
    with OptionRefusingServer() as server:
        async def body():
            async with Client([server.address]) as client:
                jobs = await asyncio.gather(*(client.submit("f", f"job {n}") for n in range(5)))
                results = await asyncio.gather(*(job.result() for job in jobs))
                assert results == [f"JOB {n}".encode() for n in range(5)]
                assert len({job.handle for job in jobs}) == 5
                assert not client.links[0].conn.exceptions

        run(body())
        assert server.options_refused == 1
