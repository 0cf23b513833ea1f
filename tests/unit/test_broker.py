"""The broker without sockets: every rule of shared/reference/protocol.md that it owns."""

from __future__ import annotations

import pytest

from geartrain.protocol import Packet
from geartrain.protocol import constants as C

from broker_harness import Harness


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_foreground_job_round_trip(h):
    client, worker = h.peer(), h.worker(b"rev")
    handle = h.submit(client, b"rev", b"abc", b"u1")
    assign = h.grab(worker)
    assert assign.ptype == C.JOB_ASSIGN_UNIQ
    assert assign.args == (handle, b"rev", b"u1", b"abc")
    h.send(worker, C.WORK_COMPLETE, handle, b"cba")
    assert h.one(client) == Packet(C.RES, C.WORK_COMPLETE, (handle, b"cba"))
    assert not h.broker.jobs and not client.waiting and not worker.running


def test_job_created_answers_follow_submit_order(h):
    client = h.peer()
    for i in range(5):
        h.send(client, C.SUBMIT_JOB_BG, b"f", b"", b"%d" % i)
    handles = [p.args[0] for p in h.recv(client)]
    assert len(handles) == 5 and len(set(handles)) == 5
    worker = h.worker(b"f")
    data = [h.grab(worker, C.GRAB_JOB).args for _ in range(5)]
    assert [(a[0], a[2]) for a in data] == [(handles[i], b"%d" % i) for i in range(5)]


def test_priorities_high_before_normal_before_low(h):
    client = h.peer()
    h.submit(client, b"f", b"low", ptype=C.SUBMIT_JOB_LOW_BG)
    h.submit(client, b"f", b"normal", ptype=C.SUBMIT_JOB_BG)
    h.submit(client, b"f", b"high", ptype=C.SUBMIT_JOB_HIGH_BG)
    worker = h.worker(b"f")
    assert [h.grab(worker).args[3] for _ in range(3)] == [b"high", b"normal", b"low"]
    assert h.grab(worker).ptype == C.NO_JOB


def test_priority_applies_across_the_functions_of_a_worker(h):
    client = h.peer()
    h.submit(client, b"a", b"a-low", ptype=C.SUBMIT_JOB_LOW_BG)
    h.submit(client, b"b", b"b-high", ptype=C.SUBMIT_JOB_HIGH_BG)
    worker = h.worker(b"a", b"b")
    assert h.grab(worker).args[3] == b"b-high"


def test_functions_are_served_round_robin(h):
    client = h.peer()
    for _ in range(2):
        h.submit(client, b"a", b"a", ptype=C.SUBMIT_JOB_BG)
    for _ in range(2):
        h.submit(client, b"b", b"b", ptype=C.SUBMIT_JOB_BG)
    worker = h.worker(b"a", b"b")
    assert [h.grab(worker).args[1] for _ in range(4)] == [b"a", b"b", b"a", b"b"]


def test_duplicate_unique_joins_queued_and_running_job(h):
    first, second, third = h.peer(), h.peer(), h.peer()
    handle = h.submit(first, b"f", b"x", b"same")
    assert h.submit(second, b"f", b"other data", b"same") == handle
    worker = h.worker(b"f")
    h.grab(worker)
    assert h.submit(third, b"f", b"x", b"same") == handle  # joins the running job
    h.send(worker, C.WORK_DATA, handle, b"partial")
    h.send(worker, C.WORK_COMPLETE, handle, b"done")
    for client in (first, second, third):
        assert [p.ptype for p in h.recv(client)] == [C.WORK_DATA, C.WORK_COMPLETE]
    assert h.submit(first, b"f", b"x", b"same") != handle  # the unique is free again


def test_empty_unique_never_coalesces_and_dash_coalesces_on_data(h):
    client = h.peer()
    assert h.submit(client, b"f", b"x") != h.submit(client, b"f", b"x")
    assert h.submit(client, b"f", b"same", b"-") == h.submit(client, b"f", b"same", b"-")
    assert h.submit(client, b"f", b"other", b"-") != h.submit(client, b"f", b"same", b"-")


def test_same_unique_different_functions_are_different_jobs(h):
    client = h.peer()
    assert h.submit(client, b"f", b"x", b"u") != h.submit(client, b"g", b"x", b"u")


