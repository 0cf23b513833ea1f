"""A cluster of geard processes on one real PostgreSQL database: take-over, come-back, hand-off, coalescing."""

from __future__ import annotations

import collections
import re
import signal
import time

import psycopg
import pytest

from geartrain.protocol import constants as C

from cluster_nodes import LEASE, TAKEOVER, Link, node, queued, rows, submit_many, wait_for, workers
from wire import Wire


def test_a_killed_node_s_jobs_all_run_on_the_live_nodes_once(server_factory, postgres_dsn, capsys):
    a = node(server_factory, postgres_dsn, "a")
    b = node(server_factory, postgres_dsn, "b")
    c = node(server_factory, postgres_dsn, "c")
    count = 10_000
    submit_many(a, count)
    a.process.kill()
    a.process.wait(30)
    killed = time.monotonic()
    with workers(b, c) as ran:
        wait_for(lambda: len(ran) >= count, what=f"{count} jobs running after the take-over")
        took = time.monotonic() - killed
        wait_for(lambda: rows(postgres_dsn) == [(0,)], what="every completion removing its row")
    counts = collections.Counter(ran)
    assert set(counts) == {b"j%d" % i for i in range(count)}  # none lost
    twice = sum(1 for n in counts.values() if n > 1)
    # A live node is taken over only when its lease renewal came later than --takeover-after (a CPU starved for
    # that long): then the jobs it was running run again, as they may. Every renewal on time: none runs twice.
    taken = set()
    for live in (b, c):
        live.process.send_signal(signal.SIGTERM)
        _, err = live.process.communicate(timeout=30)
        taken |= set(re.findall(rb"took over \d+ jobs of node (\S+)", err))
    late = taken - {b"a"}
    with capsys.disabled():
        print(f"\n[takeover] {count} jobs of a SIGKILLed node ran on 2 live nodes {took:.1f}s after the kill "
              f"(lease {LEASE}s, takeover-after {TAKEOVER}s); ran twice: {twice}; live nodes taken over "
              f"after a late renewal: {sorted(late)}")
    assert taken >= {b"a"}
    assert twice == 0 or late  # nothing was running on the killed node


def hold_ref(dsn: str, node: str, ref: int) -> psycopg.Connection:
    """An open transaction that inserted (node, ref): a take-over that re-keys a job to it waits until it ends."""
    conn = psycopg.connect(dsn)
    conn.execute("INSERT INTO geartrain_jobs (node, ref, function, unique_key, priority, when_to_run, reducer, "
                 "data) VALUES (%s, %s, 'held', %s, 1, 0, '', '')", (node, ref, b"held-%d" % ref))
    return conn


def blocked_by(dsn: str, node: str, conn: psycopg.Connection) -> bool:
    return rows(dsn, f"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'geard {node}' "
                f"AND {conn.info.backend_pid} = ANY(pg_blocking_pids(pid))") == [(1,)]


def lease_of(dsn: str, node: str):
    return rows(dsn, f"SELECT renewed, now() - renewed FROM geartrain_nodes WHERE node = '{node}'")[0]


def test_a_long_take_over_renews_the_lease_between_its_chunks(server_factory, postgres_dsn):
    """A take-over of many jobs, or one under load, can outlast --takeover-after: the node taking over must renew
    its lease meanwhile, or another node takes over what it claimed (and runs) as a dead node's. The test holds
    the take-over at its second and third chunk of 1000 (b's refs 1001 and 2001, held by open transactions) and
    lets the first hold last a lease interval: the lease was renewed before the third chunk."""
    a = node(server_factory, postgres_dsn, "a")
    b = node(server_factory, postgres_dsn, "b")
    submit_many(a, 3000)
    a.process.kill()
    a.process.wait(30)
    second, third = hold_ref(postgres_dsn, "b", 1001), hold_ref(postgres_dsn, "b", 2001)
    try:
        wait_for(lambda: blocked_by(postgres_dsn, "b", second), what="b's take-over waiting at its second chunk")
        wait_for(lambda: lease_of(postgres_dsn, "b")[1].total_seconds() > float(LEASE),
                 what="b's lease renewal falling due")
        before = lease_of(postgres_dsn, "b")[0]
        second.rollback()
        wait_for(lambda: blocked_by(postgres_dsn, "b", third), what="b's take-over waiting at its third chunk")
        assert lease_of(postgres_dsn, "b")[0] > before
    finally:
        second.close()
        third.close()
    wait_for(lambda: queued(b) == 3000, what="the take-over by node b")
    with workers(b) as ran:
        wait_for(lambda: len(ran) >= 3000 and rows(postgres_dsn) == [(0,)], what="3000 jobs run")
    assert sorted(ran) == sorted(b"j%d" % i for i in range(3000))


