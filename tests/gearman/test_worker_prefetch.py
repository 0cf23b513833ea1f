"""GearmanWorker(prefetch=True): the next job is grabbed while one runs, and never a job the worker cannot start."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest 9 does not put this directory on sys.path
pytest.register_assert_rewrite("gearman_helpers")
from gearman_helpers import DEADLINE, wait_for_workers, wait_until  # noqa: E402

import gearman  # noqa: E402

pytest_plugins = ["gearman_helpers"]  # fixtures: run_worker


def running(address: str, task: str) -> int:
    """Jobs of task the server has assigned to workers (its status listing's "running" column)."""
    for row in gearman.GearmanAdminClient([address]).get_status():
        if row["task"] == task:
            return row["running"]
    return 0


def queue(address: str, task: str, count: int) -> tuple[gearman.GearmanClient, list]:
    """Foreground jobs the server holds before any worker is there; the client waits for them later."""
    client = gearman.GearmanClient([address])
    requests = client.submit_multiple_jobs(
        [{"task": task, "data": b"%d" % n, "unique": f"{task}-{n}"} for n in range(count)],
        wait_until_complete=False, poll_timeout=DEADLINE,
    )
    assert all(r.state == gearman.JOB_CREATED for r in requests)
    return client, requests


def remaining_jobs_by_second_worker(address, run_worker, task, client, requests):
    """A plain worker for task, then wait for every request: the ones left over run there."""
    second = gearman.GearmanWorker([address])
    second.register_task(task, lambda worker, job: b"w2:" + job.data)
    run_worker(second)
    client.wait_until_jobs_completed(requests, poll_timeout=DEADLINE)
    return [(r.state, r.result) for r in requests]


@pytest.mark.parametrize("prefetch", [False, True])
def test_prefetch_holds_the_next_job_while_one_runs_and_is_off_by_default(any_server, run_worker, prefetch):
    release = threading.Event()

    def wait_for_release(worker, job):
        assert release.wait(DEADLINE)
        return job.data

    client, requests = queue(any_server.address, "gm_pf_hold", 3)
    worker = gearman.GearmanWorker([any_server.address], **({"prefetch": True} if prefetch else {}))
    assert worker.prefetch is prefetch
    worker.register_task("gm_pf_hold", wait_for_release)
    run_worker(worker)
    # While the first job runs the server has handed out two jobs with prefetch, one without.
    wait_until(lambda: running(any_server.address, "gm_pf_hold") == (2 if prefetch else 1))
    release.set()
    client.wait_until_jobs_completed(requests, poll_timeout=DEADLINE)
    assert [(r.state, r.result) for r in requests] == [(gearman.JOB_COMPLETE, b"%d" % n) for n in range(3)]


def test_prefetched_job_of_a_task_unregistered_meanwhile_goes_back_to_the_server(any_server, run_worker):
    """The job grabbed while the first one ran can no longer start: it is requeued, not failed or kept.

    Two tasks, one job each; whichever job runs first unregisters the other task, whose job is already assigned
    to this worker (prefetched). (gearmand requeues a worker's jobs of a function on its CANT_DO by itself;
    geartrain leaves that to the worker, so without the rule that job would be failed there.)
    """
    tasks = ("gm_pf_x", "gm_pf_y")

    def run_then_drop_the_other_task(worker, job):
        worker.unregister_task(tasks[1 - tasks.index(job.task)])
        return b"w1:" + job.data

    client = gearman.GearmanClient([any_server.address])
    requests = client.submit_multiple_jobs(
        [{"task": task, "data": task.encode()} for task in tasks], wait_until_complete=False, poll_timeout=DEADLINE
    )
    first = gearman.GearmanWorker([any_server.address], prefetch=True)
    for task in tasks:
        first.register_task(task, run_then_drop_the_other_task)
    run_worker(first)
    wait_until(lambda: any(r.complete for r in client.wait_until_jobs_completed(requests, poll_timeout=0.1)))
    second = gearman.GearmanWorker([any_server.address])
    for task in tasks:
        second.register_task(task, lambda worker, job: b"w2:" + job.data)
    run_worker(second)
    client.wait_until_jobs_completed(requests, poll_timeout=DEADLINE)
    assert all(r.state == gearman.JOB_COMPLETE for r in requests)
    assert sorted(r.result[:3] for r in requests) == [b"w1:", b"w2:"]


def test_jobs_held_when_work_returns_go_back_to_the_server(any_server, run_worker):
    task = "gm_pf_stop"

    class OneJobWorker(gearman.GearmanWorker):
        def after_job(self) -> bool:
            return False

    client, requests = queue(any_server.address, task, 2)
    first = OneJobWorker([any_server.address], prefetch=True)
    first.register_task(task, lambda worker, job: b"w1:" + job.data)
    thread = threading.Thread(target=first.work, kwargs={"poll_timeout": 1.0}, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert remaining_jobs_by_second_worker(any_server.address, run_worker, task, client, requests) == [
        (gearman.JOB_COMPLETE, b"w1:0"),
        (gearman.JOB_COMPLETE, b"w2:1"),
    ]


def test_a_prefetching_worker_runs_a_stream_of_jobs_each_once(any_server, run_worker):
    ran: list[bytes] = []

    def record(worker, job):
        ran.append(job.data)
        return job.data[::-1]

    worker = gearman.GearmanWorker([any_server.address], prefetch=True)
    worker.register_task("gm_pf_stream", record)
    run_worker(worker)
    wait_for_workers(any_server.address, "gm_pf_stream")
    client = gearman.GearmanClient([any_server.address])
    for start in (0, 200):  # two batches: the worker sleeps in between and is woken again
        requests = client.submit_multiple_jobs(
            [{"task": "gm_pf_stream", "data": b"job-%d" % n} for n in range(start, start + 200)],
            poll_timeout=DEADLINE,
        )
        assert [r.result for r in requests] == [(b"job-%d" % n)[::-1] for n in range(start, start + 200)]
    assert sorted(ran) == sorted(b"job-%d" % n for n in range(400))
