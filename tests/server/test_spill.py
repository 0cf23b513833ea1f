"""A backlog bigger than memory: with --memory-jobs N, queued background jobs past N per function and priority wait
only in the SQLite store and are read back in order; counts, coalescing, status, show jobs and cancel stay exact."""

from __future__ import annotations

import time

import pytest

from geartrain.protocol import constants as C
from geartrain.server.broker import QUEUED
from geartrain.server.spill import handle_number

from wire import Wire

PRIORITY_TYPES = {"high": C.SUBMIT_JOB_HIGH_BG, "normal": C.SUBMIT_JOB_BG, "low": C.SUBMIT_JOB_LOW_BG}


def spilling(server_factory, tmp_path, memory_jobs: int = 3, **options):
    return server_factory("geartrain", queue_type="sqlite", sqlite_db=str(tmp_path / "q.db"),
                          memory_jobs=memory_jobs, **options)


def submit_all(client: Wire, jobs: list[tuple[int, bytes, bytes, bytes]]) -> list[bytes]:
    client.send_raw(b"".join(client.conn.send_packet(ptype, fn, unique, data) for ptype, fn, unique, data in jobs))
    return [client.expect(C.JOB_CREATED).args[0] for _ in jobs]


def drain(worker: Wire, count: int) -> list[tuple[bytes, bytes, bytes]]:
    """Grab and complete `count` jobs; a NO_JOB while spilled jobs are read back is followed by PRE_SLEEP and
    the NOOP that comes once they are queued."""
    got = []
    while len(got) < count:
        worker.send(C.GRAB_JOB_UNIQ)
        event = worker.next_event()
        if event.ptype == C.NO_JOB:
            worker.send(C.PRE_SLEEP)
            worker.expect(C.NOOP, timeout=30)
            continue
        assert event.ptype == C.JOB_ASSIGN_UNIQ, event
        handle, _, unique, data = event.args
        got.append((handle, unique, data))
        worker.send(C.WORK_COMPLETE, handle, b"")
    return got


def no_more_jobs(worker: Wire) -> bool:
    worker.send(C.GRAB_JOB_UNIQ)
    return worker.next_event().ptype == C.NO_JOB


def spilled(server) -> int:
    return server.server.broker.spill.total


def test_spilled_jobs_run_in_submission_order_per_priority(server_factory, tmp_path):
    server = spilling(server_factory, tmp_path)
    order = ["low", "normal", "high"] * 10
    jobs = [(PRIORITY_TYPES[p], b"work", b"%s-%d" % (p.encode(), i), b"%d" % i) for i, p in enumerate(order)]
    with Wire(server.host, server.port) as client, Wire(server.host, server.port) as worker:
        submit_all(client, jobs)
        assert spilled(server) == 21  # 3 in memory per priority
        assert client.admin("prioritystatus").lines == (b"work\t10\t10\t10\t0",)
        assert client.admin("status").lines == (b"work\t30\t0\t0",)
        worker.register(b"work")
        got = [unique for _, unique, _ in drain(worker, 30)]
        assert no_more_jobs(worker)
    expected = [j[2] for p in ("high", "normal", "low") for j in jobs if j[2].startswith(p.encode())]
    assert got == expected
    assert spilled(server) == 0


