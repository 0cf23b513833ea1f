"""GearmanWorker and GearmanAdminClient behaviour: failures that do not stop work(), updates, reconnects."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest 9 does not put this directory on sys.path
pytest.register_assert_rewrite("gearman_helpers")
from gearman_helpers import free_port, wait_for_workers, wait_until  # noqa: E402

import gearman  # noqa: E402
from gearman.errors import AdminCommandError  # noqa: E402

pytest_plugins = ["gearman_helpers"]  # fixtures: run_worker, server_kind, port_servers


def test_task_returning_none_completes_with_empty_data_and_worker_keeps_working(any_server, run_worker):
    worker = gearman.GearmanWorker([any_server.address])
    worker.register_task("gm_none", lambda worker, job: None)
    worker.register_task("gm_echo", lambda worker, job: job.data)
    thread = run_worker(worker)
    client = gearman.GearmanClient([any_server.address])

    first = client.submit_job("gm_none", b"x", poll_timeout=20)
    second = client.submit_job("gm_echo", b"still here", poll_timeout=20)

    assert (first.state, first.result, first.timed_out) == (gearman.JOB_COMPLETE, b"", False)
    assert second.result == b"still here"
    assert thread.thread.is_alive()


def test_task_that_raises_reaches_the_client_as_work_exception(any_server, run_worker):
    def boom(worker, job):
        raise ValueError("bad input " + job.data.decode())

    worker = gearman.GearmanWorker([any_server.address])
    worker.register_task("gm_boom", boom)
    worker.register_task("gm_echo", lambda worker, job: job.data)
    thread = run_worker(worker)
    client = gearman.GearmanClient([any_server.address])

    failed = client.submit_job("gm_boom", b"42", poll_timeout=20)
    assert failed.state == gearman.JOB_FAILED and failed.complete and not failed.timed_out
    assert failed.exception == b"ValueError: bad input 42"
    assert failed.result is None

    after = client.submit_job("gm_echo", b"next job", poll_timeout=20)
    assert after.result == b"next job" and thread.thread.is_alive()


def test_result_the_encoder_cannot_send_fails_the_job_not_the_worker(any_server, run_worker):
    worker = gearman.GearmanWorker([any_server.address])
    worker.register_task("gm_int", lambda worker, job: 42)  # the default DataEncoder sends bytes or str
    worker.register_task("gm_echo", lambda worker, job: job.data)
    run_worker(worker)
    client = gearman.GearmanClient([any_server.address])

    failed = client.submit_job("gm_int", b"x", poll_timeout=20)
    assert failed.state == gearman.JOB_FAILED
    assert b"TypeError" in failed.exception
    assert client.submit_job("gm_echo", b"ok", poll_timeout=20).result == b"ok"


def test_updates_from_the_task_reach_the_request(any_server, run_worker):
    def chatty(worker, job):
        worker.send_job_data(job, b"data 1")
        worker.send_job_warning(job, "warning 1")
        worker.send_job_status(job, 3, 10)
        worker.send_job_data(job, b"data 2")
        return b"finished"

    worker = gearman.GearmanWorker([any_server.address])
    worker.register_task("gm_chatty", chatty)
    run_worker(worker)
    request = gearman.GearmanClient([any_server.address]).submit_job("gm_chatty", b"", poll_timeout=20)

    assert request.result == b"finished"
    assert list(request.data_updates) == [b"data 1", b"data 2"]
    assert list(request.warning_updates) == [b"warning 1"]
    assert (request.status["numerator"], request.status["denominator"]) == (3, 10)


def test_explicit_failure_from_the_task_is_final(any_server, run_worker):
    def refuse(worker, job):
        worker.send_job_failure(job)
        return b"ignored: the job already failed"

    worker = gearman.GearmanWorker([any_server.address])
    worker.register_task("gm_refuse", refuse)
    run_worker(worker)
    request = gearman.GearmanClient([any_server.address]).submit_job("gm_refuse", b"", poll_timeout=20)
    assert request.state == gearman.JOB_FAILED and request.exception is None and request.result is None


def test_hooks_run_around_each_job(any_server, run_worker):
    calls = []

    class HookedWorker(gearman.GearmanWorker):
        def on_job_execute(self, current_job):
            calls.append(("execute", current_job.data))
            return super().on_job_execute(current_job)

        def on_job_complete(self, current_job, job_result):
            calls.append(("complete", job_result))
            return super().on_job_complete(current_job, job_result + b"+hook")

        def on_job_exception(self, current_job, exc_info):
            calls.append(("exception", exc_info[0].__name__))
            return super().on_job_exception(current_job, exc_info)

        def after_job(self):
            calls.append(("after_job",))
            return True

    def task(worker, job):
        if job.data == b"bad":
            raise KeyError(job.data)
        return job.data

    worker = HookedWorker([any_server.address])
    worker.register_task("gm_hooked", task)
    run_worker(worker)
    client = gearman.GearmanClient([any_server.address])
    assert client.submit_job("gm_hooked", b"good", poll_timeout=20).result == b"good+hook"
    assert client.submit_job("gm_hooked", b"bad", poll_timeout=20).state == gearman.JOB_FAILED
    wait_until(lambda: len(calls) >= 6)  # after_job runs once the result is on its way to the client
    assert calls == [
        ("execute", b"good"),
        ("complete", b"good"),
        ("after_job",),
        ("execute", b"bad"),
        ("exception", "KeyError"),
        ("after_job",),
    ]


def test_worker_reconnects_after_a_server_restart(server_kind, port_servers, run_worker):
    port = free_port()
    first = port_servers(server_kind, port)
    worker = gearman.GearmanWorker([first.address])
    worker.set_client_id("gm-reconnecting")
    worker.register_task("gm_echo", lambda worker, job: job.data)
    thread = run_worker(worker, poll_timeout=1.0)
    assert gearman.GearmanClient([first.address]).submit_job("gm_echo", b"one", poll_timeout=20).result == b"one"

    first.stop()
    second = port_servers(server_kind, port)
    wait_for_workers(second.address, "gm_echo")

    request = gearman.GearmanClient([second.address]).submit_job("gm_echo", b"two", poll_timeout=20)
    assert request.result == b"two"
    workers = gearman.GearmanAdminClient([second.address]).get_workers()
    assert any(w["client_id"] == "gm-reconnecting" and w["tasks"] == ("gm_echo",) for w in workers)
    assert thread.thread.is_alive()


def test_worker_started_before_its_server_connects_when_it_comes_up(server_kind, port_servers, run_worker):
    port = free_port()
    worker = gearman.GearmanWorker([f"127.0.0.1:{port}"])
    worker.register_task("gm_late", lambda worker, job: b"late " + job.data)
    run_worker(worker, poll_timeout=1.0)
    server = port_servers(server_kind, port)
    request = gearman.GearmanClient([server.address]).submit_job("gm_late", b"ok", poll_timeout=20)
    assert request.result == b"late ok"


def test_shutdown_from_another_thread_ends_work_promptly(any_server):
    worker = gearman.GearmanWorker([any_server.address])
    worker.register_task("gm_idle", lambda worker, job: None)
    done = threading.Event()

    def run():
        worker.work(poll_timeout=None)  # no timeout at all: only shutdown() can end it
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for_workers(any_server.address, "gm_idle")
    worker.shutdown()
    assert done.wait(20)
    thread.join(20)


def test_unregister_task_stops_advertising_it(any_server, run_worker):
    worker = gearman.GearmanWorker([any_server.address])
    worker.register_task("gm_keep", lambda worker, job: b"kept")
    worker.register_task("gm_drop", lambda worker, job: b"dropped")
    worker.unregister_task("gm_drop")
    run_worker(worker)
    wait_for_workers(any_server.address, "gm_keep")
    admin = gearman.GearmanAdminClient([any_server.address])
    tasks = {w["tasks"] for w in admin.get_workers()}
    assert ("gm_keep",) in tasks and not any("gm_drop" in t for t in tasks)


def test_admin_client_commands(any_server):
    admin = gearman.GearmanAdminClient([any_server.address])
    client = gearman.GearmanClient([any_server.address])
    queued = client.submit_job("gm_admin", b"x", unique="admin-unique", background=True)

    assert admin.ping_server() >= 0
    assert admin.get_version()
    assert admin.get_pid().isdigit()
    assert {"task": "gm_admin", "queued": 1, "running": 0, "workers": 0} in admin.get_status()
    assert [job["handle"] for job in admin.get_jobs()] == [queued.job.handle]
    assert admin.get_unique_jobs() == ("admin-unique",)
    assert admin.cancel_job(queued.job.handle) == "OK"
    wait_until(lambda: not any(job["job_queued"] for job in admin.get_jobs()))
    with pytest.raises(AdminCommandError):
        admin.cancel_job("H:nowhere:1")


def test_result_of_the_last_job_is_sent_before_work_returns(any_server):
    """Results wait for the loop (to share a write with the next GRAB_JOB); leaving work() must not drop them."""

    class OneJobWorker(gearman.GearmanWorker):
        def after_job(self):
            return False

    big = bytes(range(256)) * 4096  # 1 MiB: more than one socket write
    worker = OneJobWorker([any_server.address])
    worker.register_task("gm_last", lambda worker, job: big)
    thread = threading.Thread(target=worker.work, kwargs={"poll_timeout": 1.0}, daemon=True)
    thread.start()
    wait_for_workers(any_server.address, "gm_last")
    request = gearman.GearmanClient([any_server.address]).submit_job("gm_last", b"x", poll_timeout=20)
    assert (request.state, request.result == big) == (gearman.JOB_COMPLETE, True)
    thread.join(20)
    assert not thread.is_alive(), "after_job() returned False but work() did not return"


def test_shutdown_called_by_the_task_still_sends_its_result(any_server):
    worker = gearman.GearmanWorker([any_server.address])

    def stop_then_answer(w, job):
        w.shutdown()
        return b"answered " + job.data

    worker.register_task("gm_stop", stop_then_answer)
    thread = threading.Thread(target=worker.work, kwargs={"poll_timeout": 1.0}, daemon=True)
    thread.start()
    wait_for_workers(any_server.address, "gm_stop")
    request = gearman.GearmanClient([any_server.address]).submit_job("gm_stop", b"once", poll_timeout=20)
    assert request.result == b"answered once"
    thread.join(20)
    assert not thread.is_alive()
