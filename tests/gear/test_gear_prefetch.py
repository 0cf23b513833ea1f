"""gear.Worker's opt-in prefetch (new in this implementation) against geartrain's server and gearmand: the next
job is asked for while one runs, and the worker never takes a job it cannot start: stopWaitingForJobs() takes
back the credit it lent, and a prefetched job whose function was unregistered, or that the worker stopped
waiting for, or was shut down with, goes back to the server, which gives it to another worker."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest's importlib mode does not put this directory on sys.path
pytest.register_assert_rewrite("gear_support")
from gear_support import WAIT, pool, status_of, wait_until  # noqa: E402, F401

import gear  # noqa: E402


def submit(client: gear.Client, *payloads: bytes, name: str = "pf") -> list[gear.Job]:
    jobs = [gear.Job(name, data) for data in payloads]
    for job in jobs:
        client.submitJob(job)
    return jobs


def running(client: gear.Client, name: str = "pf") -> int:
    status = status_of(client, name)
    return status[1] if status else 0


def get_job_in_thread(worker: gear.Worker) -> tuple[threading.Thread, list]:
    got: list = []

    def run() -> None:
        try:
            got.append(worker.getJob())
        except gear.InterruptedError as exc:
            got.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, got


def one_running_one_prefetched(any_server, pool):  # noqa: F811
    """A prefetching worker running job "one" while job "two" waits in it: (worker, client, running job, the
    client's two jobs)."""
    worker = pool.worker(any_server, "pf", prefetch=True, client_id="prefetcher")
    client = pool.client(any_server)
    wait_until(lambda: status_of(client, "pf"))
    first, second = submit(client, b"one", b"two")
    got = worker.getJob()
    wait_until(lambda: not worker.job_queue.empty())
    return worker, client, got, first, second


def another_worker_runs(any_server, pool, job: gear.Job, arguments: bytes) -> None:  # noqa: F811
    """A second worker gets `job` (handed back by the first) and completes it."""
    other = pool.worker(any_server, "pf", client_id="other")
    again = other.getJob()
    assert again.handle == job.handle and again.arguments == arguments
    again.sendWorkComplete(b"2")
    assert job.waitForCompletion(WAIT) and job.data == [b"2"]


def test_prefetch_is_off_by_default(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "pf")
    assert worker.prefetch is False
    client = pool.client(any_server)
    wait_until(lambda: status_of(client, "pf"))
    first, second = submit(client, b"one", b"two")
    job = worker.getJob()
    time.sleep(0.3)
    assert status_of(client, "pf") == (2, 1, 1)  # the second job is not taken while the first runs
    job.sendWorkComplete(b"1")
    assert first.waitForCompletion(WAIT)


def test_prefetch_takes_the_next_job_while_one_runs(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "pf", prefetch=True)
    assert worker.prefetch is True
    client = pool.client(any_server)
    wait_until(lambda: status_of(client, "pf"))
    jobs = submit(client, b"one", b"two", b"three")
    got = worker.getJob()
    wait_until(lambda: not worker.job_queue.empty())  # the next job was asked for meanwhile
    assert running(client) == 2
    for _ in range(3):
        got.sendWorkComplete(got.arguments[::-1])
        if got.arguments != b"three":
            got = worker.getJob()
    for job in jobs:
        assert job.waitForCompletion(WAIT) and job.data == [job.arguments[::-1]]
    wait_until(lambda: running(client) == 0)


def test_prefetched_job_of_an_unregistered_function_goes_to_another_worker(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "keep", "pf", prefetch=True, client_id="prefetcher")
    client = pool.client(any_server)
    wait_until(lambda: status_of(client, "pf") and status_of(client, "keep"))
    (first,) = submit(client, b"one", name="keep")
    got = worker.getJob()
    assert got.handle == first.handle
    (second,) = submit(client, b"two")
    wait_until(lambda: not worker.job_queue.empty())  # the second job was prefetched
    worker.unRegisterFunction("pf")
    if any_server.kind == "geartrain":
        # It goes back only once the running job has ended (closing the connection now would requeue that one
        # too). gearmand requeues the jobs of a function a worker unregisters on its own.
        time.sleep(0.2)
        assert status_of(client, "pf")[:2] == (1, 1) and status_of(client, "keep")[:2] == (1, 1)
    got.sendWorkComplete(b"1")
    assert first.waitForCompletion(WAIT) and first.data == [b"1"] and not first.failure
    another_worker_runs(any_server, pool, second, b"two")


def test_stop_waiting_takes_back_the_credit_so_no_job_is_taken_after_it(any_server, pool):  # noqa: F811
    worker = pool.worker(any_server, "pf", prefetch=True, client_id="prefetcher")
    client = pool.client(any_server)
    wait_until(lambda: status_of(client, "pf"))
    (first,) = submit(client, b"one")
    got = worker.getJob()  # its credit's grab finds nothing: the worker sleeps, to be woken by a NOOP
    worker.stopWaitingForJobs()  # the thread will not call getJob() again
    (second,) = submit(client, b"two")
    time.sleep(0.3)
    assert status_of(client, "pf")[:2] == (2, 1)  # the second job waits in the server, not in the worker
    assert worker.job_queue.empty()
    got.sendWorkComplete(b"1")
    another_worker_runs(any_server, pool, second, b"two")
    assert first.waitForCompletion(WAIT)


def test_stop_waiting_hands_back_a_prefetched_job(any_server, pool):  # noqa: F811
    worker, client, got, first, second = one_running_one_prefetched(any_server, pool)
    worker.stopWaitingForJobs()
    got.sendWorkComplete(b"1")
    assert first.waitForCompletion(WAIT) and first.data == [b"1"] and not first.failure
    another_worker_runs(any_server, pool, second, b"two")
    # The worker may wait for jobs again afterwards, and takes new ones.
    thread, later = get_job_in_thread(worker)
    (third,) = submit(client, b"three")
    thread.join(WAIT)
    assert later and later[0].handle == third.handle
    later[0].sendWorkComplete(b"3")
    assert third.waitForCompletion(WAIT) and third.data == [b"3"]


def test_shutdown_hands_back_a_prefetched_job(any_server, pool):  # noqa: F811
    worker, client, got, first, second = one_running_one_prefetched(any_server, pool)
    got.sendWorkComplete(b"1")
    assert first.waitForCompletion(WAIT)
    worker.shutdown()
    another_worker_runs(any_server, pool, second, b"two")


def test_a_thread_waiting_in_get_job_takes_a_job_of_its_own(any_server, pool):  # noqa: F811
    # Two threads, one running a job (with a credit) and one waiting: a new job goes to the waiting thread.
    worker = pool.worker(any_server, "pf", prefetch=True)
    client = pool.client(any_server)
    wait_until(lambda: status_of(client, "pf"))
    (first,) = submit(client, b"one")
    got = worker.getJob()
    thread, waiting = get_job_in_thread(worker)
    (second,) = submit(client, b"two")
    thread.join(WAIT)
    assert waiting and waiting[0].handle == second.handle
    for job in (got, waiting[0]):
        job.sendWorkComplete(b"done")
    assert first.waitForCompletion(WAIT) and second.waitForCompletion(WAIT)
    # No thread waits: every job wanted is a credit's, one for each thread that ran a job.
    assert worker.waiting_for_jobs == worker._credits == 2
    worker.stopWaitingForJobs()
    assert worker.waiting_for_jobs == 0 and worker._credits == 0


def test_jobs_queued_from_a_connection_closed_to_hand_back_go_back_with_it(any_server, pool):  # noqa: F811
    # Two jobs run (two credits), so two jobs are prefetched from the one connection: one of a function then
    # unregistered, one of a function still registered. Handing the first back closes the connection, which
    # gives the server the second one back too: the worker must not also run the copy it holds.
    worker = pool.worker(any_server, "keep", "pf", prefetch=True, client_id="prefetcher")
    client = pool.client(any_server)
    wait_until(lambda: status_of(client, "pf") and status_of(client, "keep"))
    first, second = submit(client, b"one", b"two", name="keep")
    threads = [get_job_in_thread(worker) for _ in range(2)]  # two threads, each lent a credit
    for thread, _ in threads:
        thread.join(WAIT)
    running_jobs = [got[0] for _, got in threads]
    (third,) = submit(client, b"three")
    (fourth,) = submit(client, b"four", name="keep")
    wait_until(lambda: worker.job_queue.qsize() == 2)
    worker.unRegisterFunction("pf")
    for job in running_jobs:
        job.sendWorkComplete(job.arguments[::-1])
    assert first.waitForCompletion(WAIT) and second.waitForCompletion(WAIT)
    again = worker.getJob()  # "four", given out again after the reconnection
    assert again.handle == fourth.handle
    again.sendWorkComplete(b"4")
    assert fourth.waitForCompletion(WAIT) and fourth.data == [b"4"] and not fourth.failure
    other = pool.worker(any_server, "pf", client_id="other")
    moved = other.getJob()
    assert moved.handle == third.handle
    moved.sendWorkComplete(b"3")
    assert third.waitForCompletion(WAIT) and third.data == [b"3"]
    wait_until(lambda: status_of(client, "keep")[:2] == (0, 0) and status_of(client, "pf")[:2] == (0, 0))
    time.sleep(0.2)
    assert worker.job_queue.empty()  # no second copy of any job
