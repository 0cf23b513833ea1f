"""geartrain.client's asyncio Client and Worker against geartrain's server and gearmand."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest's importlib mode does not put this directory on sys.path

from client_support import (  # noqa: E402
    DEADLINE,
    RestartableServer,
    SubmitSwallowingProxy,
    eventually,
    running_worker,
)

from geartrain.client import (  # noqa: E402
    Client,
    JobError,
    JobException,
    JobFailed,
    JobLost,
    NoServerAvailable,
    ServerError,
    Worker,
    WorkerJob,
)

from conftest import free_port  # noqa: E402


def run(coro) -> object:
    return asyncio.run(asyncio.wait_for(coro, DEADLINE * 3))


async def upper(job: WorkerJob) -> bytes:
    return job.arguments.upper()


# ---------------------------------------------------------------------------------------------- basics


def test_round_trip_with_str_and_bytes(any_server):
    async def body():
        async with Client([any_server.address]) as client, running_worker([any_server.address], {"up": upper}):
            assert await client.run("up", "hello") == b"HELLO"
            assert await client.run(b"up", b"\x00bin\xff") == b"\x00BIN\xff"
            job = await client.submit("up", "x", unique="u-1")
            assert job.handle and job.server == any_server.address
            assert job.unique == b"u-1" and job.function == b"up" and job.arguments == b"x"
            assert await job.result() == b"X"
            assert job.state == "complete"

    run(body())


def test_background_job_runs_and_has_no_result(any_server):
    async def body():
        seen: asyncio.Queue[bytes] = asyncio.Queue()

        async def record(job: WorkerJob) -> None:
            await seen.put(job.arguments)

        async with Client([any_server.address]) as client, running_worker([any_server.address], {"bg": record}):
            job = await client.submit("bg", "payload", background=True)
            assert job.handle and job.background
            assert await asyncio.wait_for(seen.get(), DEADLINE) == b"payload"
            with pytest.raises(JobError):
                await job.result()

    run(body())


def test_priorities_hand_out_high_then_normal_then_low(any_server):
    async def body():
        order: list[bytes] = []

        async def record(job: WorkerJob) -> bytes:
            order.append(job.arguments)
            return job.arguments

        async with Client([any_server.address]) as client:
            jobs = [
                await client.submit("prio", "low", priority="low"),
                await client.submit("prio", "normal", priority="normal"),
                await client.submit("prio", "high", priority="high"),
            ]
            async with running_worker([any_server.address], {"prio": record}, concurrency=1):
                assert [await job.result() for job in jobs] == [b"low", b"normal", b"high"]
        assert order == [b"high", b"normal", b"low"]

    run(body())


def test_same_unique_from_two_clients_coalesces_and_both_get_the_result(any_server):
    async def body():
        runs: list[bytes] = []

        async def once(job: WorkerJob) -> bytes:
            runs.append(job.handle)
            return b"shared:" + job.arguments

        async with Client([any_server.address]) as one, Client([any_server.address]) as two:
            first = await one.submit("co", "a", unique="same-unique")
            second = await two.submit("co", "b", unique="same-unique")
            assert first.handle == second.handle
            async with running_worker([any_server.address], {"co": once}):
                assert await first.result() == b"shared:a"
                assert await second.result() == b"shared:a"
        assert len(runs) == 1

    run(body())


def test_work_data_warning_and_status_stream_to_the_client(any_server):
    async def body():
        async def chatty(job: WorkerJob) -> bytes:
            for index in range(3):
                await job.send_status(index + 1, 3)
                await job.send_data(f"chunk{index}")
            await job.send_warning("careful")
            return b"done"

        async with Client([any_server.address]) as client, running_worker([any_server.address], {"chat": chatty}):
            job = await client.submit("chat", "")
            chunks = [chunk async for chunk in job.stream()]
            assert chunks == [b"chunk0", b"chunk1", b"chunk2"]
            assert await job.result() == b"done"
            assert job.data == chunks
            assert job.warnings == [b"careful"]
            assert job.status == (3, 3)
            job.data, job.warnings = [], []  # still plain attributes to the caller, though made on first use
            assert (job.data, job.warnings) == ([], [])

    run(body())


def test_client_and_worker_subclasses_add_attributes_and_override_methods(any_server):
    # The compiled build compiles these classes (geartrain.compiled): they must stay open to Python subclasses,
    # whose overrides the compiled code calls.
    class CountingClient(Client):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.routed = 0

        def _route(self, job) -> None:
            self.routed += 1
            super()._route(job)

    class NamedWorker(Worker):
        label = "named"

    async def body():
        worker = NamedWorker([any_server.address])
        worker.register("up", upper)
        worker.note = "set on the instance"
        running = asyncio.ensure_future(worker.run())
        try:
            await worker.wait_connected(timeout=DEADLINE)
            async with CountingClient([any_server.address]) as client:
                assert await client.run("up", "sub") == b"SUB"
                assert client.routed == 1
        finally:
            await worker.stop(timeout=DEADLINE)
            await running

    run(body())


def test_handler_exception_reaches_client_and_worker_keeps_going(any_server):
    async def body():
        async def moody(job: WorkerJob) -> bytes:
            if job.arguments == b"raise":
                raise ValueError("bad input")
            if job.arguments == b"fail":
                raise JobFailed("no")
            return b"fine"

        async with Client([any_server.address]) as client, running_worker([any_server.address], {"m": moody}):
            with pytest.raises(JobException) as info:
                await client.run("m", "raise")
            assert b"ValueError: bad input" in info.value.data
            assert await client.run("m", "ok") == b"fine"
            with pytest.raises(JobFailed):
                await client.run("m", "fail")
            assert await client.run("m", "ok") == b"fine"

    run(body())


def test_plain_function_handler_runs_in_the_executor(any_server):
    async def body():
        threads: list[str] = []

        def blocking(job: WorkerJob) -> str:
            threads.append(threading.current_thread().name)
            return job.arguments.decode()[::-1]

        async with Client([any_server.address]) as client, running_worker([any_server.address], {"rev": blocking}):
            assert await client.run("rev", "abc") == b"cba"
        assert threads and threads[0] != threading.main_thread().name

    run(body())


def test_get_status_and_get_status_unique(any_server):
    async def body():
        release = asyncio.Event()

        async def slow(job: WorkerJob) -> bytes:
            await job.send_status(3, 10)
            await job.send_data("started")
            await release.wait()
            return b"ok"

        async with Client([any_server.address]) as client, running_worker([any_server.address], {"slow": slow}):
            job = await client.submit("slow", "", unique="status-unique")
            async for _ in job.stream():
                break  # WORK_STATUS came before this WORK_DATA: the server has the status too
            status = await client.get_status(job)
            assert (status.known, status.running, status.numerator, status.denominator) == (True, True, 3, 10)
            assert status.handle == job.handle
            by_unique = await client.get_status_unique("status-unique")
            assert by_unique.unique == b"status-unique"
            assert (by_unique.known, by_unique.running, by_unique.numerator, by_unique.denominator) == (
                True, True, 3, 10)
            assert by_unique.waiting >= 1
            unknown = await client.get_status(b"H:nowhere:424242")
            assert (unknown.known, unknown.running) == (False, False)
            release.set()
            assert await job.result() == b"ok"

    run(body())


def test_admin_and_echo(any_server):
    async def body():
        async with Client([any_server.address]) as client, running_worker([any_server.address], {"adm": upper}):
            assert await client.echo("ping") == b"ping"
            assert await client.echo(b"\x00with nul") == b"\x00with nul"
            assert await client.run("adm", "registered") == b"REGISTERED"  # the server has seen CAN_DO
            status = await client.admin("status")
            assert status.ok
            assert any(line.split(b"\t")[0] == b"adm" for line in status.lines)
            version = await client.admin("version")
            assert version.ok and version.lines[0].startswith(b"OK")
            unknown = await client.admin("no-such-command")
            assert not unknown.ok
            assert await client.run("adm", "still works") == b"STILL WORKS"

    run(body())


def test_submit_epoch_runs_once_due(any_server):
    async def body():
        done: asyncio.Queue[bytes] = asyncio.Queue()

        async def record(job: WorkerJob) -> None:
            await done.put(job.arguments)

        async with Client([any_server.address]) as client, running_worker([any_server.address], {"ep": record}):
            job = await client.submit_epoch("ep", "later", time.time())
            assert job.handle and job.background
            assert await asyncio.wait_for(done.get(), DEADLINE) == b"later"

    run(body())


def test_server_refusal_is_a_server_error(any_server):
    async def body():
        async with Client([any_server.address]) as client:
            with pytest.raises(ServerError) as info:
                await client.submit("f", "x", unique="u" * 200)
            assert info.value.code
            assert await client.echo("after") == b"after"

    run(body())


def test_concurrency_runs_several_jobs_at_once(any_server):
    async def body():
        running = 0
        all_in = asyncio.Event()

        async def together(job: WorkerJob) -> bytes:
            nonlocal running
            running += 1
            if running == 3:
                all_in.set()
            await all_in.wait()  # with fewer than 3 slots this would never be released
            return job.arguments

        async with Client([any_server.address]) as client, running_worker(
                [any_server.address], {"tog": together}, concurrency=3):
            jobs = [await client.submit("tog", str(i)) for i in range(3)]
            assert sorted([await job.result() for job in jobs]) == [b"0", b"1", b"2"]

    run(body())


def test_priority_names_in_any_case_and_leading_arguments_without_nul(geartrain_server):
    """A priority is named in any case (kept in lower case); a function or unique holding a NUL is refused before
    anything is sent (only the last argument of a packet may hold NULs), and the client goes on working."""

    async def body():
        async with Client([geartrain_server.address]) as client:
            job = await client.submit("case", "x", priority="HIGH", background=True)
            assert job.priority == "high" and job.handle
            assert (await client.submit("case", "y", priority="Low", background=True)).priority == "low"
            for bad in ({"function": "f\0g"}, {"function": "f", "unique": b"u\0v"}):
                with pytest.raises(ValueError):
                    await client.run(data=b"x", **bad)
            assert (await client.submit("case", b"z\0z", unique="ok", background=True)).handle

    run(body())


def test_priority_must_be_known(geartrain_server):
    async def body():
        async with Client([geartrain_server.address]) as client:
            with pytest.raises(ValueError):
                await client.submit("f", "x", priority="urgent")

    run(body())


# ---------------------------------------------------------------------------------------------- several servers


def test_several_servers_with_one_down(server_factory):
    async def body():
        up = server_factory("geartrain")
        down = f"127.0.0.1:{free_port()}"
        async with Client([down, up.address]) as client, running_worker([down, up.address], {"up": upper},
                                                                        connected=1):
            assert client.connected_servers == [up.address]
            # Uniques hash over both servers: every one of them must fail over to the live one.
            results = await asyncio.gather(*(client.run("up", f"j{i}", unique=f"u{i}") for i in range(20)))
            assert results == [f"J{i}".encode() for i in range(20)]

    run(body())


def test_jobs_spread_over_two_live_servers(server_factory):
    async def body():
        one, two = server_factory("geartrain"), server_factory("geartrain")
        addresses = [one.address, two.address]
        async with Client(addresses) as client, running_worker(addresses, {"up": upper}):
            jobs = [await client.submit("up", f"j{i}", unique=f"spread-{i}") for i in range(20)]
            assert {job.server for job in jobs} == set(addresses)
            assert [await job.result() for job in jobs] == [f"J{i}".encode() for i in range(20)]
            # The same unique always picks the same server.
            again = await client.submit("up", "x", unique="spread-3")
            assert again.server == jobs[3].server
            await again.result()

    run(body())


def test_connect_fails_when_no_server_is_up():
    async def body():
        client = Client([f"127.0.0.1:{free_port()}"], connect_timeout=5.0)
        with pytest.raises(NoServerAvailable):
            await client.connect()

    run(body())


# ---------------------------------------------------------------------------------------------- fault tolerance


@pytest.mark.parametrize("kind", ["geartrain", "gearmand"])
def test_worker_reconnects_and_registers_again_after_restart(kind):
    server = RestartableServer(kind)
    server.start()

    async def body():
        addr = [server.address]
        async with running_worker(addr, {"up": upper}, client_id="re-worker") as worker:
            async with Client(addr) as client:
                assert await client.run("up", "before") == b"BEFORE"
            first = worker.links[0].generation
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.start)
            await eventually(lambda: worker.links[0].generation > first and worker.links[0].connected,
                             "the worker reconnected")
            async with Client(addr, client_id="re-client") as client:
                assert await client.run("up", "after") == b"AFTER"
                workers = await client.admin("workers")
                ours = [line for line in workers.lines if b" re-worker " in line + b" "]
                assert ours and ours[0].split(b":")[-1].split() == [b"up"]

    try:
        run(body())
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["geartrain", "gearmand"])
def test_submit_while_server_down_is_sent_after_restart(kind):
    server = RestartableServer(kind)
    server.start()

    async def body():
        addr = [server.address]
        async def boom(job: WorkerJob) -> bytes:
            raise RuntimeError("boom after restart")

        async with Client(addr, client_id="survivor") as client:
            assert await client.echo("up") == b"up"
            await asyncio.to_thread(server.stop)
            await eventually(lambda: not client.connected_servers, "the client saw the server go")
            pending = asyncio.create_task(client.run("up", "queued while down"))
            await asyncio.to_thread(server.start)
            async with running_worker(addr, {"up": upper, "boom": boom}):
                assert await asyncio.wait_for(pending, DEADLINE) == b"QUEUED WHILE DOWN"
                # SET_CLIENT_ID and OPTION_REQ exceptions were sent again on the new connection.
                workers = await client.admin("workers")
                assert any(b" survivor " in line + b" " for line in workers.lines), workers.lines
                with pytest.raises(JobException):
                    await client.run("boom", "")

    try:
        run(body())
    finally:
        server.stop()


def test_unacknowledged_submit_is_resubmitted_on_the_new_connection(any_server):
    async def body():
        proxy = SubmitSwallowingProxy(any_server.host, any_server.port)
        await proxy.start()
        try:
            async with Client([f"127.0.0.1:{proxy.port}"]) as client, running_worker(
                    [any_server.address], {"up": upper}):
                assert await client.run("up", "resent") == b"RESENT"
                assert proxy.swallowed == 1 and proxy.connections >= 2
        finally:
            await proxy.close()

    run(body())


@pytest.mark.parametrize("kind", ["geartrain", "gearmand"])
def test_acknowledged_foreground_job_lost_with_its_server(kind):
    server = RestartableServer(kind)
    server.start()

    async def body():
        async with Client([server.address]) as client:
            job = await client.submit("nobody-does-this", "x")
            await asyncio.to_thread(server.stop)
            with pytest.raises(JobLost) as info:
                await job.result()
            message = str(info.value)
            assert repr(job.handle) in message and server.address in message
            assert job.state == "lost"

    try:
        run(body())
    finally:
        server.stop()


def test_running_job_lost_when_server_stops_and_worker_survives(server_factory):
    async def body():
        server = RestartableServer("geartrain")
        server.start()
        try:
            started = asyncio.Event()
            release = asyncio.Event()

            async def held(job: WorkerJob) -> bytes:
                started.set()
                await release.wait()
                return b"late"

            async with running_worker([server.address], {"held": held, "up": upper}) as worker:
                async with Client([server.address]) as client:
                    job = await client.submit("held", "")
                    await asyncio.wait_for(started.wait(), DEADLINE)
                    first = worker.links[0].generation
                    await asyncio.to_thread(server.stop)
                    with pytest.raises(JobLost):
                        await job.result()
                    release.set()
                    await asyncio.to_thread(server.start)
                    await eventually(lambda: worker.links[0].generation > first and worker.links[0].connected,
                                     "the worker reconnected")
                async with Client([server.address]) as client:
                    assert await client.run("up", "next") == b"NEXT"
        finally:
            server.stop()

    run(body())


def test_worker_stop_finishes_running_jobs(geartrain_server):
    async def body():
        started = asyncio.Event()
        release = asyncio.Event()

        async def held(job: WorkerJob) -> bytes:
            started.set()
            await release.wait()
            return b"finished"

        worker = Worker([geartrain_server.address])
        worker.register("held", held)
        task = asyncio.create_task(worker.run())
        async with Client([geartrain_server.address]) as client:
            job = await client.submit("held", "")
            await asyncio.wait_for(started.wait(), DEADLINE)
            stopping = asyncio.create_task(worker.stop())
            await asyncio.sleep(0)
            assert not stopping.done()
            release.set()
            await asyncio.wait_for(stopping, DEADLINE)
            await asyncio.wait_for(task, DEADLINE)
            assert await job.result() == b"finished"

    run(body())


def test_worker_keeps_no_task_of_an_ended_job_nor_of_one_cancelled_by_stop(geartrain_server):
    """A job's task leaves the worker's set by itself when the job ends (no done callback), and stop(timeout)
    cancelling a stuck job leaves none behind: run() then starts again."""

    async def body():
        started = asyncio.Event()

        async def stuck(job: WorkerJob) -> bytes:
            started.set()
            await asyncio.Event().wait()
            return b""

        worker = Worker([geartrain_server.address])
        worker.register("quick", upper)
        worker.register("stuck", stuck)
        task = asyncio.create_task(worker.run())
        async with Client([geartrain_server.address]) as client:
            assert [await client.run("quick", b"%d" % n) for n in range(3)] == [b"0", b"1", b"2"]
            assert worker._tasks == set()
            await client.submit("stuck", "")
            await asyncio.wait_for(started.wait(), DEADLINE)
            assert len(worker._tasks) == 1
            await asyncio.wait_for(worker.stop(timeout=0.2), DEADLINE)
            await asyncio.wait_for(task, DEADLINE)
            assert worker._tasks == set()

    run(body())


def test_undecodable_reply_drops_the_connection_and_the_submit_is_sent_again(any_server):
    async def body():
        proxy = SubmitSwallowingProxy(any_server.host, any_server.port, garbage=True)
        await proxy.start()
        try:
            async with Client([f"127.0.0.1:{proxy.port}"]) as client, running_worker(
                    [any_server.address], {"up": upper}):
                assert await client.run("up", "after garbage") == b"AFTER GARBAGE"
                assert proxy.swallowed == 1 and proxy.connections >= 2
        finally:
            await proxy.close()

    run(body())


def test_function_registered_while_running_is_served(any_server):
    async def body():
        async with Client([any_server.address]) as client, running_worker(
                [any_server.address], {"first": upper}) as worker:
            assert await client.run("first", "a") == b"A"  # the worker then sleeps
            worker.register("second", upper)
            assert await client.run("second", "b") == b"B"
            worker.unregister("first")
            assert await client.run("second", "c") == b"C"

    run(body())


def test_plain_function_handler_reports_progress_through_the_loop(any_server):
    async def body():
        def progress(job: WorkerJob) -> bytes:
            asyncio.run_coroutine_threadsafe(job.send_data("half"), job.loop).result(DEADLINE)
            return b"whole"

        async with Client([any_server.address]) as client, running_worker(
                [any_server.address], {"prog": progress}):
            job = await client.submit("prog", "")
            assert await job.result() == b"whole"
            assert job.data == [b"half"]

    run(body())


def test_client_and_worker_over_verified_tls(tmp_path):
    from geartrain.server import Server, ServerConfig
    from geartrain.server.tls import client_context

    from certs import make_pki

    pki = make_pki(tmp_path)
    key, cert, ca = pki.server_files()
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], ssl_key=key, ssl_cert=cert, ssl_ca=ca))
    server.start_in_thread()

    async def body():
        address = f"127.0.0.1:{server.port}"
        worker = Worker([address], ssl_context=client_context(*pki.client_files("tls-worker")))
        worker.register("up", upper)
        task = asyncio.create_task(worker.run())
        try:
            await worker.wait_connected(timeout=DEADLINE)
            async with Client([address], ssl_context=client_context(*pki.client_files("tls-client"))) as client:
                assert await client.run("up", "secret") == b"SECRET"
        finally:
            await worker.stop(timeout=DEADLINE)
            await asyncio.wait_for(task, DEADLINE)

    try:
        run(body())
    finally:
        server.stop()


def test_close_fails_waiting_foreground_jobs_with_job_lost(geartrain_server):
    async def body():
        client = Client([geartrain_server.address])
        await client.connect()
        job = await client.submit("nobody-does-this", "x")
        await client.close()
        with pytest.raises(JobLost):
            await asyncio.wait_for(job.result(), DEADLINE)
        with pytest.raises(Exception, match="closed"):
            await client.submit("f", "x")

    run(body())


def test_function_registered_with_a_timeout_runs(any_server):
    async def body():
        worker = Worker([any_server.address], client_id="timed")
        worker.register("timed", upper, timeout=30)
        task = asyncio.create_task(worker.run(concurrency=2))
        try:
            await worker.wait_connected(timeout=DEADLINE)
            async with Client([any_server.address]) as client:
                assert await client.run("timed", "in time") == b"IN TIME"
                workers = await client.admin("workers")
                assert any(line.endswith(b" timed") and b" timed " in line for line in workers.lines), workers.lines
        finally:
            await worker.stop(timeout=DEADLINE)
            await asyncio.wait_for(task, DEADLINE)

    run(body())


def test_worker_rejects_zero_concurrency(geartrain_server):
    async def body():
        with pytest.raises(ValueError):
            await Worker([geartrain_server.address]).run(concurrency=0)

    run(body())


def test_worker_run_twice_is_refused_and_run_again_after_stop(geartrain_server):
    async def body():
        worker = Worker([geartrain_server.address])
        worker.register("again", lambda job: job.arguments)
        first = asyncio.ensure_future(worker.run())
        await worker.wait_connected(timeout=DEADLINE)
        links = list(worker.links)
        with pytest.raises(RuntimeError, match="already running"):
            await worker.run()
        assert worker.links == links  # the running links were neither replaced nor leaked
        await worker.stop(timeout=DEADLINE)
        await asyncio.wait_for(first, DEADLINE)

        second = asyncio.ensure_future(worker.run())
        try:
            await worker.wait_connected(timeout=DEADLINE)
            async with Client([geartrain_server.address]) as client:
                assert await client.run("again", b"twice") == b"twice"
        finally:
            await worker.stop(timeout=DEADLINE)
            await asyncio.wait_for(second, DEADLINE)

    run(body())