def test_status_coalescing_show_jobs_and_cancel_are_exact_for_jobs_only_in_the_store(server_factory, tmp_path):
    server = spilling(server_factory, tmp_path)
    jobs = [(C.SUBMIT_JOB_BG, b"work", b"u%d" % i, b"data-%d" % i) for i in range(10)]
    with Wire(server.host, server.port) as client, Wire(server.host, server.port) as worker:
        handles = submit_all(client, jobs)
        assert spilled(server) == 7
        broker = server.server.broker
        assert all(handle not in broker.jobs for handle in handles[3:])  # only in the store
        # Coalescing: the same unique answers the spilled job's handle, and adds nothing.
        assert client.submit(b"work", b"other data", b"u8", C.SUBMIT_JOB_BG) == handles[8]
        # GET_STATUS and GET_STATUS_UNIQUE know the spilled job: known, not running.
        client.send(C.GET_STATUS, handles[5])
        assert client.expect(C.STATUS_RES).args == (handles[5], b"1", b"0", b"0", b"0")
        client.send(C.GET_STATUS_UNIQUE, b"u6")
        assert client.expect(C.STATUS_RES_UNIQUE).args[:3] == (b"u6", b"1", b"0")
        client.send(C.GET_STATUS, handles[5] + b"0")
        assert client.expect(C.STATUS_RES).args[1] == b"0"
        # show jobs and show unique jobs list every job, spilled ones included.
        assert sorted(line.split(b"\t")[0] for line in client.admin("show jobs").lines) == sorted(handles)
        assert sorted(client.admin("show unique jobs").lines) == sorted(b"u%d" % i for i in range(10))
        # cancel a spilled job: gone from counts, status and the drain.
        assert client.admin(b"cancel job " + handles[7]).lines == (b"OK",)
        assert client.admin("status").lines == (b"work\t9\t0\t0",)
        client.send(C.GET_STATUS, handles[7])
        assert client.expect(C.STATUS_RES).args[1] == b"0"
        assert client.admin(b"cancel job " + handles[7]).lines[0].startswith(b"ERR UNKNOWN_JOB")
        # The cancelled unique is free again: a new job, spilled behind the others.
        new = client.submit(b"work", b"data-again", b"u7", C.SUBMIT_JOB_BG)
        assert new != handles[7]
        worker.register(b"work")
        got = drain(worker, 10)
        assert no_more_jobs(worker)
    assert [handle for handle, _, _ in got] == handles[:7] + handles[8:] + [new]
    assert [data for _, _, data in got] == [b"data-%d" % i for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)] + [b"data-again"]


def test_foreground_client_joins_a_spilled_job_and_gets_its_result(server_factory, tmp_path):
    server = spilling(server_factory, tmp_path, memory_jobs=2)
    jobs = [(C.SUBMIT_JOB_BG, b"work", b"u%d" % i, b"%d" % i) for i in range(6)]
    with Wire(server.host, server.port) as client, Wire(server.host, server.port) as waiter, \
            Wire(server.host, server.port) as worker:
        handles = submit_all(client, jobs)
        assert waiter.submit(b"work", b"ignored", b"u4") == handles[4]  # foreground, joins the spilled job
        client.send(C.GET_STATUS_UNIQUE, b"u4")
        assert client.expect(C.STATUS_RES_UNIQUE).args == (b"u4", b"1", b"0", b"0", b"0", b"1")
        worker.register(b"work")
        got = drain(worker, 6)
        assert [data for _, _, data in got] == [b"%d" % i for i in range(6)]
        done = waiter.expect(C.WORK_COMPLETE)
        assert done.args[0] == handles[4]


def test_jobs_stay_in_memory_without_spilling(server_factory, tmp_path):
    server = spilling(server_factory, tmp_path, memory_jobs=0)
    with Wire(server.host, server.port) as client:
        submit_all(client, [(C.SUBMIT_JOB_BG, b"work", b"", b"%d" % i) for i in range(10)])
        assert server.server.broker.spill is None
        assert len(server.server.broker.jobs) == 10


@pytest.mark.parametrize("memory_jobs", [1, 4])
def test_max_queued_jobs_counts_spilled_jobs(server_factory, tmp_path, memory_jobs):
    server = spilling(server_factory, tmp_path, memory_jobs=memory_jobs, max_queued_jobs=6)
    with Wire(server.host, server.port) as client:
        submit_all(client, [(C.SUBMIT_JOB_BG, b"work", b"", b"%d" % i) for i in range(6)])
        client.send(C.SUBMIT_JOB_BG, b"work", b"", b"one more")
        error = client.expect(C.ERROR)
        assert error.args[0] == b"QUEUE_ERROR" and error.args[1].startswith(b"Job queue is full")


