"""The client and worker state machines and server choice, without sockets: bytes in, bytes and events out."""

from __future__ import annotations

import pytest

from geartrain.protocol import Decoder, encode_response
from geartrain.protocol import constants as C
from geartrain.protocol.address import parse_address
from geartrain.protocol.pool import Backoff, Ring, RoundRobin, server_name
from geartrain.protocol.session import (
    Assigned,
    ClientSession,
    NoJob,
    Reply,
    StillGrabbing,
    Unanswered,
    Unsolicited,
    Wake,
    Work,
    WorkerSession,
    timeout_ms,
)


def sent(data: bytes) -> list[tuple[str, tuple[bytes, ...]]]:
    """What a server would read from these bytes: (type name, arguments) per packet."""
    return [(packet.name, packet.args) for packet in Decoder(accept=C.REQ).feed(data)]


def res(ptype: int, *args: bytes) -> bytes:
    return encode_response(ptype, *args)


#: The server's answer to the probe that follows every OPTION_REQ.
PROBE = encode_response(C.STATUS_RES, b"geartrain-option-probe", b"0", b"0", b"", b"")


def connected(exceptions: bool = True, client_id: bytes | None = None) -> ClientSession:
    session = ClientSession(client_id=client_id, exceptions=exceptions)
    session.connect()
    if exceptions:
        assert session.receive_data(res(C.OPTION_RES, b"exceptions") + PROBE) == []
        assert session.exceptions
    return session


# ------------------------------------------------------------------------------------------- client: greeting


def test_connect_sends_client_id_then_the_exceptions_option_and_its_probe():
    session = ClientSession(client_id=b"me")
    assert sent(session.connect()) == [
        ("SET_CLIENT_ID", (b"me",)),
        ("OPTION_REQ", (b"exceptions",)),
        ("GET_STATUS", (b"geartrain-option-probe",)),
    ]
    assert ClientSession(exceptions=False).connect() == b""


def test_every_submit_variant_is_encoded_and_answered():
    session = connected()
    for number, ptype in enumerate(sorted(C.SUBMIT_TYPES)):
        args = tuple(b"a%d" % i for i in range(C.ARG_COUNTS[ptype]))
        assert sent(session.submit(ptype, args, f"job{number}")) == [(C.TYPE_NAMES[ptype], args)]
    events = session.receive_data(b"".join(res(C.JOB_CREATED, b"H:%d" % n) for n in range(len(C.SUBMIT_TYPES))))
    assert [(e.request, e.kind, e.packet.args) for e in events] == [
        (f"job{n}", ptype, (b"H:%d" % n,)) for n, ptype in enumerate(sorted(C.SUBMIT_TYPES))
    ]
    foreground = {f"job{n}" for n, p in enumerate(sorted(C.SUBMIT_TYPES)) if not C.SUBMIT_TYPES[p][0]}
    assert {job for jobs in session.handles.values() for job in jobs} == foreground
    with pytest.raises(ValueError, match="not a submit"):
        session.submit(C.GET_STATUS, (b"h",), "x")


def test_every_reply_kind_reaches_its_request():
    session = connected()
    data = (
        session.submit(C.SUBMIT_JOB, (b"f", b"u", b"d"), "job")
        + session.get_status(b"H:1", "status")
        + session.get_status_unique(b"u", "status-unique")
        + session.echo(b"ping", "echo")
        + session.option(b"other", "option")
    )
    assert [name for name, _ in sent(data)] == [
        "SUBMIT_JOB", "GET_STATUS", "GET_STATUS_UNIQUE", "ECHO_REQ", "OPTION_REQ", "GET_STATUS"]
    events = session.receive_data(
        res(C.JOB_CREATED, b"H:1")
        + res(C.STATUS_RES, b"H:1", b"1", b"0", b"0", b"0")
        + res(C.STATUS_RES_UNIQUE, b"u", b"1", b"0", b"0", b"0", b"1")
        + res(C.ECHO_RES, b"ping")
        + res(C.OPTION_RES, b"other")
        + PROBE
    )
    assert [(type(e), e.request, e.packet.name) for e in events] == [
        (Reply, "job", "JOB_CREATED"),
        (Reply, "status", "STATUS_RES"),
        (Reply, "status-unique", "STATUS_RES_UNIQUE"),
        (Reply, "echo", "ECHO_RES"),
        (Reply, "option", "OPTION_RES"),
    ]
    assert session.pending == 0
    assert b"other" in session.options