def test_pre_sleep_then_submit_wakes_one_sleeper_with_one_noop(h):
    w1, w2 = h.worker(b"f"), h.worker(b"f")
    for w in (w1, w2):
        assert h.grab(w).ptype == C.NO_JOB
        h.send(w, C.PRE_SLEEP)
    client = h.peer()
    h.submit(client, b"f", ptype=C.SUBMIT_JOB_BG)
    woken = [w for w in (w1, w2) if h.recv(w) == [Packet(C.RES, C.NOOP, ())]]
    assert len(woken) == 1
    h.submit(client, b"f", ptype=C.SUBMIT_JOB_BG)
    assert h.recv(woken[0]) == []  # at most one NOOP until its next grab
    other = w2 if woken[0] is w1 else w1
    assert h.recv(other) == [Packet(C.RES, C.NOOP, ())]


def test_pre_sleep_with_work_waiting_gets_noop_at_once(h):
    client, worker = h.peer(), h.worker(b"f")
    h.submit(client, b"f", ptype=C.SUBMIT_JOB_BG)
    h.send(worker, C.PRE_SLEEP)  # the race: the job arrived between NO_JOB and PRE_SLEEP
    assert h.one(worker).ptype == C.NOOP


def test_worker_wakeup_setting_wakes_that_many(h):
    h = Harness(worker_wakeup=3)
    workers = [h.worker(b"f") for _ in range(4)]
    for w in workers:
        h.send(w, C.PRE_SLEEP)
    h.submit(h.peer(), b"f", ptype=C.SUBMIT_JOB_BG)
    assert sum(bool(h.recv(w)) for w in workers) == 3


def test_registering_while_asleep_wakes_when_work_waits(h):
    client, worker = h.peer(), h.worker(b"g")
    h.send(worker, C.PRE_SLEEP)
    h.submit(client, b"f", ptype=C.SUBMIT_JOB_BG)
    assert h.recv(worker) == []
    h.send(worker, C.CAN_DO, b"f")
    assert h.one(worker).ptype == C.NOOP


def test_work_packets_are_relayed_to_every_waiting_client(h):
    a, b = h.peer(), h.peer()
    handle = h.submit(a, b"f", unique=b"u")
    h.submit(b, b"f", unique=b"u")
    worker = h.worker(b"f")
    h.grab(worker)
    h.send(worker, C.WORK_STATUS, handle, b"1", b"4")
    h.send(worker, C.WORK_WARNING, handle, b"careful")
    h.send(worker, C.WORK_DATA, handle, b"chunk")
    h.send(worker, C.WORK_FAIL, handle)
    for client in (a, b):
        assert h.recv(client) == [
            Packet(C.RES, C.WORK_STATUS, (handle, b"1", b"4")),
            Packet(C.RES, C.WORK_WARNING, (handle, b"careful")),
            Packet(C.RES, C.WORK_DATA, (handle, b"chunk")),
            Packet(C.RES, C.WORK_FAIL, (handle,)),
        ]


def test_exception_reaches_only_clients_that_asked_others_get_fail(h):
    asked, plain = h.peer(), h.peer()
    h.send(asked, C.OPTION_REQ, b"exceptions")
    assert h.one(asked) == Packet(C.RES, C.OPTION_RES, (b"exceptions",))
    handle = h.submit(asked, b"f", unique=b"u")
    h.submit(plain, b"f", unique=b"u")
    worker = h.worker(b"f")
    h.grab(worker)
    h.send(worker, C.WORK_EXCEPTION, handle, b"boom")
    assert h.recv(asked) == [Packet(C.RES, C.WORK_EXCEPTION, (handle, b"boom"))]
    assert h.recv(plain) == [Packet(C.RES, C.WORK_FAIL, (handle,))]
    h.send(worker, C.WORK_FAIL, handle)  # the Perl server's sequence: accepted silently
    assert h.recv(worker) == []
    assert not h.broker.jobs


def test_unknown_option_is_an_error(h):
    peer = h.peer()
    h.send(peer, C.OPTION_REQ, b"bogus")
    assert h.one(peer).args[0] == b"UNKNOWN_OPTION"


def test_work_result_for_a_handle_not_held_is_job_not_found(h):
    client, worker, other = h.peer(), h.worker(b"f"), h.worker(b"f")
    handle = h.submit(client, b"f")
    h.grab(worker)
    for ptype, args in ((C.WORK_COMPLETE, (handle, b"x")), (C.WORK_DATA, (b"H:nope:1", b"x")),
                        (C.WORK_FAIL, (b"H:nope:2",)), (C.WORK_STATUS, (b"H:x", b"1", b"2"))):
        h.send(other, ptype, *args)
        packet = h.one(other)
        assert packet.ptype == C.ERROR and packet.args[0] == b"JOB_NOT_FOUND"
    assert handle in worker.running