def test_maxqueue_counts_spilled_jobs(server_factory, tmp_path):
    server = spilling(server_factory, tmp_path, memory_jobs=2)
    with Wire(server.host, server.port) as client:
        submit_all(client, [(C.SUBMIT_JOB_BG, b"work", b"", b"%d" % i) for i in range(5)])
        assert client.admin("maxqueue work 5").lines == (b"OK",)
        client.send(C.SUBMIT_JOB_BG, b"work", b"", b"sixth")
        assert client.expect(C.ERROR).args == (b"QUEUE_ERROR", b"Job queue is full")


def geard(server_factory, db, *extra: str):
    return server_factory("geard", "--queue-type", "sqlite", "--sqlite-db", str(db), *extra)


def test_a_spilled_backlog_is_replayed_in_order_after_a_restart(server_factory, tmp_path):
    db = tmp_path / "q.db"
    first = geard(server_factory, db, "--memory-jobs", "4")
    order = ["low", "normal", "high"] * 15
    jobs = [(PRIORITY_TYPES[p], b"work", b"%s-%d" % (p.encode(), i), b"%d" % i) for i, p in enumerate(order)]
    with Wire(first.host, first.port) as client:
        handles = submit_all(client, jobs)
        assert client.admin("cancel job " + handles[10].decode()).lines == (b"OK",)  # spilled by then
    first.stop()  # SIGTERM: the cancel's delete is committed on the way out
    second = geard(server_factory, db, "--memory-jobs", "4")
    with Wire(second.host, second.port) as worker:
        assert worker.admin("prioritystatus").lines == (b"work\t15\t14\t15\t0",)
        assert len(worker.admin("show jobs").lines) == 44
        worker.register(b"work")
        got = [unique for _, unique, _ in drain(worker, 44)]
        assert no_more_jobs(worker)
    kept = [job for i, job in enumerate(jobs) if i != 10]
    assert got == [j[2] for p in ("high", "normal", "low") for j in kept if j[2].startswith(p.encode())]


def test_maxqueue_persists_across_a_restart_with_a_durable_queue(server_factory, tmp_path):
    db = tmp_path / "q.db"
    first = geard(server_factory, db)
    with Wire(first.host, first.port) as client:
        assert client.admin("maxqueue capped 2 1 0").lines == (b"OK",)
        assert client.admin("maxqueue loose 3").lines == (b"OK",)
        assert client.admin("maxqueue loose 0").lines == (b"OK",)  # lifted: forgotten in the store too
    first.stop()
    second = geard(server_factory, db)
    with Wire(second.host, second.port) as client:
        assert client.admin("status").lines == (b"capped\t0\t0\t0",)  # listed, as a maxqueue'd function is
        submit_all(client, [(C.SUBMIT_JOB_HIGH_BG, b"capped", b"", b"1"), (C.SUBMIT_JOB_HIGH_BG, b"capped", b"", b"2"),
                            (C.SUBMIT_JOB_BG, b"capped", b"", b"3"), (C.SUBMIT_JOB_LOW_BG, b"capped", b"", b"4")])
        client.send(C.SUBMIT_JOB_HIGH_BG, b"capped", b"", b"5")
        assert client.expect(C.ERROR).args == (b"QUEUE_ERROR", b"Job queue is full")
        client.send(C.SUBMIT_JOB_BG, b"capped", b"", b"6")
        assert client.expect(C.ERROR).args == (b"QUEUE_ERROR", b"Job queue is full")
        submit_all(client, [(C.SUBMIT_JOB_BG, b"loose", b"", b"%d" % i) for i in range(5)])