def test_admin_answers_pass_through_in_order():
    session = connected()
    session.send_admin("version")
    (answer,) = session.receive_data(b"OK 1.0\n")
    assert answer.command == b"version" and answer.lines == (b"OK 1.0",)


# ------------------------------------------------------------------------------------------- client: WORK_*


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("copies", ["one", "per-submit"], ids=["one-copy-server", "gearmand-copies"])
def test_every_job_on_a_coalesced_handle_completes(count, copies):
    """geartrain sent one copy of each WORK_* packet per connection, gearmand sends one per submit, back to
    back: either way every job gets each packet once and all of them complete."""
    session = connected()
    for n in range(count):
        session.submit(C.SUBMIT_JOB, (b"f", b"same", b"d"), f"job{n}")
    created = session.receive_data(res(C.JOB_CREATED, b"H:1") * count)
    assert [e.request for e in created] == [f"job{n}" for n in range(count)]
    jobs = [f"job{n}" for n in range(count)]
    times = 1 if copies == "one" else count

    def server_sends(ptype, *args):
        return session.receive_data(res(ptype, *args) * times)

    (data,) = server_sends(C.WORK_DATA, b"H:1", b"part")
    assert data == Work(jobs, data.packet, False)
    if copies == "per-submit":
        (again,) = server_sends(C.WORK_DATA, b"H:1", b"part")  # the same chunk twice: still two chunks
        assert again.jobs == jobs
    (status,) = server_sends(C.WORK_STATUS, b"H:1", b"1", b"2")
    assert status.jobs == jobs and not status.final
    (warning,) = server_sends(C.WORK_WARNING, b"H:1", b"careful")
    assert warning.jobs == jobs
    (done,) = server_sends(C.WORK_COMPLETE, b"H:1", b"result")
    assert done.jobs == jobs and done.final and done.packet.args == (b"H:1", b"result")
    assert session.handles == {}
    # Anything else after that for the handle finds nobody waiting.
    assert [type(e) for e in session.receive_data(res(C.WORK_FAIL, b"H:1"))] == [Unsolicited]


def test_copies_are_counted_per_run_and_interleaved_handles_are_not_copies():
    session = connected()
    for unique, job in ((b"a", "a1"), (b"a", "a2"), (b"b", "b1")):
        session.submit(C.SUBMIT_JOB, (b"f", unique, b"d"), job)
    session.receive_data(res(C.JOB_CREATED, b"H:a") * 2 + res(C.JOB_CREATED, b"H:b"))
    events = session.receive_data(
        res(C.WORK_DATA, b"H:a", b"x") + res(C.WORK_DATA, b"H:b", b"x") + res(C.WORK_DATA, b"H:a", b"x")
    )
    assert [e.jobs for e in events] == [["a1", "a2"], ["b1"], ["a1", "a2"]]


@pytest.mark.parametrize("exceptions", [True, False])
def test_work_exception_ends_the_job_with_and_without_the_option(exceptions):
    session = connected(exceptions=exceptions)
    assert session.exceptions is exceptions
    session.submit(C.SUBMIT_JOB, (b"f", b"u", b"d"), "job")
    session.receive_data(res(C.JOB_CREATED, b"H:1"))
    (event,) = session.receive_data(res(C.WORK_EXCEPTION, b"H:1", b"boom"))
    assert event.jobs == ["job"] and event.final and event.packet.args[1] == b"boom"
    assert session.handles == {}


def test_work_fail_ends_the_job():
    session = connected()
    session.submit(C.SUBMIT_JOB_HIGH, (b"f", b"u", b"d"), "job")
    session.receive_data(res(C.JOB_CREATED, b"H:1"))
    (event,) = session.receive_data(res(C.WORK_FAIL, b"H:1"))
    assert event.final and event.jobs == ["job"]