def test_get_status_known_running_and_progress(h):
    client, worker = h.peer(), h.worker(b"f")
    handle = h.submit(client, b"f", ptype=C.SUBMIT_JOB_BG)
    h.send(client, C.GET_STATUS, handle)
    assert h.one(client).args == (handle, b"1", b"0", b"0", b"0")
    h.grab(worker)
    h.send(worker, C.WORK_STATUS, handle, b"3", b"10")
    h.send(client, C.GET_STATUS, handle)
    assert h.one(client).args == (handle, b"1", b"1", b"3", b"10")
    h.send(client, C.GET_STATUS, b"H:none")
    assert h.one(client).args == (b"H:none", b"0", b"0", b"0", b"0")


def test_get_status_unique_counts_waiting_clients(h):
    a, b = h.peer(), h.peer()
    h.submit(a, b"f", unique=b"uu")
    h.submit(b, b"f", unique=b"uu")
    h.send(a, C.GET_STATUS_UNIQUE, b"uu")
    assert h.one(a).args == (b"uu", b"1", b"0", b"0", b"0", b"2")
    h.send(a, C.GET_STATUS_UNIQUE, b"missing")
    assert h.one(a).args == (b"missing", b"0", b"0", b"0", b"0", b"0")


def test_echo_and_client_id(h):
    peer = h.peer()
    h.send(peer, C.ECHO_REQ, b"ping\x00pong")
    assert h.one(peer) == Packet(C.RES, C.ECHO_RES, (b"ping\x00pong",))
    h.send(peer, C.SET_CLIENT_ID, b"x" * 300)
    assert peer.client_id == b"x" * 127
    assert h.recv(peer) == []


def test_worker_disconnect_requeues_at_tail_and_resets_status(h):
    client, w1 = h.peer(), h.worker(b"f")
    first = h.submit(client, b"f", b"1", ptype=C.SUBMIT_JOB_BG)
    h.submit(client, b"f", b"2", ptype=C.SUBMIT_JOB_BG)
    h.grab(w1)
    h.send(w1, C.WORK_STATUS, first, b"1", b"2")
    w2 = h.worker(b"f")
    h.send(w2, C.PRE_SLEEP)
    h.broker.disconnect(w1)
    assert h.one(w2).ptype == C.NOOP
    assert [h.grab(w2).args[3] for _ in range(2)] == [b"2", b"1"]
    h.send(client, C.GET_STATUS, first)
    assert h.one(client).args[3:] == (b"0", b"0")
    assert h.broker.jobs[first].retries == 1


def test_job_retries_fail_the_job_for_its_clients():
    h = Harness(job_retries=1)
    client = h.peer()
    handle = h.submit(client, b"f")
    for _ in range(2):
        worker = h.worker(b"f")
        h.grab(worker)
        h.broker.disconnect(worker)
    assert h.recv(client) == [Packet(C.RES, C.WORK_FAIL, (handle,))]
    assert not h.broker.jobs


def test_foreground_job_is_dropped_when_all_clients_leave_before_it_runs(h):
    a, b = h.peer(), h.peer()
    h.submit(a, b"f", unique=b"u")
    h.submit(b, b"f", unique=b"u")
    h.broker.disconnect(a)
    assert len(h.broker.jobs) == 1
    h.broker.disconnect(b)
    assert not h.broker.jobs
    assert h.grab(h.worker(b"f")).ptype == C.NO_JOB


def test_running_foreground_job_whose_client_left_still_completes(h):
    client, worker = h.peer(), h.worker(b"f")
    handle = h.submit(client, b"f")
    h.grab(worker)
    h.broker.disconnect(client)
    h.send(worker, C.WORK_COMPLETE, handle, b"x")
    assert h.recv(worker) == [] and not h.broker.jobs


def test_cant_do_keeps_the_result_of_a_running_job(h):
    client, worker = h.peer(), h.worker(b"f")
    handle = h.submit(client, b"f")
    h.grab(worker)
    h.send(worker, C.CANT_DO, b"f")
    h.send(worker, C.RESET_ABILITIES)
    h.send(worker, C.WORK_COMPLETE, handle, b"still counts")
    assert h.one(client) == Packet(C.RES, C.WORK_COMPLETE, (handle, b"still counts"))
    assert h.grab(worker).ptype == C.NO_JOB