def test_replay_in_chunks_spills_again_and_keeps_order(server_factory, tmp_path, monkeypatch):
    import geartrain.server.store as store

    monkeypatch.setattr(store, "REPLAY_CHUNK", 7)  # several chunks, some ending inside a priority's run
    first = spilling(server_factory, tmp_path)
    order = ["low", "high", "normal", "high"] * 8
    jobs = [(PRIORITY_TYPES[p], b"work", b"%s-%d" % (p.encode(), i), b"%d" % i) for i, p in enumerate(order)]
    with Wire(first.host, first.port) as client:
        submit_all(client, jobs)
    first.stop()
    second = spilling(server_factory, tmp_path)
    assert second.server.store.replayed == 32
    assert spilled(second) == 32 - 9
    with Wire(second.host, second.port) as worker:
        assert worker.admin("prioritystatus").lines == (b"work\t16\t8\t8\t0",)
        # A replayed job that waits only in the store still coalesces by unique.
        handle = worker.submit(b"work", b"again", b"low-28", C.SUBMIT_JOB_LOW_BG)
        assert handle in [line.split(b"\t")[0] for line in worker.admin("show jobs").lines]
        assert worker.admin("prioritystatus").lines == (b"work\t16\t8\t8\t0",)
        worker.register(b"work")
        got = [unique for _, unique, _ in drain(worker, 32)]
        assert no_more_jobs(worker)
    assert got == [j[2] for p in ("high", "normal", "low") for j in jobs if j[2].startswith(p.encode())]


def test_every_acknowledged_spilled_job_survives_sigkill(server_factory, tmp_path):
    db = tmp_path / "q.db"
    first = geard(server_factory, db, "--memory-jobs", "3")
    jobs = [(C.SUBMIT_JOB_BG, b"work", b"", b"job-%d" % i) for i in range(40)]
    with Wire(first.host, first.port) as client:
        submit_all(client, jobs)
        first.process.kill()  # at once after the last JOB_CREATED: no shutdown code runs
        first.process.wait(timeout=30)
    second = geard(server_factory, db, "--memory-jobs", "3")
    with Wire(second.host, second.port) as worker:
        worker.register(b"work")
        assert [data for _, _, data in drain(worker, 40)] == [data for _, _, _, data in jobs]
        assert no_more_jobs(worker)


def test_only_the_exact_handle_of_a_spilled_job_finds_it(server_factory, tmp_path):
    """A spilled job is found by its handle as the broker spelled it: a sign, a space or an underscore before or
    among its digits names no job (int() reads each of them as the same number)."""
    server = spilling(server_factory, tmp_path, memory_jobs=1)
    with Wire(server.host, server.port) as client:
        handles = submit_all(client, [(C.SUBMIT_JOB_BG, b"work", b"", b"%d" % i) for i in range(30)])
        handle = handles[-1]
        digits = handle[len(handle.rstrip(b"0123456789")):]
        prefix = handle[:-len(digits)]
        assert spilled(server) == 29 and len(digits) > 1
        client.send(C.GET_STATUS, handle)
        assert client.expect(C.STATUS_RES).args[1] == b"1"
        for other in (prefix + b"+" + digits, prefix + b" " + digits, prefix + digits[:1] + b"_" + digits[1:]):
            client.send(C.GET_STATUS, other)
            assert client.expect(C.STATUS_RES).args[1] == b"0", other
            assert client.admin(b"cancel job " + other).lines[0].startswith(b"ERR")
        assert client.admin("status").lines == (b"work\t30\t0\t0",)


def test_handle_number_reads_decimal_digits_only():
    assert handle_number(b"H:x:1234", 4) == 1234
    assert handle_number(b"H:x:0", 4) == 0
    assert handle_number(b"H:x:1764556800123456", 4) == 1764556800123456  # the broker's: microseconds
    assert handle_number(b"H:x:" + b"9" * 30, 4) == int("9" * 30)
    for bad in (b"H:x:", b"H:x:+1", b"H:x: 1", b"H:x:1_0", b"H:x:12a", b"H:x:-1", b"H:x:" + b"9" * 29 + b"a"):
        assert handle_number(bad, 4) == -1, bad


def test_show_job_describes_a_job_queued_only_in_the_store(server_factory, tmp_path):
    server = spilling(server_factory, tmp_path, memory_jobs=1)
    with Wire(server.host, server.port) as client:
        handles = submit_all(client, [(C.SUBMIT_JOB_LOW_BG, b"work", b"u%d" % i, b"%d" % i) for i in range(3)])
        by_handle = dict(line.split(b"\t", 1) for line in client.admin(b"show job " + handles[2]).lines)
        assert by_handle[b"state"] == b"queued" and by_handle[b"priority"] == b"low"
        by_unique = dict(line.split(b"\t", 1) for line in client.admin(b"show job unique work u1").lines)
        assert by_unique[b"handle"] == handles[1] and by_unique[b"state"] == b"queued"