def test_background_jobs_are_not_tracked_after_job_created():
    session = connected()
    session.submit(C.SUBMIT_JOB_BG, (b"f", b"u", b"d"), "job")
    (created,) = session.receive_data(res(C.JOB_CREATED, b"H:1"))
    assert created.request == "job" and session.handles == {}


def test_forget_stops_routing_to_one_job_of_a_handle():
    session = connected()
    session.submit(C.SUBMIT_JOB, (b"f", b"u", b"d"), "a")
    session.submit(C.SUBMIT_JOB, (b"f", b"u", b"d"), "b")
    session.receive_data(res(C.JOB_CREATED, b"H:1") * 2)
    session.forget("a")
    (event,) = session.receive_data(res(C.WORK_COMPLETE, b"H:1", b""))
    assert event.jobs == ["b"]


# ------------------------------------------------------------------------------------------- client: errors


def test_an_error_answers_the_submit_it_follows_and_nothing_shifts():
    session = connected()
    session.submit(C.SUBMIT_JOB, (b"f", b"u1", b"d"), "first")
    session.submit(C.SUBMIT_JOB, (b"f", b"u2", b"d"), "second")
    events = session.receive_data(res(C.ERROR, b"QUEUE_ERROR", b"full") + res(C.JOB_CREATED, b"H:2"))
    assert [(e.request, e.packet.name) for e in events] == [("first", "ERROR"), ("second", "JOB_CREATED")]
    assert events[0].packet.args == (b"QUEUE_ERROR", b"full")
    assert session.handles == {b"H:2": ["second"]}


def test_an_ignored_option_does_not_shift_job_created():
    """gear 0.16.0's geard ignores OPTION_REQ: the probe's STATUS_RES says so, submits keep their own handles."""
    session = ClientSession()
    session.connect()
    session.option(b"other", "option")
    session.submit(C.SUBMIT_JOB, (b"f", b"u1", b"d"), "first")
    session.submit(C.SUBMIT_JOB, (b"f", b"u2", b"d"), "second")
    events = session.receive_data(
        PROBE  # exceptions: ignored
        + PROBE  # other: ignored
        + res(C.JOB_CREATED, b"H:1")
        + res(C.JOB_CREATED, b"H:2")
    )
    assert events == [
        Unanswered("option", C.OPTION_REQ),
        Reply("first", C.SUBMIT_JOB, events[1].packet),
        Reply("second", C.SUBMIT_JOB, events[2].packet),
    ]
    assert events[1].packet.args == (b"H:1",) and events[2].packet.args == (b"H:2",)
    assert not session.exceptions


def test_an_ignored_option_then_an_error_for_a_submit_reaches_the_submit():
    session = ClientSession()
    session.connect()
    session.submit(C.SUBMIT_JOB, (b"f", b"u1", b"d"), "first")
    session.submit(C.SUBMIT_JOB, (b"f", b"u2", b"d"), "second")
    events = session.receive_data(
        PROBE + res(C.ERROR, b"QUEUE_ERROR", b"full")
        + res(C.JOB_CREATED, b"H:2")
    )
    assert [(e.request, e.packet.name) for e in events] == [("first", "ERROR"), ("second", "JOB_CREATED")]


def test_an_option_refused_with_error_does_not_shift_job_created():
    session = ClientSession()
    session.connect()
    session.option(b"other", "option")
    session.submit(C.SUBMIT_JOB, (b"f", b"u1", b"d"), "first")
    events = session.receive_data(
        res(C.ERROR, b"UNKNOWN_OPTION", b"no") + PROBE
        + res(C.ERROR, b"UNKNOWN_OPTION", b"no") + PROBE
        + res(C.JOB_CREATED, b"H:1")
    )
    assert [(e.request, e.packet.name) for e in events] == [("option", "ERROR"), ("first", "JOB_CREATED")]
    assert not session.exceptions and session.pending == 0


def test_a_request_the_server_passes_over_ends_unanswered():
    session = connected()
    session.get_status_unique(b"u", "unique-status")
    session.submit(C.SUBMIT_JOB, (b"f", b"u", b"d"), "job")
    events = session.receive_data(res(C.JOB_CREATED, b"H:1"))
    assert events == [Unanswered("unique-status", C.GET_STATUS_UNIQUE), Reply("job", C.SUBMIT_JOB, events[1].packet)]


