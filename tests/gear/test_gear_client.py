"""gear.Client against geartrain's server and gearmand: hooks, job kinds, background jobs, precedence, unique,
exceptions, status queries, waiting for completion, lost connections and several servers."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest's importlib mode does not put this directory on sys.path
pytest.register_assert_rewrite("gear_support")
from gear_support import WAIT, FakeServer, pool, reverse, status_of, wait_until  # noqa: E402, F401

import gear  # noqa: E402
from gear import constants  # noqa: E402

from conftest import free_port  # noqa: E402


class RecordingClient(gear.Client):
    """A subclass as Zuul and Nodepool write them: every hook calls super() and records what it saw."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events: list[tuple[str, object]] = []
        self.changed = threading.Condition()

    def _record(self, name, job):
        with self.changed:
            self.events.append((name, job))
            self.changed.notify_all()
        return job

    def handleJobCreated(self, packet):
        return self._record("created", super().handleJobCreated(packet))

    def handleWorkComplete(self, packet):
        return self._record("complete", super().handleWorkComplete(packet))

    def handleWorkFail(self, packet):
        return self._record("fail", super().handleWorkFail(packet))

    def handleWorkException(self, packet):
        return self._record("exception", super().handleWorkException(packet))

    def handleWorkStatus(self, packet):
        job = super().handleWorkStatus(packet)
        return self._record("status", (job, job.numerator, job.denominator, job.fraction_complete))

    def handleWorkData(self, packet):
        job = super().handleWorkData(packet)
        return self._record("data", (job, list(job.data)))

    def handleWorkWarning(self, packet):
        job = super().handleWorkWarning(packet)
        return self._record("warning", (job, list(job.data), job.warning))

    def handleStatusRes(self, packet):
        job = super().handleStatusRes(packet)
        return self._record("status_res", (job, job.known, job.running, job.numerator, job.denominator))

    def handleDisconnect(self, job):
        return self._record("disconnect", super().handleDisconnect(job))

    def names(self):
        return [name for name, _ in self.events]

    def wait_for(self, name, timeout=WAIT):
        with self.changed:
            ok = self.changed.wait_for(lambda: name in self.names(), timeout)
        assert ok, f"no {name} event; got {self.names()}"
        return next(value for n, value in self.events if n == name)


def test_subclassed_client_hooks_see_every_step_and_return_the_job(any_server, pool):  # noqa: F811
    release = threading.Event()

    def work(job):
        job.sendWorkStatus(1, 4)
        job.sendWorkData(b"partial ")
        job.sendWorkWarning(b"careful ")
        release.wait(WAIT)
        job.sendWorkComplete(b"done")

    worker = pool.worker(any_server, "steps")
    pool.serve(worker, work)
    client = pool.client(any_server, cls=RecordingClient)
    job = gear.Job("steps", b"x")
    client.submitJob(job)
    assert client.wait_for("created") is job
    status_job, numerator, denominator, fraction = client.wait_for("status")
    assert status_job is job and (numerator, denominator, fraction) == (b"1", b"4", 0.25)
    data_job, data = client.wait_for("data")
    assert data_job is job and data == [b"partial "]
    warning_job, data, warning = client.wait_for("warning")
    assert warning_job is job and warning and data == [b"partial ", b"careful "]
    assert not job.complete and job.waitForCompletion(0.05) is False
    release.set()
    assert client.wait_for("complete") is job
    assert job.waitForCompletion(WAIT)
    assert job.complete and not job.failure and not job.disconnect
    assert job.data == [b"partial ", b"careful ", b"done"]
    assert client.names() == ["created", "status", "data", "warning", "complete"]
    assert job.handle not in job.connection.related_jobs


def test_work_fail_reaches_the_hook(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "failing")
    pool.serve(worker, lambda job: job.sendWorkFail())
    client = pool.client(any_server, cls=RecordingClient)
    job = gear.Job("failing", b"")
    client.submitJob(job)
    assert client.wait_for("fail") is job
    assert job.waitForCompletion(WAIT) and job.complete and job.failure and job.exception is None


def test_work_exception_with_the_exceptions_option(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "raising")
    pool.serve(worker, lambda job: job.sendWorkException(b"Traceback: boom"))
    client = pool.client(any_server, cls=RecordingClient)
    assert client.setOption("exceptions") is True
    assert b"exceptions" in client.getConnection().options
    job = gear.Job("raising", b"")
    client.submitJob(job)
    assert client.wait_for("exception") is job
    assert job.waitForCompletion(WAIT)
    assert job.complete and job.failure and job.exception == b"Traceback: boom"