def test_a_spilled_job_keeps_its_queueing_time_for_its_wait(server_factory, tmp_path):
    # The wait histogram and the oldest job's age count from the submit, not from the job's reading back.
    server = spilling(server_factory, tmp_path)
    broker = server.server.broker
    with Wire(server.host, server.port) as client, Wire(server.host, server.port) as worker:
        submit_all(client, [(C.SUBMIT_JOB_BG, b"work", b"", b"%d" % i) for i in range(10)])
        assert spilled(server) == 7
        submitted = time.time()
        worker.register(b"work")
        drain(worker, 4)  # the fourth was read back from the store, with the rest of its chunk
        loaded = [job for job in list(broker.jobs.values()) if job.state == QUEUED]
        assert loaded and all(0 < job.stamp <= submitted for job in loaded)


# ---------------------------------------------------------------- uniques of spilled jobs (hashindex.py)
# A spilled job's unique is kept only as a 64-bit hash in its function's HashIndex; every match is confirmed by
# reading the unique (or the data, for "-") back from the store.


def test_spilled_uniques_keep_no_key_in_memory_and_coalesce_by_unique_and_by_data(server_factory, tmp_path):
    from geartrain.server.hashindex import HashIndex

    server = spilling(server_factory, tmp_path)
    spill = server.server.broker.spill
    jobs = [(C.SUBMIT_JOB_BG, b"work", b"u%d" % i, b"data-%d" % i) for i in range(6)]
    jobs += [(C.SUBMIT_JOB_BG, b"work", b"-", b"same-data-%d" % i) for i in range(4)]
    with Wire(server.host, server.port) as client, Wire(server.host, server.port) as worker:
        handles = submit_all(client, jobs)
        assert spilled(server) == 7
        function = server.server.broker.functions[b"work"]
        index = spill.uniques[function]
        assert isinstance(index, HashIndex) and len(index) == 7  # u3-u5 and the four "-" jobs: no keys kept
        confirms = spill.confirms
        assert client.submit(b"work", b"other", b"u4", C.SUBMIT_JOB_BG) == handles[4]
        assert client.submit(b"work", b"same-data-2", b"-", C.SUBMIT_JOB_BG) == handles[8]  # "-": by data
        assert spill.confirms == confirms + 2  # each match read back once
        assert client.submit(b"work", b"same-data-2", b"-", C.SUBMIT_JOB_BG) == handles[8]  # materialized now
        assert spill.confirms == confirms + 2
        new = client.submit(b"work", b"new-data", b"-", C.SUBMIT_JOB_BG)  # other data: a job of its own
        assert new not in handles
        client.send(C.GET_STATUS_UNIQUE, b"same-data-3")  # a "-" job is known by its data, as gearmand does
        assert client.expect(C.STATUS_RES_UNIQUE).args[:3] == (b"same-data-3", b"1", b"0")
        assert client.admin("status").lines == (b"work\t11\t0\t0",)
        worker.register(b"work")
        got = drain(worker, 11)
        assert no_more_jobs(worker)
    assert [handle for handle, _, _ in got] == handles + [new]
    assert not spill.uniques