def test_replies_nothing_waits_for_are_unsolicited():
    session = connected()
    events = session.receive_data(
        res(C.JOB_CREATED, b"H:9") + res(C.ERROR, b"X", b"y") + res(C.NOOP) + res(C.WORK_COMPLETE, b"H:9", b"")
    )
    assert [type(e) for e in events] == [Unsolicited] * 4


# ------------------------------------------------------------------------------------------- client: loss


def test_loss_before_job_created_leaves_the_submit_unacknowledged():
    session = connected()
    session.submit(C.SUBMIT_JOB, (b"f", b"u", b"d"), "job")
    session.echo(b"x", "echo")
    loss = session.lost()
    assert loss.unacknowledged == ["job"] and loss.acknowledged == [] and loss.requests == [("echo", C.ECHO_REQ)]
    assert session.pending == 0 and session.handles == {}


def test_loss_after_job_created_loses_every_job_of_the_handle():
    session = connected()
    session.submit(C.SUBMIT_JOB, (b"f", b"u", b"d"), "a")
    session.submit(C.SUBMIT_JOB, (b"f", b"u", b"d"), "b")
    session.submit(C.SUBMIT_JOB, (b"f", b"v", b"d"), "c")
    session.receive_data(res(C.JOB_CREATED, b"H:1") * 2)
    loss = session.lost()
    assert loss.unacknowledged == ["c"] and loss.acknowledged == ["a", "b"]


def test_reconnect_starts_afresh():
    session = connected()
    session.submit(C.SUBMIT_JOB, (b"f", b"u", b"d"), "job")
    session.connect()
    assert session.pending == 2 and session.handles == {}  # the option and its probe only
    assert not session.exceptions


# ------------------------------------------------------------------------------------------- worker


def test_worker_greeting_abilities_and_can_do_timeout_in_milliseconds():
    worker = WorkerSession(client_id=b"w")
    worker.can_do(b"plain")
    worker.can_do(b"timed", 2.5)
    assert sent(worker.connect()) == [
        ("SET_CLIENT_ID", (b"w",)), ("CAN_DO", (b"plain",)), ("CAN_DO_TIMEOUT", (b"timed", b"2500"))]
    assert sent(worker.cant_do(b"plain")) == [("CANT_DO", (b"plain",))]
    assert sent(worker.set_abilities({b"x": None})) == [("RESET_ABILITIES", ()), ("CAN_DO", (b"x",))]
    assert worker.abilities == {b"x": None}


@pytest.mark.parametrize(
    ("seconds", "wire"),
    [(1, b"1000"), (0.0004, b"1"), (0.0015, b"2"), (2.4996, b"2500"), ("3", b"3000"), (b"0.25", b"250")],
)
def test_can_do_timeout_rounds_seconds_to_milliseconds(seconds, wire):
    assert timeout_ms(seconds) == wire


@pytest.mark.parametrize("bad", [0, -1, "soon"])
def test_can_do_timeout_refuses_what_is_not_a_positive_time(bad):
    with pytest.raises(ValueError):
        timeout_ms(bad)