def test_without_the_exceptions_option_an_exception_arrives_as_a_failure(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "raising")
    pool.serve(worker, lambda job: job.sendWorkException(b"boom"))
    client = pool.client(any_server)
    job = gear.Job("raising", b"")
    client.submitJob(job)
    assert job.waitForCompletion(WAIT) and job.complete and job.failure


def test_text_job_and_text_worker_round_trip_utf8(any_server, pool):  # noqa: F811
    seen = []

    def work(job):
        seen.append((job.name, job.arguments, job.unique))
        job.sendWorkData("\u00e9t\u00e9 ")
        job.sendWorkComplete(job.arguments[::-1])

    worker = pool.worker(any_server, "text", cls=gear.TextWorker)
    pool.serve(worker, work)
    client = pool.client(any_server)
    job = gear.TextJob("text", "h\u00e9llo w\u00f6rld", unique="\u00fcnique")
    client.submitJob(job)
    assert job.waitForCompletion(WAIT)
    assert seen == [("text", "h\u00e9llo w\u00f6rld", "\u00fcnique")]
    assert job.data == ["\u00e9t\u00e9 ", "dlr\u00f6w oll\u00e9h"]
    assert all(isinstance(chunk, str) for chunk in job.data)


def test_binary_job_round_trip(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "bin")
    pool.serve(worker, lambda job: job.sendWorkComplete(job.arguments + b"\x00\xff"))
    client = pool.client(any_server)
    job = gear.BinaryJob(b"bin", b"\x00\x01")
    client.submitJob(job)
    assert job.waitForCompletion(WAIT) and job.data == [b"\x00\x01\x00\xff"]
    assert job.name == b"bin"


def test_background_job_runs_without_the_client_waiting(any_server, pool):  # noqa: F811
    done = threading.Event()
    seen = []

    def work(job):
        seen.append(job.arguments)
        job.sendWorkComplete(b"ignored")
        done.set()

    client = pool.client(any_server)
    job = gear.Job("bg", b"payload")
    client.submitJob(job, background=True)
    assert job.handle and job.connection is not None and not job.complete
    worker = pool.worker(any_server, "bg")
    pool.serve(worker, work)
    assert done.wait(WAIT) and seen == [b"payload"]
    wait_until(lambda: status_of(client, "bg")[0] == 0)
    assert not job.complete and job.data == []


@pytest.mark.parametrize("background", [True, False], ids=["background", "foreground"])
def test_precedence_orders_queued_jobs(any_server, pool, background):  # noqa: F811
    client = pool.client(any_server)
    jobs = []
    for name, precedence in (("low", gear.PRECEDENCE_LOW), ("normal", gear.PRECEDENCE_NORMAL),
                             ("high", gear.PRECEDENCE_HIGH), ("low2", gear.PRECEDENCE_LOW),
                             ("high2", gear.PRECEDENCE_HIGH)):
        job = gear.Job("prio", name)
        client.submitJob(job, background=background, precedence=precedence)
        jobs.append(job)
    assert status_of(client, "prio")[0] == 5
    worker = pool.worker(any_server, "prio")
    order = []
    for _ in range(5):
        got = worker.getJob()
        order.append(got.arguments)
        got.sendWorkComplete(b"ok")
    assert order == [b"high", b"high2", b"normal", b"low", b"low2"]
    if not background:
        for job in jobs:
            assert job.waitForCompletion(WAIT) and job.data == [b"ok"]


def test_unique_reaches_the_worker_and_duplicates_coalesce(any_server, pool):  # noqa: F811
    first_client = pool.client(any_server)
    second_client = pool.client(any_server)
    first = gear.Job("uniq", b"data", unique="same-unique")
    second = gear.Job("uniq", b"data", unique="same-unique")
    first_client.submitJob(first)
    second_client.submitJob(second)
    assert first.handle == second.handle
    plain = gear.Job("uniq", b"plain")
    first_client.submitJob(plain)
    worker = pool.worker(any_server, "uniq")
    got = {}
    for _ in range(2):
        job = worker.getJob()
        got[job.arguments] = job
    assert got[b"data"].unique == b"same-unique"
    assert got[b"plain"].unique is None
    for job in got.values():
        job.sendWorkComplete(job.arguments.upper())
    assert first.waitForCompletion(WAIT) and second.waitForCompletion(WAIT) and plain.waitForCompletion(WAIT)
    assert first.data == second.data == [b"DATA"] and plain.data == [b"PLAIN"]


