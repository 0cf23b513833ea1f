"""Behaviours pinned side by side against gearmand: each test runs against geartrain's server and gearmand."""

from __future__ import annotations

import time

from geartrain.protocol import constants as C

from wire import Wire

WAIT = 30.0


def packets(wire: Wire, count: int) -> list[tuple[int, tuple[bytes, ...]]]:
    return [(event.ptype, event.args) for event in (wire.next_event(WAIT) for _ in range(count))]


def test_each_submit_of_one_unique_gets_its_own_answers(any_server):
    """A connection that submits one unique three times gets three JOB_CREATED and three of every WORK_*
    packet (libgearman clients that add a task twice wait for both answers)."""
    with Wire(any_server.host, any_server.port, WAIT) as client, \
            Wire(any_server.host, any_server.port, WAIT) as other, \
            Wire(any_server.host, any_server.port, WAIT) as worker:
        handles = [client.submit(b"twice", b"payload", b"u-1") for _ in range(3)]
        assert len(set(handles)) == 1
        handle = handles[0]
        assert other.submit(b"twice", b"payload", b"u-1") == handle
        worker.register(b"twice")
        job = worker.grab(WAIT)
        assert job.args[0] == handle
        worker.send(C.WORK_DATA, handle, b"part")
        worker.send(C.WORK_STATUS, handle, b"1", b"2")
        worker.send(C.WORK_COMPLETE, handle, b"done")
        expected = [(C.WORK_DATA, (handle, b"part"))] * 3 + [(C.WORK_STATUS, (handle, b"1", b"2"))] * 3 + \
                   [(C.WORK_COMPLETE, (handle, b"done"))] * 3
        assert packets(client, 9) == expected
        assert packets(other, 3) == expected[::3]
        client.send(C.ECHO_REQ, b"end")  # nothing more came before the echo
        assert client.expect(C.ECHO_RES, WAIT).args == (b"end",)


def test_each_submit_of_one_unique_gets_its_own_failure(any_server):
    with Wire(any_server.host, any_server.port, WAIT) as client, \
            Wire(any_server.host, any_server.port, WAIT) as worker:
        handle = client.submit(b"twice-fail", b"", b"u-2")
        assert client.submit(b"twice-fail", b"", b"u-2") == handle
        worker.register(b"twice-fail")
        worker.grab(WAIT)
        worker.send(C.WORK_FAIL, handle)
        assert packets(client, 2) == [(C.WORK_FAIL, (handle,))] * 2
        client.send(C.ECHO_REQ, b"end")
        assert client.expect(C.ECHO_RES, WAIT).args == (b"end",)


def test_status_by_unique_counts_each_submit_as_a_client(any_server):
    with Wire(any_server.host, any_server.port, WAIT) as other:
        with Wire(any_server.host, any_server.port, WAIT) as client:
            for _ in range(2):
                client.submit(b"counted-twice", b"x", b"u-3")
            other.submit(b"counted-twice", b"x", b"u-3")
            other.send(C.GET_STATUS_UNIQUE, b"u-3")
            assert other.expect(C.STATUS_RES_UNIQUE).args == (b"u-3", b"1", b"0", b"0", b"0", b"3")
        deadline = time.monotonic() + WAIT
        while True:  # the first client left: its two entries go
            other.send(C.GET_STATUS_UNIQUE, b"u-3")
            if other.expect(C.STATUS_RES_UNIQUE).args[5] == b"1":
                break
            assert time.monotonic() < deadline, "the client's disconnection was never noticed"
            time.sleep(0.02)


def test_a_client_that_submitted_twice_and_left_no_longer_holds_the_job():
    """Every entry of a connection goes when it disconnects: the job it alone waited on is dropped."""
    from geartrain.server.broker import Broker

    broker = Broker(b"H:test", clock=lambda: 1_000_000.0)
    client, stays = broker.connect(1), broker.connect(2)
    for _ in range(2):
        broker.handle(client, C.SUBMIT_JOB, (b"fn", b"u", b""))
    broker.handle(stays, C.SUBMIT_JOB, (b"fn", b"other", b""))
    assert len(broker.jobs) == 2
    broker.disconnect(client)
    assert [job.unique for job in broker.jobs.values()] == [b"other"]


def status_rows(admin: Wire) -> dict[bytes, tuple[bytes, ...]]:
    return {fields[0]: tuple(fields[1:]) for fields in (line.split(b"\t") for line in admin.admin("status").lines)}