def test_a_hash_collision_never_coalesces_different_uniques(server_factory, tmp_path):
    server = spilling(server_factory, tmp_path)
    spill = server.server.broker.spill
    spill.key_hash = lambda key: 42  # every key hashes alike: each lookup must confirm among all the entries
    jobs = [(C.SUBMIT_JOB_BG, b"work", b"u%d" % i, b"data-%d" % i) for i in range(8)]
    jobs.append((C.SUBMIT_JOB_BG, b"work", b"-", b"u9"))  # data equal to a unique that no job has
    with Wire(server.host, server.port) as client, Wire(server.host, server.port) as worker:
        handles = submit_all(client, jobs)
        assert spilled(server) == 6
        assert len(spill.uniques[server.server.broker.functions[b"work"]].find(b"anything")) == 6
        assert client.submit(b"work", b"x", b"u6", C.SUBMIT_JOB_BG) == handles[6]
        other = client.submit(b"work", b"x", b"u-other", C.SUBMIT_JOB_BG)
        assert other not in handles
        client.send(C.GET_STATUS_UNIQUE, b"u-missing")
        assert client.expect(C.STATUS_RES_UNIQUE).args[1] == b"0"
        client.send(C.GET_STATUS_UNIQUE, b"u5")
        assert client.expect(C.STATUS_RES_UNIQUE).args[1] == b"1"
        by_unique = dict(line.split(b"\t", 1) for line in client.admin(b"show job unique work u7").lines)
        assert by_unique[b"handle"] == handles[7]
        assert client.admin(b"show job unique work u-missing").lines[0].startswith(b"ERR UNKNOWN_JOB")
        # Cancelled, its unique is free: the next submit of it makes a new job, and does not find the old one.
        assert client.admin(b"cancel job " + handles[4]).lines == (b"OK",)
        again = client.submit(b"work", b"data-again", b"u4", C.SUBMIT_JOB_BG)
        assert again not in handles and again != other
        assert sorted(client.admin("show unique jobs").lines) == sorted(
            [b"u%d" % i for i in range(8)] + [b"-", b"u-other"])
        worker.register(b"work")
        got = drain(worker, 10)
        assert no_more_jobs(worker)
    assert [unique for _, unique, _ in got] == [b"u%d" % i for i in range(8) if i != 4] + [b"-", b"u-other", b"u4"]


def test_show_unique_jobs_reads_spilled_uniques_in_chunks(server_factory, tmp_path, monkeypatch):
    import geartrain.server.spill as spill_module

    monkeypatch.setattr(spill_module, "LISTING_CHUNK", 3)
    server = spilling(server_factory, tmp_path, memory_jobs=2)
    jobs = [(C.SUBMIT_JOB_BG, b"work", b"u%d" % i if i % 3 else b"", b"d%d" % i) for i in range(12)]
    jobs += [(C.SUBMIT_JOB_LOW_BG, b"other", b"-", b"dash"), (C.SUBMIT_JOB_LOW_BG, b"other", b"v", b"x"),
             (C.SUBMIT_JOB_LOW_BG, b"other", b"w", b"y")]
    with Wire(server.host, server.port) as client:
        handles = submit_all(client, jobs)
        assert spilled(server) == 11
        assert client.admin(b"cancel job " + handles[5]).lines == (b"OK",)  # spilled: not listed any more
        assert client.admin(b"show job " + handles[7]).lines  # materialized by handle: listed once
        expected = [b"u%d" % i for i in range(12) if i % 3 and i != 5] + [b"-", b"v", b"w"]
        assert sorted(client.admin("show unique jobs").lines) == sorted(expected)
        listed = [line.split(b"\t")[0] for line in client.admin("show jobs").lines]
        assert sorted(listed) == sorted(h for i, h in enumerate(handles) if i != 5)


def test_spilled_uniques_coalesce_after_a_restart(server_factory, tmp_path):
    db = tmp_path / "q.db"
    first = geard(server_factory, db, "--memory-jobs", "2")
    jobs = [(C.SUBMIT_JOB_BG, b"work", b"u%d" % i, b"%d" % i) for i in range(8)]
    jobs.append((C.SUBMIT_JOB_BG, b"work", b"-", b"by-data"))
    with Wire(first.host, first.port) as client:
        handles = submit_all(client, jobs)
    first.stop()
    second = geard(server_factory, db, "--memory-jobs", "2")
    with Wire(second.host, second.port) as client, Wire(second.host, second.port) as worker:
        listed = {line.split(b"\t")[0] for line in client.admin("show jobs").lines}
        by_unique = {}
        for i in range(8):
            lines = client.admin(b"show job unique work u%d" % i).lines
            by_unique[i] = dict(line.split(b"\t", 1) for line in lines)[b"handle"]
        assert set(by_unique.values()) < listed
        assert client.submit(b"work", b"x", b"u6", C.SUBMIT_JOB_BG) == by_unique[6]  # replayed, then spilled
        dash = client.submit(b"work", b"by-data", b"-", C.SUBMIT_JOB_BG)
        assert dash in listed and dash not in by_unique.values()
        client.send(C.GET_STATUS_UNIQUE, b"u7")
        assert client.expect(C.STATUS_RES_UNIQUE).args[1] == b"1"
        assert client.admin("status").lines == (b"work\t9\t0\t0",)
        worker.register(b"work")
        got = drain(worker, 9)
        assert no_more_jobs(worker)
    assert [unique for _, unique, _ in got] == [j[2] for j in jobs]
    assert len(handles) == 9