def test_raw_get_status_packet_answered_in_handle_status_res(any_server, pool):  # noqa: F811
    client = pool.client(any_server, cls=RecordingClient)
    job = gear.Job("status-queued", b"")
    client.submitJob(job, background=True)
    packet = gear.Packet(constants.REQ, constants.GET_STATUS, job.handle)
    job.connection.sendPacket(packet)
    status_job, known, running, numerator, denominator = client.wait_for("status_res")
    assert status_job is job and known is True and running is False
    assert (job.known, job.running) == (True, False)


def test_get_status_waits_for_the_answer(any_server, pool):  # noqa: F811
    started = threading.Event()
    release = threading.Event()

    def work(job):
        job.sendWorkStatus(3, 10)
        started.set()
        release.wait(WAIT)
        job.sendWorkComplete()

    client = pool.client(any_server)
    job = gear.Job("status-running", b"")
    client.submitJob(job, background=True)
    assert client.getStatus(job, timeout=WAIT) is job
    assert (job.known, job.running) == (True, False)
    worker = pool.worker(any_server, "status-running")
    pool.serve(worker, work)
    assert started.wait(WAIT)
    wait_until(lambda: client.getStatus(job, timeout=WAIT).numerator == b"3")
    assert (job.known, job.running, job.denominator, job.fraction_complete) == (True, True, b"10", 0.3)
    release.set()
    wait_until(lambda: client.getStatus(job, timeout=WAIT).known is False)
    with pytest.raises(gear.ConfigurationError):
        client.getStatus(gear.Job("never-submitted", b""))


def test_wait_for_completion_times_out_then_returns(any_server, pool):  # noqa: F811
    client = pool.client(any_server)
    job = gear.Job("later", b"")
    client.submitJob(job)
    started = time.monotonic()
    assert job.waitForCompletion(0.2) is False
    assert time.monotonic() - started >= 0.15
    worker = pool.worker(any_server, "later")
    pool.serve(worker, reverse)
    assert job.waitForCompletion(WAIT) is True and job.complete


def test_lost_connection_calls_handle_disconnect_and_ends_the_wait(any_server, pool):  # noqa: F811
    client = pool.client(any_server, cls=RecordingClient)
    job = gear.Job("nobody-runs-this", b"")
    client.submitJob(job)
    waiter_result = []
    waiter = threading.Thread(target=lambda: waiter_result.append(job.waitForCompletion(WAIT)))
    waiter.start()
    any_server.stop()
    assert client.wait_for("disconnect") is job
    waiter.join(WAIT)
    assert waiter_result == [True]
    assert job.disconnect and job.failure and not job.complete
    wait_until(lambda: not client.active_connections)
    with pytest.raises(gear.NoConnectedServersError):
        client.submitJob(gear.Job("x", b""))


def test_several_servers_with_one_down(any_server, pool):  # noqa: F811
    dead_port = free_port()
    worker = pool.worker(None, "multi")
    worker.addServer("127.0.0.1", dead_port)
    worker.addServer(any_server.host, any_server.port)
    pool.serve(worker, reverse)
    client = pool.client()
    client.addServer("127.0.0.1", dead_port)
    client.addServer(any_server.host, any_server.port)
    client.waitForServer(WAIT)
    worker.waitForServer(WAIT)
    jobs = [gear.Job("multi", f"job {i}") for i in range(20)]
    for job in jobs:
        client.submitJob(job)
    for i, job in enumerate(jobs):
        assert job.waitForCompletion(WAIT) and job.data == [f"job {i}".encode()[::-1]]
    assert len(client.active_connections) == 1 and len(client.inactive_connections) == 1
    assert client.inactive_connections[0].port == dead_port


def test_jobs_spread_over_two_live_servers(server_factory, pool):  # noqa: F811
    servers = [server_factory("geartrain"), server_factory("gearmand")]
    worker = pool.worker(None, "spread")
    client = pool.client()
    for server in servers:
        worker.addServer(server.host, server.port)
        client.addServer(server.host, server.port)
    pool.serve(worker, reverse)
    wait_until(lambda: len(client.active_connections) == 2 and len(worker.active_connections) == 2)
    jobs = [gear.Job("spread", b"abc") for _ in range(10)]
    for job in jobs:
        client.submitJob(job)
    assert {job.connection.port for job in jobs} == {s.port for s in servers}
    for job in jobs:
        assert job.waitForCompletion(WAIT) and job.data == [b"cba"]