@pytest.mark.parametrize(
    ("grab", "assign", "args", "unique"),
    [
        (C.GRAB_JOB, C.JOB_ASSIGN, (b"H:1", b"f", b"d"), b""),
        (C.GRAB_JOB_UNIQ, C.JOB_ASSIGN_UNIQ, (b"H:1", b"f", b"u", b"d"), b"u"),
        (C.GRAB_JOB_ALL, C.JOB_ASSIGN_ALL, (b"H:1", b"f", b"u", b"r", b"d"), b"u"),
    ],
)
def test_worker_grab_sleep_wake_machine(grab, assign, args, unique):
    worker = WorkerSession(grab_type=grab)
    assert worker.assign_type == assign
    worker.connect()
    assert worker.state == "IDLE"
    assert sent(worker.grab()) == [(C.TYPE_NAMES[grab], ())]
    assert worker.grab() == b""  # one grab at a time
    (nothing,) = worker.receive_data(res(C.NO_JOB))
    assert nothing == NoJob()
    assert sent(worker.pre_sleep()) == [("PRE_SLEEP", ())] and worker.state == "SLEEP"
    (wake,) = worker.receive_data(res(C.NOOP))
    assert wake == Wake() and worker.state == "IDLE"
    worker.grab()
    (job,) = worker.receive_data(res(assign, *args))
    assert type(job) is Assigned and job.job.handle == b"H:1" and job.job.unique == unique
    assert job.job.data == b"d" and worker.state == "IDLE"
    assert sent(worker.work(C.WORK_COMPLETE, b"H:1", b"ok")) == [("WORK_COMPLETE", (b"H:1", b"ok"))]
    assert worker.complete(b"H:1", b"o\0k") == worker.work(C.WORK_COMPLETE, b"H:1", b"o\0k")
    assert sent(worker.work(C.WORK_STATUS, b"H:1", b"1", b"2")) == [("WORK_STATUS", (b"H:1", b"1", b"2"))]
    with pytest.raises(ValueError):
        worker.work(C.CAN_DO, b"H:1")


def test_a_prefetching_worker_counts_its_grabs_and_sleeps_only_when_none_waits():
    worker = WorkerSession()
    worker.connect()
    assert sent(worker.grab(limit=2) + worker.grab(limit=2)) == [("GRAB_JOB_UNIQ", ())] * 2
    assert worker.grab(limit=2) == b"" and worker.grabs == 2 and worker.state == "GRAB_WAIT"
    # NO_JOB for the first grab while the second still waits: no PRE_SLEEP yet, its answer decides.
    (first,) = worker.receive_data(res(C.NO_JOB))
    assert first == StillGrabbing() and worker.grabs == 1 and worker.state == "GRAB_WAIT"
    (second,) = worker.receive_data(res(C.NO_JOB))
    assert second == NoJob() and worker.grabs == 0 and worker.state == "IDLE"
    worker.pre_sleep()
    (wake,) = worker.receive_data(res(C.NOOP))
    assert wake == Wake() and worker.state == "IDLE"
    # Two grabs, a job for the first: still waiting for the second; a NOOP meanwhile wakes nothing.
    worker.grab(limit=2)
    worker.grab(limit=2)
    (job,) = worker.receive_data(res(C.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"u", b"d"))
    assert type(job) is Assigned and worker.grabs == 1 and worker.state == "GRAB_WAIT"
    assert worker.receive_data(res(C.NOOP)) == [Wake()] and worker.state == "GRAB_WAIT"
    assert worker.grab() == b""  # the default limit: one grab out already
    (job,) = worker.receive_data(res(C.JOB_ASSIGN_UNIQ, b"H:2", b"f", b"u", b"d"))
    assert type(job) is Assigned and worker.grabs == 0 and worker.state == "IDLE"
    worker.grab(limit=2)
    worker.lost()
    assert worker.grabs == 0 and worker.state == "INIT"


# ------------------------------------------------------------------------------------------- server choice

SERVERS = [("10.0.0.1", 4730), ("10.0.0.2", 4730), ("10.0.0.3", 4731), ("::1", 4730)]
UNIQUES = [b"unique-%d" % n for n in range(2000)]


def ring(servers) -> Ring:
    return Ring((server_name(host, port), server_name(host, port)) for host, port in servers)


def test_ring_is_the_same_whatever_the_order_of_the_servers():
    first = ring(SERVERS)
    second = ring(list(reversed(SERVERS)))
    third = ring(SERVERS[2:] + SERVERS[:2])
    assert [first.pick(u) for u in UNIQUES] == [second.pick(u) for u in UNIQUES] == [third.pick(u) for u in UNIQUES]
    assert first.order(b"x") == second.order(b"x")


def test_ring_spreads_uniques_over_every_server():
    picks = [ring(SERVERS).pick(u) for u in UNIQUES]
    for host, port in SERVERS:
        assert picks.count(server_name(host, port)) > len(UNIQUES) / len(SERVERS) / 3