def test_can_do_timeout_requeues_and_counts_a_retry(h):
    client, worker = h.peer(), h.peer()
    h.send(worker, C.CAN_DO_TIMEOUT, b"f", b"2000")
    handle = h.submit(client, b"f")
    h.grab(worker)
    assert h.broker.next_timer() == h.now + 2.0
    h.now += 2.5
    h.broker.run_timers()
    assert h.broker.jobs[handle].retries == 1
    assert not worker.running
    h.send(worker, C.WORK_COMPLETE, handle, b"late")
    assert h.one(worker).args[0] == b"JOB_NOT_FOUND"
    assert h.grab(worker).args[0] == handle  # it can run again


def test_epoch_job_waits_for_its_time_and_wakes_sleepers(h):
    client, worker = h.peer(), h.worker(b"f")
    h.send(worker, C.PRE_SLEEP)
    h.send(client, C.SUBMIT_JOB_EPOCH, b"f", b"", str(int(h.now + 60)).encode(), b"later")
    assert h.one(client).ptype == C.JOB_CREATED
    assert h.recv(worker) == []
    assert h.grab(worker).ptype == C.NO_JOB
    h.send(worker, C.PRE_SLEEP)
    h.now += 61
    h.broker.run_timers()
    assert h.one(worker).ptype == C.NOOP
    assert h.grab(worker).args[3] == b"later"


def test_epoch_in_the_past_runs_at_once(h):
    client, worker = h.peer(), h.worker(b"f")
    h.send(client, C.SUBMIT_JOB_EPOCH, b"f", b"", b"5", b"now")
    h.recv(client)
    assert h.grab(worker).args[3] == b"now"


def test_reduce_job_is_accepted_and_grab_all_carries_the_reducer(h):
    client, worker = h.peer(), h.worker(b"map")
    h.send(client, C.SUBMIT_REDUCE_JOB, b"map", b"u", b"red", b"agg", b"data")
    handle = h.one(client).args[0]
    assign = h.grab(worker, C.GRAB_JOB_ALL)
    assert assign == Packet(C.RES, C.JOB_ASSIGN_ALL, (handle, b"map", b"u", b"red", b"data"))
    h.submit(client, b"map", b"plain", ptype=C.SUBMIT_JOB_BG)
    assert h.grab(worker, C.GRAB_JOB_ALL).ptype == C.JOB_ASSIGN_UNIQ


def test_sched_submit_with_a_bad_field_gets_an_error_naming_it(h):
    client = h.peer()
    h.send(client, C.SUBMIT_JOB_SCHED, b"f", b"", b"1", b"25", b"3", b"4", b"5", b"d")
    packet = h.one(client)
    assert packet.ptype == C.ERROR and b"hour" in packet.args[1]


def test_maxqueue_refuses_with_queue_error_per_priority(h):
    assert h.admin_cmd(b"maxqueue f 1 2 0") == b"OK\r\n"
    client = h.peer()
    h.submit(client, b"f", ptype=C.SUBMIT_JOB_HIGH_BG)
    h.send(client, C.SUBMIT_JOB_HIGH_BG, b"f", b"", b"x")
    assert h.one(client).args[0] == b"QUEUE_ERROR"
    h.submit(client, b"f", ptype=C.SUBMIT_JOB_BG)
    h.submit(client, b"f", ptype=C.SUBMIT_JOB_BG)
    h.send(client, C.SUBMIT_JOB_BG, b"f", b"", b"x")
    assert h.one(client).args[0] == b"QUEUE_ERROR"
    for _ in range(5):
        h.submit(client, b"f", ptype=C.SUBMIT_JOB_LOW_BG)  # 0: unlimited


def test_unique_over_64_bytes_is_argument_too_large(h):
    client = h.peer()
    h.send(client, C.SUBMIT_JOB, b"f", b"u" * 65, b"x")
    assert h.one(client).args[0] == b"ARGUMENT_TOO_LARGE"
    h.submit(client, b"f", unique=b"u" * 64)


def test_queued_bytes_limit_answers_queue_error():
    h = Harness(max_queued_bytes=10)
    client = h.peer()
    h.submit(client, b"f", b"12345", ptype=C.SUBMIT_JOB_BG)
    h.send(client, C.SUBMIT_JOB_BG, b"f", b"", b"123456")
    assert h.one(client).args[0] == b"QUEUE_ERROR"


def test_response_types_sent_to_the_server_are_invalid_commands(h):
    peer = h.peer()
    h.send(peer, C.JOB_CREATED, b"H:x")
    assert h.one(peer).args[0] == b"INVALID_COMMAND"