def test_a_function_outlives_its_last_worker_until_dropped(any_server):
    with Wire(any_server.host, any_server.port, WAIT) as admin:
        with Wire(any_server.host, any_server.port, WAIT) as worker:
            worker.register(b"outlives", b"busy")
            worker.send(C.ECHO_REQ, b"registered")
            worker.expect(C.ECHO_RES)
            assert status_rows(admin)[b"outlives"] == (b"0", b"0", b"1")
            assert admin.admin("drop function busy").lines[0].startswith(b"ERR ")  # a worker has it
        deadline = time.monotonic() + WAIT
        while status_rows(admin)[b"outlives"] != (b"0", b"0", b"0"):
            assert time.monotonic() < deadline, "the worker's disconnection was never noticed"
            time.sleep(0.02)
        assert admin.admin("drop function outlives").lines == (b"OK",)
        rows = status_rows(admin)
        assert b"outlives" not in rows and rows[b"busy"] == (b"0", b"0", b"0")
        assert admin.admin("drop function outlives").lines[0].startswith(b"ERR ")


def test_a_function_of_finished_jobs_stays_listed(any_server):
    with Wire(any_server.host, any_server.port, WAIT) as client, \
            Wire(any_server.host, any_server.port, WAIT) as worker:
        handle = client.submit(b"finished", b"x")
        worker.register(b"finished")
        worker.grab(WAIT)
        worker.send(C.WORK_COMPLETE, handle, b"")
        client.expect(C.WORK_COMPLETE, WAIT)
        worker.send(C.CANT_DO, b"finished")
        worker.send(C.ECHO_REQ, b"")
        worker.expect(C.ECHO_RES)
        assert status_rows(client)[b"finished"] == (b"0", b"0", b"0")


def test_idle_functions_past_the_cap_are_forgotten_longest_idle_first():
    from geartrain.server.broker import Broker

    broker = Broker(b"H:test", max_idle_functions=2)
    worker = broker.connect(1)
    for name in (b"a", b"b", b"c", b"busy"):
        broker.handle(worker, C.CAN_DO, (name,))
    for name in (b"a", b"b", b"c"):
        broker.handle(worker, C.CANT_DO, (name,))
    assert sorted(broker.functions) == [b"b", b"busy", b"c"]  # "a" idled first and went
    broker.handle(worker, C.CAN_DO, (b"b",))  # busy again: its idle entry is stale
    broker.handle(worker, C.SUBMIT_JOB_BG, (b"d", b"", b""))
    broker.disconnect(worker)  # b and busy idle now, after c
    assert sorted(broker.functions) == [b"b", b"busy", b"d"]


def test_geard_takes_the_idle_function_cap():
    from geartrain.server.cli import build_parser, config_from_args
    from geartrain.server.config import ServerConfig

    args = build_parser().parse_args(["--queue-type", "memory", "--max-idle-functions", "5"])
    assert config_from_args(args).max_idle_functions == 5
    assert ServerConfig().max_idle_functions == 10_000


def exception_answers(server) -> list[tuple[int, tuple[bytes, ...]]]:
    """What a client that never sent OPTION_REQ gets when its job's worker sends WORK_EXCEPTION."""
    with Wire(server.host, server.port, WAIT) as client, Wire(server.host, server.port, WAIT) as worker:
        handle = client.submit(b"raises", b"x")
        worker.register(b"raises")
        worker.grab(WAIT)
        worker.send(C.WORK_EXCEPTION, handle, b"boom")
        worker.send(C.WORK_FAIL, handle)  # the sequence some workers send; ignored after the exception
        answers = [client.next_event(WAIT)]
        client.send(C.ECHO_REQ, b"end")
        while (event := client.next_event(WAIT)).ptype != C.ECHO_RES:
            answers.append(event)
        return [(event.ptype, event.args) for event in answers]


def test_exceptions_flag_passes_work_exception_to_every_client(server_factory):
    """geard --exceptions as gearmand --exceptions: clients get WORK_EXCEPTION without asking for it."""
    for kind in ("gearmand", "geard"):
        plain = exception_answers(server_factory(kind))
        flagged = exception_answers(server_factory(kind, "--exceptions"))
        assert [ptype for ptype, _ in plain] == [C.WORK_FAIL], kind
        assert [ptype for ptype, _ in flagged] == [C.WORK_EXCEPTION], kind
        assert flagged[0][1][1] == b"boom"