@pytest.mark.parametrize("quiet", [False, True])
def test_requests_after_one_that_confirms_a_spilled_unique_keep_their_order(server_factory, tmp_path, quiet):
    # A confirmation reads at once while the store's writer thread is quiet, else on that thread while the
    # connection waits; quiet() is pinned here so each way runs whatever the commits are doing.
    server = spilling(server_factory, tmp_path)
    server.server.store.quiet = lambda: quiet
    spill = server.server.broker.spill
    jobs = [(C.SUBMIT_JOB_BG, b"work", b"u%d" % i, b"data-%d" % i) for i in range(6)]
    jobs.append((C.SUBMIT_JOB_BG, b"work", b"-", b"by-data"))
    with Wire(server.host, server.port) as client, Wire(server.host, server.port) as other:
        handles = submit_all(client, jobs)
        confirms = spill.confirms
        pipelined = [
            client.conn.send_packet(C.SUBMIT_JOB_BG, b"work", b"u4", b"x"),  # waits for a read
            client.conn.send_packet(C.ECHO_REQ, b"after"),
            client.conn.send_packet(C.SUBMIT_JOB_BG, b"work", b"-", b"by-data"),  # a second read
            client.conn.send_packet(C.SUBMIT_JOB_BG, b"work", b"u-new", b"y"),  # no match: no read
            client.conn.send_packet(C.GET_STATUS_UNIQUE, b"u5"),  # a third
            client.conn.send_packet(C.SUBMIT_JOB_BG, b"work", b"u4", b"again"),  # materialized by now
        ]
        client.send_raw(b"".join(pipelined))
        other.send(C.SUBMIT_JOB_BG, b"work", b"u3", b"z")  # another connection meanwhile
        assert client.expect(C.JOB_CREATED).args[0] == handles[4]
        assert client.expect(C.ECHO_RES).args[0] == b"after"
        assert client.expect(C.JOB_CREATED).args[0] == handles[6]
        new = client.expect(C.JOB_CREATED).args[0]
        assert new not in handles
        assert client.expect(C.STATUS_RES_UNIQUE).args[:2] == (b"u5", b"1")
        assert client.expect(C.JOB_CREATED).args[0] == handles[4]
        assert other.expect(C.JOB_CREATED).args[0] == handles[3]
        assert spill.confirms == confirms + 4
        assert client.admin("status").lines == (b"work\t8\t0\t0",)


def test_a_status_request_that_needs_reads_in_several_functions_is_answered_while_the_store_stays_busy(
        server_factory, tmp_path):
    server = spilling(server_factory, tmp_path, memory_jobs=1)
    server.server.store.quiet = lambda: False  # every confirmation waits for a read on the writer thread
    spill = server.server.broker.spill
    spill.key_hash = lambda key: 7  # every unique of every function matches: each function needs its own read
    jobs = [(C.SUBMIT_JOB_BG, name, b"%s-%d" % (name, i), b"x") for name in (b"a", b"b", b"c") for i in range(3)]
    with Wire(server.host, server.port) as client:
        submit_all(client, jobs)
        assert spilled(server) == 6
        client.send(C.GET_STATUS_UNIQUE, b"c-2")  # a, b, then c: the rows read for a and b are kept
        assert client.expect(C.STATUS_RES_UNIQUE).args[:2] == (b"c-2", b"1")
        client.send(C.GET_STATUS_UNIQUE, b"nobody")
        assert client.expect(C.STATUS_RES_UNIQUE).args[:2] == (b"nobody", b"0")
