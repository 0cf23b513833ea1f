"""gear.Worker against geartrain's server and gearmand: registration, the grab/sleep/wake cycle, interruption,
several threads, and reconnection with re-registration after a server restart."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest's importlib mode does not put this directory on sys.path
pytest.register_assert_rewrite("gear_support")
from gear_support import (  # noqa: E402
    WAIT,
    FakeServer,
    admin,
    pool,  # noqa: F401
    reverse,
    start_on_port,
    status_of,
    wait_until,
)

import gear  # noqa: E402
from gear import constants  # noqa: E402


def test_register_function_with_an_int_timeout_gets_jobs(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server)
    worker.registerFunction("timed", timeout=30)
    assert worker.functions[b"timed"].timeout == 30
    pool.serve(worker, reverse)
    client = pool.client(any_server)
    wait_until(lambda: status_of(client, "timed"))
    job = gear.Job("timed", b"abc")
    client.submitJob(job)
    assert job.waitForCompletion(WAIT) and job.data == [b"cba"]


def test_functions_and_client_id_show_in_workers(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "one", client_id="my-worker")
    worker.registerFunction(b"two")
    client = pool.client(any_server)
    wait_until(lambda: b"my-worker : one two" in admin(client, gear.WorkersAdminRequest())
               or b"my-worker : two one" in admin(client, gear.WorkersAdminRequest()))
    worker.unRegisterFunction("one")
    wait_until(lambda: b"my-worker : two\n" in admin(client, gear.WorkersAdminRequest()))
    worker.setFunctions([gear.FunctionRecord("three"), gear.FunctionRecord("four", 10)])
    assert set(worker.functions) == {b"three", b"four"}
    wait_until(lambda: status_of(client, "four") and status_of(client, "four")[2] == 1)
    response = admin(client, gear.WorkersAdminRequest())
    line = next(line for line in response.split(b"\n") if b"my-worker" in line)
    assert sorted(line.split(b" : ")[1].split()) == [b"four", b"three"]
    with pytest.raises(gear.InvalidDataError):
        worker.setFunctions(["not a record"])


def test_no_grab_until_a_thread_waits_in_get_job(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "lazy")
    client = pool.client(any_server)
    wait_until(lambda: status_of(client, "lazy"))
    job = gear.Job("lazy", b"abc")
    client.submitJob(job)
    time.sleep(0.3)
    assert status_of(client, "lazy") == (1, 0, 1)  # queued, not running: nobody grabbed it
    assert worker.active_connections[0].state == "IDLE"
    got = worker.getJob()
    assert got.handle == job.handle and got.arguments == b"abc"
    assert got.connection in worker.active_connections
    got.sendWorkComplete(b"ok")
    assert job.waitForCompletion(WAIT) and job.data == [b"ok"]


def test_worker_sleeps_after_no_job_and_noop_wakes_it(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "sleepy")
    got = []
    thread = threading.Thread(target=lambda: got.append(worker.getJob()), daemon=True)
    thread.start()
    wait_until(lambda: worker.active_connections[0].state == "SLEEP")
    client = pool.client(any_server)
    job = gear.Job("sleepy", b"wake up")
    client.submitJob(job)
    thread.join(WAIT)
    assert got and got[0].arguments == b"wake up"
    got[0].sendWorkComplete()
    assert job.waitForCompletion(WAIT)


def test_several_threads_in_get_job_each_get_one_job(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "parallel")
    results = []
    lock = threading.Lock()

    def loop():
        job = worker.getJob()
        with lock:
            results.append(job.arguments)
        job.sendWorkComplete(job.arguments)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: worker.waiting_for_jobs == 4)
    client = pool.client(any_server)
    jobs = [gear.Job("parallel", f"{i}") for i in range(4)]
    for job in jobs:
        client.submitJob(job)
    for thread in threads:
        thread.join(WAIT)
    assert sorted(results) == [b"0", b"1", b"2", b"3"]
    for job in jobs:
        assert job.waitForCompletion(WAIT)


def test_stop_waiting_for_jobs_interrupts_get_job(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "interrupted")
    outcome = []

    def wait():
        try:
            worker.getJob()
            outcome.append("job")
        except gear.InterruptedError:
            outcome.append("interrupted")

    threads = [threading.Thread(target=wait, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    wait_until(lambda: worker.waiting_for_jobs == 2)
    worker.stopWaitingForJobs()
    for thread in threads:
        thread.join(WAIT)
    assert outcome == ["interrupted", "interrupted"]
    assert worker.waiting_for_jobs == 0
    # The worker still works afterwards.
    client = pool.client(any_server)
    job = gear.Job("interrupted", b"again")
    client.submitJob(job)
    got = worker.getJob()
    assert got.arguments == b"again"
    got.sendWorkComplete()


def test_shutdown_interrupts_get_job_and_later_calls(any_server):
    worker = gear.Worker("shutting-down")
    worker.addServer(any_server.host, any_server.port)
    worker.registerFunction("never")
    outcome = []

    def wait():
        try:
            worker.getJob()
        except gear.InterruptedError:
            outcome.append("interrupted")

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    wait_until(lambda: worker.waiting_for_jobs == 1)
    worker.shutdown()
    thread.join(WAIT)
    assert outcome == ["interrupted"]
    with pytest.raises(gear.InterruptedError):
        worker.getJob()
    assert not worker.poll_thread.is_alive()


def test_worker_reconnects_and_reregisters_after_the_server_restarts(any_server, pool):  # noqa: F811
    kind, host, port = any_server.kind, any_server.host, any_server.port
    worker = pool.worker(any_server, "phoenix", client_id="phoenix-worker")
    worker.registerFunction("phoenix-timed", timeout=60)
    pool.serve(worker, reverse)
    client = pool.client(any_server)
    job = gear.Job("phoenix", b"before")
    client.submitJob(job)
    assert job.waitForCompletion(WAIT) and job.data == [b"erofeb"]

    any_server.stop()
    wait_until(lambda: not worker.active_connections and not client.active_connections)
    restarted = start_on_port(kind, host, port)
    try:
        worker.waitForServer(WAIT)
        client.waitForServer(WAIT)
        # Client id and both abilities (CAN_DO and CAN_DO_TIMEOUT) were sent again on the new connection.
        wait_until(lambda: status_of(client, "phoenix") == (0, 0, 1))
        assert status_of(client, "phoenix-timed") == (0, 0, 1)
        line = next(line for line in admin(client, gear.WorkersAdminRequest()).split(b"\n")
                    if b"phoenix-worker" in line)
        assert sorted(line.split(b" : ")[1].split()) == [b"phoenix", b"phoenix-timed"]
        # The thread still waiting in getJob() grabs again on the new connection.
        for name in ("phoenix", "phoenix-timed"):
            after = gear.Job(name, b"after")
            client.submitJob(after)
            assert after.waitForCompletion(WAIT) and after.data == [b"retfa"], name
    finally:
        restarted.stop()


def test_reconnection_attempts_back_off(monkeypatch):
    """The delays the client draws double from reconnect_delay up to reconnect_delay_max, and each attempt waits
    its delay out (the rule itself: tests/unit/test_session.py; here, that gear.Client follows it)."""
    from gear import connection as connection_module
    from geartrain.protocol.pool import Backoff

    attempts, delays = [], []
    original_start, original_delay = connection_module._Connector.start, Backoff.next_delay

    def counting_start(self):
        attempts.append(time.monotonic())
        return original_start(self)

    def recorded_delay(self):
        nominal, delay = self.nominal, original_delay(self)
        if (self.initial, self.ceiling) == (0.02, 0.4):  # this test's client, not another test's left running
            delays.append((nominal, delay))
        return delay

    monkeypatch.setattr(connection_module._Connector, "start", counting_start)
    monkeypatch.setattr(Backoff, "next_delay", recorded_delay)

    class QuickClient(gear.Client):
        reconnect_delay = 0.02
        reconnect_delay_max = 0.4

    client = QuickClient()
    try:
        from conftest import free_port

        client.addServer("127.0.0.1", free_port())
        wait_until(lambda: len(attempts) >= 8 and len(delays) >= 7)
    finally:
        client.shutdown()
    assert [nominal for nominal, _ in delays[:7]] == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.32, 0.4, 0.4])
    assert all(nominal / 2 <= delay <= nominal for nominal, delay in delays)
    gaps = [b - a for a, b in zip(attempts, attempts[1:7], strict=False)]
    assert all(gap >= delay for gap, (_, delay) in zip(gaps, delays, strict=False))


def test_worker_resends_identity_and_abilities_on_every_connection():
    """On a scripted server: SET_CLIENT_ID then CAN_DO / CAN_DO_TIMEOUT (in milliseconds) on connect."""
    seen = []

    def script(peer):
        for _ in range(3):
            seen.append(peer.expect_packet())

    server = FakeServer(script)
    worker = gear.Worker("scripted")
    try:
        worker.registerFunction("plain")
        worker.registerFunction("timed", timeout=30)
        worker.addServer(server.host, server.port)
        server.thread.join(WAIT)
    finally:
        worker.shutdown()
        server.close()
    assert server.error is None
    assert [(p.ptype, p.args) for p in seen] == [
        (constants.SET_CLIENT_ID, (b"scripted",)),
        (constants.CAN_DO, (b"plain",)),
        (constants.CAN_DO_TIMEOUT, (b"timed", b"30000")),
    ]


def test_zuul_style_worker_delays_grabs_in_handle_noop(any_server, pool):  # noqa: F811
    class DelayingWorker(gear.TextWorker):
        noops = 0

        def handleNoop(self, packet):
            type(self).noops += 1
            time.sleep(0.01)  # Zuul's executor delays its grab by its current load
            return super().handleNoop(packet)

    worker = pool.worker(any_server, "delayed", cls=DelayingWorker)
    pool.serve(worker, lambda job: job.sendWorkComplete(job.arguments.upper()))
    wait_until(lambda: worker.active_connections[0].state == "SLEEP")
    client = pool.client(any_server)
    job = gear.TextJob("delayed", "text")
    client.submitJob(job)
    assert job.waitForCompletion(WAIT) and job.data == ["TEXT"]
    assert DelayingWorker.noops >= 1
    # A bare grab on every connection, as Zuul sends when it accepts work again, is harmless.
    worker._sendGrabJobUniq()