def test_a_node_that_comes_back_after_its_takeover_runs_none_of_the_claimed_jobs(server_factory, postgres_dsn):
    a = node(server_factory, postgres_dsn, "a")
    b = node(server_factory, postgres_dsn, "b")
    submit_many(a, 500)
    port = a.port
    a.process.kill()
    a.process.wait(30)
    wait_for(lambda: queued(b) == 500, what="the take-over by node b")
    again = node(server_factory, postgres_dsn, "a", port=port)  # the same node name comes back
    with workers(again, b) as ran:
        wait_for(lambda: len(ran) >= 500 and rows(postgres_dsn) == [(0,)], what="500 jobs run")
    assert sorted(ran) == sorted(b"j%d" % i for i in range(500))


def freeze_inside_its_renewal(dsn: str, a) -> None:
    """SIGSTOP node a between its lease renewal's UPDATE and COMMIT, its lease row locked: the test holds that
    row, so the renewal waits for it; then a is stopped and the renewal let through."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1 FROM geartrain_nodes WHERE node = 'a' FOR UPDATE")
        wait_for(lambda: rows(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'geard a' "
                              "AND wait_event_type = 'Lock' AND query LIKE '%geartrain_renew%'") == [(1,)],
                 what="node a's renewal waiting for its row")
        a.process.send_signal(signal.SIGSTOP)
        conn.rollback()


@pytest.mark.parametrize("inside_renewal", [False, True], ids=["anywhere", "inside-its-renewal"])
def test_a_node_frozen_past_its_lease_drops_what_was_taken_and_rejoins(server_factory, postgres_dsn,
                                                                       inside_renewal):
    """SIGSTOP stands for a node cut off from the database: alive, holding jobs it no longer owns. Frozen inside
    a transaction on its lease row, it holds that lock too: the database ends that transaction, or the
    take-over would wait for the node to wake up."""
    a = node(server_factory, postgres_dsn, "a", "--verbose", "INFO")
    b = node(server_factory, postgres_dsn, "b")
    submit_many(a, 300)
    if inside_renewal:
        freeze_inside_its_renewal(postgres_dsn, a)
    else:
        a.process.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: queued(b) == 300, what="the take-over by node b")
    finally:
        a.process.send_signal(signal.SIGCONT)
    wait_for(lambda: queued(a) == 0, what="node a dropping the jobs it lost")
    # It rejoined: new jobs on it are its own, stored and run there.
    submit_many(a, 10, prefix=b"after")
    with workers(a, b) as ran:
        wait_for(lambda: len(ran) >= 310 and rows(postgres_dsn) == [(0,)], what="310 jobs run")
    assert sorted(ran) == sorted([b"j%d" % i for i in range(300)] + [b"after%d" % i for i in range(10)])
    a.process.send_signal(signal.SIGTERM)
    _, err = a.process.communicate(timeout=30)
    assert b"lost its lease" in err and b"dropped 300 jobs" in err


def test_a_graceful_shutdown_hands_queued_jobs_over_at_once(server_factory, postgres_dsn):
    # b's next lease round is 10 minutes away, and so is a take-over: the jobs arriving on b within the
    # deadline came by hand-off, announced to b at once.
    a = node(server_factory, postgres_dsn, "a", takeover="600")
    b = node(server_factory, postgres_dsn, "b", takeover="1200", lease="600")
    submit_many(a, 200)
    with Wire(a.host, a.port) as worker:
        worker.register(b"work")
        running = worker.grab()  # a keeps this one running through its drain
        with Wire(a.host, a.port) as admin:
            assert admin.admin("shutdown graceful").lines[0].startswith(b"OK")
        wait_for(lambda: queued(b) == 199, deadline=60, what="the hand-off to node b")
        assert a.process.poll() is None  # still draining: the queued jobs did not wait for it
        worker.send(C.GRAB_JOB_UNIQ)
        assert worker.expect(C.NO_JOB)  # nothing left to hand out on a
        worker.send(C.WORK_COMPLETE, running.args[0], b"")
        a.process.wait(30)
    with Wire(b.host, b.port) as admin:
        retries = {line.split(b"\t")[1] for line in admin.admin("show jobs").lines}
    assert retries == {b"1"}  # the attempt count kept in the row: taken over once
    assert rows(postgres_dsn, "SELECT node, min(attempts), max(attempts), count(*) FROM geartrain_jobs "
                "GROUP BY node") == [("b", 1, 1, 199)]
    assert running.args[2] not in {u for (u,) in rows(postgres_dsn, "SELECT unique_key FROM geartrain_jobs")}
    assert rows(postgres_dsn, "SELECT node FROM geartrain_nodes ORDER BY node") == [("a",), ("b",)]


def test_the_same_unique_on_two_nodes_is_one_job_with_one_handle(server_factory, postgres_dsn):
    a = node(server_factory, postgres_dsn, "a")
    b = node(server_factory, postgres_dsn, "b")
    with Wire(a.host, a.port) as client_a, Wire(b.host, b.port) as client_b:
        handle_a = client_a.submit(b"work", b"from a", b"the-unique", C.SUBMIT_JOB_BG)
        handle_b = client_b.submit(b"work", b"from b", b"the-unique", C.SUBMIT_JOB_BG)
    assert handle_a == handle_b
    assert rows(postgres_dsn, "SELECT node, unique_key FROM geartrain_jobs") == [("a", b"the-unique")]
    wait_for(lambda: queued(b) == 0, what="node b dropping its copy")
    with workers(a, b) as ran:
        wait_for(lambda: ran and rows(postgres_dsn) == [(0,)], what="the job to run")
        assert queued(a) == 0 and queued(b) == 0
    assert ran == [b"the-unique"]


def test_a_node_cut_off_from_the_database_stops_handing_out_its_jobs_and_gets_them_back(
        server_factory, postgres_server, postgres_dsn):
    link = Link(postgres_server.port)
    try:
        via_link = postgres_dsn.replace(f"port={postgres_server.port}", f"port={link.port}")
        a = node(server_factory, via_link, "a", "--verbose", "INFO", takeover="2")  # withholds after 1 s
        b = node(server_factory, postgres_dsn, "b", takeover="600")  # never takes a's jobs over here
        submit_many(a, 100)
        link.cut()
        wait_for(lambda: queued(a) == 0, what="node a withholding its jobs")
        with Wire(a.host, a.port) as worker:
            worker.register(b"work")
            worker.send(C.GRAB_JOB_UNIQ)
            assert worker.expect(C.NO_JOB)
        link.mend()
        wait_for(lambda: queued(a) == 100, what="node a handing its jobs out again")
        assert queued(b) == 0
    finally:
        link.close()
    a.process.send_signal(signal.SIGTERM)
    _, err = a.process.communicate(timeout=30)
    assert b"database unreachable" in err and b"no longer handed out" in err and b"are back in its queues" in err


def test_jobs_of_a_node_cut_off_past_its_lease_run_once_on_the_others(server_factory, postgres_server,
                                                                       postgres_dsn):
    link = Link(postgres_server.port)
    try:
        via_link = postgres_dsn.replace(f"port={postgres_server.port}", f"port={link.port}")
        a = node(server_factory, via_link, "a")
        b = node(server_factory, postgres_dsn, "b")
        submit_many(a, 300)
        link.cut()
        wait_for(lambda: queued(a) == 0, what="node a withholding its jobs")
        with workers(a, b) as ran:  # a's worker is there while a is cut off
            wait_for(lambda: len(ran) >= 300, what="the take-over by node b")
            link.mend()
            wait_for(lambda: rows(postgres_dsn) == [(0,)], what="every row removed")
            wait_for(lambda: rows(postgres_dsn, "SELECT count(*) FROM geartrain_nodes WHERE node = 'a' "
                                  "AND renewed > now() - interval '1 second'") == [(1,)], what="node a rejoining")
            submit_many(a, 10, prefix=b"after")  # a rejoined: its new jobs are stored and run
            wait_for(lambda: len(ran) >= 310 and rows(postgres_dsn) == [(0,)], what="310 jobs run")
    finally:
        link.close()
    assert sorted(ran) == sorted([b"j%d" % i for i in range(300)] + [b"after%d" % i for i in range(10)])
