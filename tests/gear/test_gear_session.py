"""gear over the shared session core: coalesced jobs of one client all complete, servers that ignore or refuse
OPTION_REQ shift nothing, and route_by_unique sends a unique to one server whatever the order of the list."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest's importlib mode does not put this directory on sys.path
sys.path.insert(0, str(Path(__file__).parents[1] / "client"))
pytest.register_assert_rewrite("gear_support")
from gear_support import WAIT, pool, reverse, wait_until  # noqa: E402, F401
from other_servers import OptionRefusingServer, original_gear, original_geard  # noqa: E402, F401

import gear  # noqa: E402


@pytest.mark.parametrize("count", [2, 3])
def test_jobs_coalesced_on_one_handle_all_complete(any_server, pool, count):  # noqa: F811
    """The original kept one job per handle (related_jobs): the first of two never completed."""
    client = pool.client(any_server)
    jobs = [gear.Job("gs_coalesce", "abc", unique="one-unique") for _ in range(count)]
    for job in jobs:
        client.submitJob(job, timeout=WAIT)
    assert len({job.handle for job in jobs}) == 1  # the server coalesced them
    worker = pool.worker(any_server, "gs_coalesce")
    pool.serve(worker, reverse)
    for job in jobs:
        assert job.waitForCompletion(WAIT), job
        assert job.complete and not job.failure
        assert job.data == [b"cba"]
    assert client.active_connections[0].related_jobs == {}


def test_set_option_against_gear_0_16_geard_which_ignores_it(original_geard, pool):  # noqa: F811
    client = pool.client(original_geard)
    started = time.monotonic()
    assert client.setOption("exceptions", timeout=WAIT) is False  # answered by the probe, not by a timeout
    assert time.monotonic() - started < WAIT
    worker = pool.worker(original_geard, "gs_option")
    pool.serve(worker, reverse)
    jobs = [gear.Job("gs_option", f"job {n}") for n in range(4)]
    client.submitJobs(jobs, timeout=WAIT)
    assert len({job.handle for job in jobs}) == 4
    for n, job in enumerate(jobs):
        assert job.waitForCompletion(WAIT)
        assert job.data == [f"{n} boj".encode()]
    assert client.active_connections[0].pending_tasks == []


def test_set_option_refused_with_error_shifts_nothing(pool):  # noqa: F811
    with OptionRefusingServer() as server:
        client = pool.client()
        client.addServer("127.0.0.1", server.port)
        client.waitForServer(WAIT)
        assert client.setOption("exceptions", timeout=WAIT) is False
        jobs = [gear.Job("f", f"job {n}") for n in range(4)]
        client.submitJobs(jobs, timeout=WAIT)
        for n, job in enumerate(jobs):
            assert job.waitForCompletion(WAIT)
            assert job.data == [f"JOB {n}".encode()]
        assert server.options_refused == 1
        pool.close()


@pytest.mark.parametrize("kind", ["geartrain", "gearmand"])
def test_route_by_unique_ignores_the_order_of_the_servers(kind, server_factory, pool):  # noqa: F811
    servers = [server_factory(kind) for _ in range(3)]
    clients = []
    for order in (servers, list(reversed(servers)), servers[1:] + servers[:1]):
        client = pool.client()
        client.route_by_unique = True
        for server in order:
            client.addServer(server.host, server.port)
        wait_until(lambda c=client: len(c.active_connections) == 3)
        clients.append(client)
    used = set()
    for n in range(12):
        jobs = [gear.Job("gs_nobody", "x", unique=f"same-{n}") for _ in clients]
        for client, job in zip(clients, jobs, strict=True):
            client.submitJob(job, background=True, timeout=WAIT)
        places = {(job.connection.host, job.connection.port) for job in jobs}
        assert len(places) == 1
        assert len({job.handle for job in jobs}) == 1  # coalesced on that server
        used |= places
    assert len(used) > 1


def test_round_robin_stays_the_default(server_factory, pool):  # noqa: F811
    servers = [server_factory("geartrain") for _ in range(2)]
    client = pool.client()
    for server in servers:
        client.addServer(server.host, server.port)
    wait_until(lambda: len(client.active_connections) == 2)  # else both jobs go to the one connected
    jobs = [gear.Job("gs_nobody", "x", unique="same") for _ in range(2)]
    for job in jobs:
        client.submitJob(job, background=True, timeout=WAIT)
    assert jobs[0].connection is not jobs[1].connection
