"""GearmanClient behaviour beyond the seed examples: timeouts, retries, failures, queue limits, pools."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest 9 does not put this directory on sys.path
pytest.register_assert_rewrite("gearman_helpers")
from gearman_helpers import dead_address, wait_for_workers, wait_until  # noqa: E402

import gearman  # noqa: E402
from gearman.connection import parse_host  # noqa: E402
from gearman.errors import ExceededConnectionAttempts, ServerUnavailable  # noqa: E402
from geartrain.protocol.pool import Ring  # noqa: E402

pytest_plugins = ["gearman_helpers"]  # fixtures: run_worker, server_kind, port_servers, dropping_listener


def unique_hashing_to(address: str, addresses: list[str]) -> str:
    """A unique whose server, on the ring over these "host:port" addresses, is ``address``."""
    ring = Ring((a, a) for a in addresses)
    for n in range(10_000):
        unique = f"u{n}"
        if ring.pick(unique.encode()) == address:
            return unique
    raise AssertionError("no unique found")


def test_poll_timeout_sets_timed_out_and_raises_nothing(any_server):
    client = gearman.GearmanClient([any_server.address])
    request = client.submit_job("gm_nobody_works_this", b"x", poll_timeout=0.3)
    assert request.timed_out
    assert request.state == gearman.JOB_CREATED and not request.complete

    requests = client.submit_multiple_jobs(
        [dict(task="gm_nobody_works_this", data=str(i)) for i in range(3)], poll_timeout=0.3
    )
    assert [r.timed_out for r in requests] == [True, True, True]
    again = client.wait_until_jobs_completed(requests, poll_timeout=0.1)
    assert all(r.timed_out and r.state == gearman.JOB_CREATED for r in again)


def test_no_reachable_server_raises_server_unavailable():
    client = gearman.GearmanClient([dead_address(), dead_address()])
    with pytest.raises(ServerUnavailable):
        client.submit_job("task", b"data")
    with pytest.raises(ServerUnavailable):
        gearman.GearmanClient([]).submit_job("task", b"data")
    with pytest.raises(ServerUnavailable):
        gearman.GearmanAdminClient([dead_address()]).get_status()

    # A batch reports per request instead: nothing was sent, nothing counted.
    requests = client.submit_multiple_jobs([dict(task="task", data=b"x")], background=True)
    assert requests[0].state == gearman.JOB_UNKNOWN
    assert requests[0].connection_attempts == 0 and not requests[0].timed_out


@pytest.mark.parametrize("max_retries", [0, 2])
def test_lost_connections_exceed_connection_attempts(dropping_listener, max_retries):
    client = gearman.GearmanClient([dropping_listener.address])
    with pytest.raises(ExceededConnectionAttempts):
        client.submit_job("task", b"data", max_retries=max_retries, poll_timeout=20)
    wait_until(lambda: dropping_listener.accepted == max_retries + 1)


def test_retry_goes_to_the_next_server_after_a_lost_connection(any_server, dropping_listener):
    unique = unique_hashing_to(dropping_listener.address, [dropping_listener.address, any_server.address])
    client = gearman.GearmanClient([any_server.address, dropping_listener.address])

    request = client.submit_job("gm_retry", b"data", unique=unique, background=True, max_retries=1)

    assert request.state == gearman.JOB_CREATED
    assert request.connection_attempts == 2
    assert request.job.connection.gearman_port == any_server.port
    assert dropping_listener.accepted == 1


def test_queue_full_error_fails_only_the_request_it_answers(any_server):
    client = gearman.GearmanClient([any_server.address])
    admin = gearman.GearmanAdminClient([any_server.address])
    first = client.submit_job("gm_full", b"first", background=True)  # the function now exists
    assert first.state == gearman.JOB_CREATED
    assert admin.send_maxqueue("gm_full", 1) == "OK"

    batch = [
        dict(task="gm_full", data=b"rejected 1"),
        dict(task="gm_open", data=b"accepted 1"),
        dict(task="gm_full", data=b"rejected 2"),
        dict(task="gm_open", data=b"accepted 2"),
        dict(task="gm_full", data=b"rejected 3"),
    ]
    requests = client.submit_multiple_jobs(batch, background=True)  # pipelined on one connection

    rejected, accepted = requests[0::2], requests[1::2]
    assert [r.state for r in rejected] == [gearman.JOB_FAILED] * 3
    assert all(r.error[0] == b"QUEUE_ERROR" and r.job.handle is None for r in rejected)
    assert not any(r.complete or r.timed_out for r in rejected)
    assert [r.state for r in accepted] == [gearman.JOB_CREATED] * 2
    handles = {first.job.handle, accepted[0].job.handle, accepted[1].job.handle}
    assert len(handles) == 3
    assert {job["handle"] for job in admin.get_jobs()} == handles


def test_send_maxqueue_zero_lifts_the_limit(any_server):
    client = gearman.GearmanClient([any_server.address])
    admin = gearman.GearmanAdminClient([any_server.address])
    client.submit_job("gm_limit", b"0", background=True)
    assert admin.send_maxqueue("gm_limit", 1) == "OK"
    assert client.submit_job("gm_limit", b"1", background=True).state == gearman.JOB_FAILED
    assert admin.send_maxqueue("gm_limit", 0) == "OK"
    assert client.submit_job("gm_limit", b"2", background=True).state == gearman.JOB_CREATED


def test_same_unique_goes_to_the_same_server_whatever_the_host_order(server_kind, server_factory):
    servers = [server_factory(server_kind) for _ in range(3)]
    addresses = [s.address for s in servers]
    one = gearman.GearmanClient(addresses)
    two = gearman.GearmanClient(list(reversed(addresses)))
    for n in range(6):
        unique = f"same-{n}"
        a = one.submit_job("gm_nobody", b"x", unique=unique, background=True)
        b = two.submit_job("gm_nobody", b"x", unique=unique, background=True)
        assert a.job.connection.address == b.job.connection.address
        assert a.job.handle == b.job.handle  # coalesced: the server already holds that unique


def test_pool_of_three_with_one_down(server_kind, server_factory, run_worker):
    servers = [server_factory(server_kind) for _ in range(3)]
    addresses = [s.address for s in servers]
    servers[1].stop()
    worker = gearman.GearmanWorker(addresses)
    worker.register_task("gm_pool", lambda worker, job: b"done " + job.data)
    run_worker(worker)

    client = gearman.GearmanClient(addresses)
    # 60 uniques: with 12, all landed on one live server in about 1 run in 25 (the ring depends on the ports).
    jobs = [dict(task="gm_pool", data=str(n), unique=f"pool-{n}") for n in range(60)]
    requests = client.submit_multiple_jobs(jobs, poll_timeout=20)

    assert [r.result for r in requests] == [f"done {n}".encode() for n in range(60)]
    used = {r.job.connection.address for r in requests}
    assert servers[1].address not in used and len(used) == 2


def test_str_and_bytes_names_and_data(any_server, run_worker):
    seen = []

    def record(worker, job):
        seen.append((job.task, job.unique, job.data))
        return "é"  # str results are sent as UTF-8

    worker = gearman.GearmanWorker([any_server.address.encode()])
    worker.register_task(b"gm_bytes", record)
    worker.register_task("gm_text", record)
    run_worker(worker)
    client = gearman.GearmanClient([(any_server.host.encode(), any_server.port)])

    one = client.submit_job("gm_bytes", "dätä", unique=b"raw-unique", poll_timeout=20)
    two = client.submit_job(b"gm_text", b"\x00\xff", unique="text-unique", poll_timeout=20)

    assert one.result == two.result == "é".encode()
    assert seen == [
        (b"gm_bytes", b"raw-unique", "dätä".encode()),
        ("gm_text", "text-unique", b"\x00\xff"),
    ]


def test_coalesced_foreground_requests_both_complete(any_server, run_worker):
    worker = gearman.GearmanWorker([any_server.address])
    worker.register_task("gm_coalesce", lambda worker, job: job.data + b"!")
    client = gearman.GearmanClient([any_server.address])
    jobs = [dict(task="gm_coalesce", data=b"x", unique="same"), dict(task="gm_coalesce", data=b"x", unique="same")]
    requests = client.submit_multiple_jobs(jobs, wait_until_complete=False)
    assert requests[0].job.handle == requests[1].job.handle
    run_worker(worker)
    wait_for_workers(any_server.address, "gm_coalesce")
    done = client.wait_until_jobs_completed(requests, poll_timeout=20)
    assert [r.result for r in done] == [b"x!", b"x!"]


def test_host_entry_forms():
    assert parse_host("example:4731") == {"host": "example", "port": 4731}
    assert parse_host("example") == {"host": "example", "port": 4730}
    assert parse_host(b"example:1") == {"host": "example", "port": 1}
    assert parse_host(("::1", 4732)) == {"host": "::1", "port": 4732}
    assert parse_host("[::1]:4733") == {"host": "::1", "port": 4733}
    tls = {"host": "h", "port": 4734, "keyfile": "k.pem", "certfile": "c.pem", "ca_certs": "ca.pem"}
    assert parse_host(tls) == tls
    connection = gearman.GearmanClient([tls]).connection_list[0]
    assert connection.use_ssl and connection.ca_certs == "ca.pem"
    with pytest.raises(gearman.errors.GearmanError):
        parse_host({"hostname": "h"})


def test_an_acknowledged_job_lost_with_its_server_ends_the_wait_as_unknown(server_factory):
    server = server_factory("geartrain")
    client = gearman.GearmanClient([server.address])
    request = client.submit_job("gm_orphan", "data", wait_until_complete=False)  # no worker: it stays queued
    assert request.state == gearman.JOB_CREATED and request.job.handle
    server.stop()
    client.wait_until_jobs_completed([request], poll_timeout=20)
    assert request.state == gearman.JOB_UNKNOWN  # "connection failed", as the seed's check_request_status says
    assert not request.timed_out and not request.complete


def test_a_subclass_choosing_the_server_is_asked_for_every_submit(any_server):
    """establish_request_connection is python-gearman's hook for picking a request's server: submits go through it."""
    asked: list[object] = []

    class Pinned(gearman.GearmanClient):
        def establish_request_connection(self, current_request):
            asked.append(current_request.job.unique)
            return self.establish_connection(self.connection_list[0])

    client = Pinned([any_server.address])
    requests = client.submit_multiple_jobs(
        [dict(task="gm_nobody_works_this", data=b"x", unique=f"pin{i}") for i in range(3)],
        wait_until_complete=False, poll_timeout=20,
    )
    assert asked == ["pin0", "pin1", "pin2"]
    assert [r.state for r in requests] == [gearman.JOB_CREATED] * 3
    client.shutdown()


def test_request_updates_are_made_on_first_use() -> None:
    """A request holds no deque until an update arrives or the caller looks (one GC-tracked object less per job
    in flight for each), and reads, appends and assignments behave as python-gearman's plain deques."""
    import collections
    import gc

    request = gearman.job.GearmanJobRequest(gearman.job.GearmanJob(None, None, "fn", "u1", b"data"))
    assert not [o for o in gc.get_referents(request) if isinstance(o, collections.deque)]
    assert list(request.warning_updates) == [] and isinstance(request.data_updates, collections.deque)
    request.data_updates.append(b"chunk")
    assert request.data_updates.popleft() == b"chunk"
    replaced = collections.deque([b"w"])
    request.warning_updates = replaced
    assert request.warning_updates is replaced
    request.initialize_request()  # a re-send forgets the updates
    assert list(request.warning_updates) == []