def test_with_one_server_down_only_its_uniques_move():
    pool = ring(SERVERS)
    down = server_name(*SERVERS[1])
    before = {u: pool.pick(u) for u in UNIQUES}
    after = {u: pool.pick(u, lambda s: s != down) for u in UNIQUES}
    moved = {u for u in UNIQUES if before[u] != after[u]}
    assert moved == {u for u in UNIQUES if before[u] == down}
    assert all(after[u] == pool.order(u)[1] for u in moved)  # the next server on the ring takes them
    assert pool.pick(b"x", lambda s: False) is None


def test_ring_of_one_and_duplicates():
    single = ring(SERVERS[:1])
    assert single.pick(b"anything") == "10.0.0.1:4730" and single.order(b"a") == ["10.0.0.1:4730"]
    with pytest.raises(ValueError, match="twice"):
        ring(SERVERS[:1] * 2)


def test_round_robin_skips_servers_that_are_down():
    rr = RoundRobin()
    servers = ["a", "b", "c"]
    assert [rr.pick(servers) for _ in range(4)] == ["a", "b", "c", "a"]
    assert [rr.pick(servers, lambda s: s != "c") for _ in range(3)] == ["b", "a", "b"]
    assert rr.pick(servers, lambda s: False) is None


def test_backoff_sequence_ceiling_jitter_and_reset():
    draws = iter([0.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    backoff = Backoff(initial=0.1, ceiling=1.0, stable_after=10.0, rng=lambda: next(draws))
    delays = [round(backoff.next_delay(), 6) for _ in range(6)]
    # nominal 0.1, 0.2, 0.4, 0.8, 1.0, 1.0; jitter draws between half and all of it
    assert delays == [0.05, 0.2, 0.3, 0.4, 0.5, 0.5]
    backoff.connected(100.0)
    backoff.lost(105.0)  # up for 5 s: not stable, the delays keep growing
    assert backoff.nominal == 1.0
    backoff.connected(200.0)
    backoff.lost(210.0)  # up for 10 s: starts afresh
    assert backoff.nominal == 0.1
    assert round(backoff.next_delay(), 6) == 0.05
    with pytest.raises(ValueError):
        Backoff(initial=2.0, ceiling=1.0)


# ------------------------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("spec", "address"),
    [
        ("example:4731", ("example", 4731)),
        ("example", ("example", 4730)),
        (b"example:1", ("example", 1)),
        (("::1", 4732), ("::1", 4732)),
        ("[::1]:4733", ("::1", 4733)),
        ("[::1]", ("::1", 4730)),
        ("::1", ("::1", 4730)),
        (" host:5 ", ("host", 5)),
    ],
)
def test_server_addresses_are_read_as_users_write_them(spec, address):
    assert parse_address(spec) == address


@pytest.mark.parametrize("bad", ["", "host:port", "host:0", "[::1", "[::1]x", ("h",), None])
def test_unreadable_server_addresses_say_what_is_wrong(bad):
    with pytest.raises(ValueError, match="bad server address"):
        parse_address(bad)


# ------------------------------------------------------------------------------------------- socket tuning


def test_tuning_sets_nodelay_and_keepalive_on_tcp_sockets():
    import socket

    from geartrain.sockets import tune

    with socket.socket() as sock:
        tune(sock, keepalive=True, keepidle=30, keepintvl=5, keepcnt=3)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30


def test_tuning_leaves_what_is_no_tcp_socket_alone():
    """gear 0.16.0's own tests hand the Connection a fake socket with no ``family``."""
    import socket

    from geartrain.sockets import tune

    class FakeSocket:
        def setsockopt(self, *args):
            raise AssertionError("a fake socket was tuned")

    tune(FakeSocket(), keepalive=True)
    tune(None)
    left, right = socket.socketpair()  # AF_UNIX: no TCP options
    with left, right:
        tune(left, keepalive=True)


def test_reading_a_stand_in_socket_that_has_only_recv():
    from geartrain.sockets import recv_some

    class RecvOnly:
        def recv(self, count):
            return b"data"[:count]

    assert recv_some(RecvOnly()) == b"data"