def test_handles_are_unique_and_do_not_repeat_after_restart(h):
    client = h.peer()
    first = {h.submit(client, b"f", ptype=C.SUBMIT_JOB_BG) for _ in range(100)}
    later = Harness(now=h.now + 1)
    second = {later.submit(later.peer(), b"f", ptype=C.SUBMIT_JOB_BG) for _ in range(100)}
    assert len(first) == 100 and not first & second


# ---------------------------------------------------------------------- admin over the broker

def test_admin_status_prioritystatus_and_workers(h):
    client, worker = h.peer(), h.worker(b"f", b"g")
    h.send(worker, C.SET_CLIENT_ID, b"w1")
    h.submit(client, b"f", ptype=C.SUBMIT_JOB_HIGH_BG)
    h.submit(client, b"f", ptype=C.SUBMIT_JOB_LOW_BG)
    h.grab(worker)
    assert h.admin_cmd(b"status") == b"f\t2\t1\t1\ng\t0\t0\t1\n.\n"
    assert h.admin_cmd(b"prioritystatus") == b"f\t0\t0\t1\t1\ng\t0\t0\t0\t1\n.\n"
    lines = h.admin_cmd(b"workers").split(b"\n")
    assert b"%d 127.0.0.1 w1 : f g" % worker.id in lines
    assert b"%d 127.0.0.1 - :" % client.id in lines
    assert lines[-2:] == [b".", b""]


def test_admin_show_jobs_and_unique_jobs(h):
    client = h.peer()
    handle = h.submit(client, b"f", unique=b"u1", ptype=C.SUBMIT_JOB_BG)
    h.submit(client, b"f", ptype=C.SUBMIT_JOB_BG)
    assert h.admin_cmd(b"show jobs").startswith(handle + b"\t0\t0\t1\n")
    assert h.admin_cmd(b"show unique jobs") == b"u1\n.\n"


def test_admin_cancel_job_fails_waiting_clients(h):
    client = h.peer()
    handle = h.submit(client, b"f")
    assert h.admin_cmd(b"cancel job " + handle) == b"OK\r\n"
    assert h.one(client) == Packet(C.RES, C.WORK_FAIL, (handle,))
    assert h.admin_cmd(b"cancel job " + handle).startswith(b"ERR UNKNOWN_JOB")
    assert h.grab(h.worker(b"f")).ptype == C.NO_JOB


def test_admin_create_and_drop_function(h):
    assert h.admin_cmd(b"create function zz") == b"OK\r\n"
    assert b"zz\t0\t0\t0" in h.admin_cmd(b"status")
    assert h.admin_cmd(b"drop function zz") == b"OK\r\n"
    assert h.admin_cmd(b"drop function zz").startswith(b"ERR")
    h.worker(b"busy")
    assert h.admin_cmd(b"drop function busy").startswith(b"ERR")


def test_admin_misc_commands(h):
    assert h.admin_cmd(b"getpid").startswith(b"OK ")
    assert h.admin_cmd(b"version").startswith(b"OK ")
    assert h.admin_cmd(b"verbose").startswith(b"OK ")
    assert h.admin_cmd(b"bogus") == b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"
    assert h.admin_cmd(b"maxqueue").startswith(b"ERR INVALID_ARGUMENTS")
    assert h.admin_cmd(b"maxqueue f x").startswith(b"ERR INVALID_ARGUMENTS")


def test_a_function_with_only_a_scheduled_job_is_not_forgotten(h):
    client, worker = h.peer(), h.peer()
    h.send(client, C.SUBMIT_JOB_EPOCH, b"f", b"", str(int(h.now + 60)).encode(), b"later")
    h.recv(client)
    h.send(worker, C.CAN_DO, b"f")
    h.send(worker, C.CANT_DO, b"f")  # the last worker leaves: the record must stay for the scheduled job
    assert b"f\t0\t0\t0" in h.admin_cmd(b"status")
    assert h.admin_cmd(b"drop function f").startswith(b"ERR")
    h.send(worker, C.CAN_DO, b"f")
    h.now += 61
    h.broker.run_timers()
    assert h.grab(worker).args[3] == b"later"


def test_a_function_registered_while_asleep_wakes_the_worker_later(h):
    client, worker = h.peer(), h.worker(b"g")
    h.send(worker, C.PRE_SLEEP)
    h.send(worker, C.CAN_DO, b"f")
    assert h.recv(worker) == []
    h.submit(client, b"f", ptype=C.SUBMIT_JOB_BG)
    assert h.one(worker).ptype == C.NOOP