def test_many_concurrent_submitters_share_one_client(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "concurrent")
    pool.serve(worker, reverse)
    client = pool.client(any_server)
    errors = []
    results = {}

    def submit(i):
        try:
            for n in range(20):
                job = gear.Job("concurrent", f"{i}-{n}")
                client.submitJob(job)
                assert job.waitForCompletion(WAIT)
                results[(i, n)] = job.data
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert not errors
    assert len(results) == 120
    assert all(data == [f"{i}-{n}".encode()[::-1]] for (i, n), data in results.items())


def test_echo_and_standalone_connection(any_server):
    conn = gear.Connection(any_server.host, any_server.port)
    conn.connect()
    try:
        assert conn.echo(b"ping", timeout=WAIT) == b"ping"
        assert len(conn.echo(timeout=WAIT)) == 32
        request = gear.StatusAdminRequest()
        conn.sendAdminRequest(request, timeout=WAIT)
        assert request.response.endswith(b".\n")
        conn.sendPacket(gear.Packet(constants.REQ, constants.ECHO_REQ, b"raw"))
        packet = conn.readPacket()
        assert packet.ptype == constants.ECHO_RES and packet.data == b"raw" and packet.code == constants.RES
    finally:
        conn.disconnect()
    assert not conn.connected and conn.conn is None


def test_disconnecting_a_pool_connection_makes_the_client_reconnect(any_server, pool):  # noqa: F811
    client = pool.client(any_server, cls=RecordingClient)
    waiting = gear.Job("nobody-runs-this", b"")
    client.submitJob(waiting)
    conn = client.getConnection()
    conn.disconnect()
    assert client.wait_for("disconnect") is waiting and waiting.disconnect
    assert conn.related_jobs == {}
    client.waitForServer(WAIT)
    assert client.getConnection() is conn and conn.connected
    worker = pool.worker(any_server, "after-disconnect")
    pool.serve(worker, reverse)
    job = gear.Job("after-disconnect", b"abc")
    client.submitJob(job)
    assert job.waitForCompletion(WAIT) and job.data == [b"cba"]


def test_submit_jobs_pipelines_a_batch_and_every_job_has_its_handle(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "batch")
    pool.serve(worker, reverse)
    client = pool.client(any_server)
    jobs = [gear.Job("batch", f"job {i}", unique=f"u{i}") for i in range(300)]
    client.submitJobs(jobs)
    assert all(job.handle and job.connection is not None for job in jobs)
    assert len({job.handle for job in jobs}) == 300
    for i, job in enumerate(jobs):
        assert job.waitForCompletion(WAIT) and job.data == [f"job {i}".encode()[::-1]] and not job.failure


def test_submit_jobs_spreads_over_servers_and_runs_background_jobs(server_factory, pool):  # noqa: F811
    servers = [server_factory("geartrain"), server_factory("gearmand")]
    client = pool.client()
    for server in servers:
        client.addServer(server.host, server.port)
    wait_until(lambda: len(client.active_connections) == 2)
    jobs = [gear.Job("nobody_runs_this", b"x") for _ in range(10)]
    client.submitJobs(jobs, background=True)
    assert {job.connection.port for job in jobs} == {s.port for s in servers}
    assert all(job.handle for job in jobs)
    for job in jobs:
        status = client.getStatus(job)
        assert status.known and not status.running


def test_submit_jobs_checks_every_job_before_sending_any(any_server, pool):  # noqa: F811
    client = pool.client(any_server)
    good = gear.Job("checked", b"x")
    with pytest.raises(gear.InvalidDataError):
        client.submitJobs([good, gear.Job("checked", b"y", unique=b"bad\x00unique")])
    with pytest.raises(gear.ConfigurationError):
        client.submitJobs([good], precedence=7)
    assert good.handle is None and client.active_connections[0].pending_tasks == []


def test_submit_jobs_resubmits_what_a_silent_server_never_created(any_server, pool):  # noqa: F811
    stop = threading.Event()

    def silent(peer):
        peer.expect_packet(constants.SUBMIT_JOB)  # read the batch's first submit, answer nothing
        stop.wait(WAIT)

    fake = FakeServer(silent)
    client = pool.client()
    try:
        client.addServer(fake.host, fake.port)
        client.addServer(any_server.host, any_server.port)
        wait_until(lambda: len(client.active_connections) == 2)
        jobs = [gear.Job("resubmitted", f"job {i}") for i in range(6)]
        client.submitJobs(jobs, timeout=1.0)
        assert all(job.handle for job in jobs)
        assert {job.connection.port for job in jobs} == {any_server.port}
    finally:
        stop.set()
        fake.close()
    assert fake.error is None
