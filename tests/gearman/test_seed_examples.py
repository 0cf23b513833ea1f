"""Every example of shared/seeds/python-gearman-client.rst, run as written (Python 3 syntax)."""

from __future__ import annotations

import pickle
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest 9 does not put this directory on sys.path
pytest.register_assert_rewrite("gearman_helpers")
from gearman_helpers import dead_address, free_port, wait_for_workers  # noqa: E402

import gearman  # noqa: E402
from gearman import JOB_UNKNOWN  # noqa: E402

pytest_plugins = ["gearman_helpers"]  # fixtures: run_worker, server_kind, port_servers


def check_request_status(job_request):
    if job_request.complete:
        print(
            "Job %s finished!  Result: %s - %s"  # noqa: UP031 - the seed's code
            % (job_request.job.unique, job_request.state, job_request.result)
        )
    elif job_request.timed_out:
        print("Job %s timed out!" % job_request.unique)  # noqa: UP031
    elif job_request.state == JOB_UNKNOWN:
        print("Job %s connection failed!" % job_request.unique)  # noqa: UP031


def echo_worker(address: str) -> gearman.GearmanWorker:
    worker = gearman.GearmanWorker([address])
    worker.register_task("task_name", lambda worker, job: job.data.upper())
    worker.register_task("other_task", lambda worker, job: job.data[::-1])
    return worker


def test_blocking_call(any_server, run_worker, capsys):
    run_worker(echo_worker(any_server.address))
    # 'otherhost:4730' of the example is a second server that is down here: the client fails over.
    gm_client = gearman.GearmanClient([any_server.address, dead_address()])

    completed_job_request = gm_client.submit_job("task_name", "arbitrary binary data")
    check_request_status(completed_job_request)

    assert completed_job_request.state == gearman.JOB_COMPLETE
    assert completed_job_request.result == b"ARBITRARY BINARY DATA"
    assert completed_job_request.unique == completed_job_request.job.unique
    assert f"Job {completed_job_request.unique} finished!" in capsys.readouterr().out


def test_high_priority_background_call(any_server, capsys):
    gm_client = gearman.GearmanClient([any_server.address, dead_address()])

    submitted_job_request = gm_client.submit_job(
        "task_name", "arbitrary binary data", priority=gearman.PRIORITY_HIGH, background=True
    )
    check_request_status(submitted_job_request)

    assert submitted_job_request.state == gearman.JOB_CREATED
    assert submitted_job_request.complete
    assert "finished!" in capsys.readouterr().out
    admin = gearman.GearmanAdminClient([any_server.address])
    assert [job["handle"] for job in admin.get_jobs()] == [submitted_job_request.job.handle]


def test_submit_multiple_jobs_then_wait_until_completed(any_server, run_worker, capsys):
    run_worker(echo_worker(any_server.address))
    gm_client = gearman.GearmanClient([any_server.address])

    list_of_jobs = [
        dict(task="task_name", data="binary data"),
        dict(task="other_task", data="other binary data"),
    ]
    submitted_requests = gm_client.submit_multiple_jobs(list_of_jobs, background=False, wait_until_complete=False)
    assert all(request.state in (gearman.JOB_CREATED, gearman.JOB_COMPLETE) for request in submitted_requests)

    completed_requests = gm_client.wait_until_jobs_completed(submitted_requests, poll_timeout=20.0)
    for completed_job_request in completed_requests:
        check_request_status(completed_job_request)

    assert [r.result for r in completed_requests] == [b"BINARY DATA", b"atad yranib rehto"]
    assert capsys.readouterr().out.count("finished!") == 2


def test_recovering_from_failed_connections(server_kind, port_servers, run_worker):
    port = free_port()
    gm_client = gearman.GearmanClient([f"localhost:{port}"])

    list_of_jobs = [
        dict(task="task_name", data="task binary string"),
        dict(task="other_task", data="other binary string"),
    ]
    failed_requests = gm_client.submit_multiple_jobs(list_of_jobs, background=False)

    assert all(request.state == JOB_UNKNOWN for request in failed_requests), "All connections didn't fail!"

    # The server comes up, and a worker with it.
    server = port_servers(server_kind, port)
    run_worker(echo_worker(server.address))
    wait_for_workers(server.address, "other_task")

    retried_connection_failed_requests = gm_client.submit_multiple_requests(
        failed_requests, wait_until_complete=True, poll_timeout=1.0
    )
    # (the seed names this list retried_requests on the next line, a NameError as printed)
    retried_requests = retried_connection_failed_requests
    timed_out_requests = [job_request for job_request in retried_requests if job_request.timed_out]

    retried_timed_out_requests = gm_client.submit_multiple_requests(
        timed_out_requests, wait_until_complete=True, poll_timeout=4.0
    )

    assert not any(request.timed_out for request in retried_timed_out_requests)
    assert [r.state for r in failed_requests] == [gearman.JOB_COMPLETE, gearman.JOB_COMPLETE]
    assert [r.result for r in failed_requests] == [b"TASK BINARY STRING", b"gnirts yranib rehto"]


def test_get_job_status_and_statuses(any_server, run_worker):
    release = threading.Event()
    started = threading.Event()

    def slow(worker, job):
        worker.send_job_status(job, 1, 4)
        started.set()
        release.wait(20)
        return b"done"

    worker = gearman.GearmanWorker([any_server.address])
    worker.register_task("slow", slow)
    gm_client = gearman.GearmanClient([any_server.address])
    queued = gm_client.submit_job("nobody_does_this", b"x", background=True)
    running = gm_client.submit_job("slow", b"x", background=True)
    run_worker(worker)
    try:
        assert started.wait(20)
        # The worker's WORK_STATUS and our GET_STATUS travel on different connections: the server may
        # answer before it has read the status, so ask again (within a deadline) until it has.
        deadline = time.monotonic() + 20
        while True:
            status_request = gm_client.get_job_status(running, poll_timeout=5.0)
            if running.status.get("numerator") or time.monotonic() > deadline:
                break
        assert status_request is running and not running.timed_out
        assert running.status["handle"] == running.job.handle
        assert running.status["known"] and running.status["running"]
        assert (running.status["numerator"], running.status["denominator"]) == (1, 4)

        both = gm_client.get_job_statuses([queued, running], poll_timeout=5.0)
        assert [r.timed_out for r in both] == [False, False]
        assert queued.status["known"] and not queued.status["running"]
    finally:
        release.set()


class PickleDataEncoder(gearman.DataEncoder):
    @classmethod
    def encode(cls, encodable_object):
        return pickle.dumps(encodable_object)

    @classmethod
    def decode(cls, decodable_string):
        return pickle.loads(decodable_string)


class PickleExampleClient(gearman.GearmanClient):
    data_encoder = PickleDataEncoder


class PickleExampleWorker(gearman.GearmanWorker):
    data_encoder = PickleDataEncoder


def test_pickle_data_encoder_exchanges_python_objects(any_server, run_worker):
    def describe(worker, job):
        worker.send_job_data(job, ["partial", 1])
        return {"got": job.data, "keys": sorted(job.data)}

    worker = PickleExampleWorker([any_server.address])
    worker.register_task("task_name", describe)
    run_worker(worker)

    my_python_object = {"hello": "there"}

    gm_client = PickleExampleClient([any_server.address])
    request = gm_client.submit_job("task_name", my_python_object)

    assert request.result == {"got": {"hello": "there"}, "keys": ["hello"]}
    assert list(request.data_updates) == [["partial", 1]]
