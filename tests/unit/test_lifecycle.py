"""Retries, dead letters, kept results, schedules and require_worker in the broker, driven by its clock."""

from __future__ import annotations

import pytest

from geartrain.protocol import Packet
from geartrain.protocol import constants as C
from geartrain.server.broker import Peer
from geartrain.server.lifecycle import Lifecycle
from geartrain.server.lifecycle_admin import LifecycleCommands
from geartrain.server.policy import RetryPolicy

from broker_harness import Harness as BrokerHarness

START = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a whole minute


class Harness(BrokerHarness):
    """The broker harness with a Lifecycle and its admin commands; submits default to background jobs."""

    def __init__(self, **options) -> None:
        super().__init__(now=START, job_retries=options.pop("job_retries", 0))
        self.lifecycle = Lifecycle(self.broker, rand=lambda: 0.0, **options)
        self.lifecycle.start()
        LifecycleCommands(self.lifecycle).install(self.admin)

    def cmd(self, line: str) -> str:
        return self.admin.handle(self.peer(), line.encode()).decode()

    def fields(self, line: str) -> dict[str, str]:
        answer = self.cmd(line)
        assert answer.endswith(".\n"), answer
        return dict(row.split("\t", 1) for row in answer.splitlines()[:-1])

    def submit(self, client: Peer, name: bytes, data: bytes = b"d", unique: bytes = b"",
               ptype: int = C.SUBMIT_JOB_BG) -> bytes:
        return super().submit(client, name, data, unique, ptype)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.broker.run_timers()


@pytest.fixture
def h() -> Harness:
    return Harness(result_ttl=60.0, result_max_bytes=16)


def retrying(h: Harness, pattern: str = "img", **settings) -> None:
    h.lifecycle.policies.policies[pattern] = RetryPolicy(**settings)


# ---------------------------------------------------------------------------------------------- retries

def test_failed_background_job_runs_again_after_its_backoff(h):
    retrying(h, max_attempts=3, backoff_initial=10, backoff_factor=3)
    client, worker = h.peer(), h.worker(b"img")
    handle = h.submit(client, b"img", b"x", b"u")
    assert h.grab(worker).args[0] == handle
    h.send(worker, C.WORK_FAIL, handle)
    assert h.grab(worker).ptype == C.NO_JOB  # waits for its backoff
    assert h.fields(f"show job {handle.decode()}")["state"] == "scheduled"
    h.advance(9.9)
    assert h.grab(worker).ptype == C.NO_JOB
    h.advance(0.1)
    assert h.grab(worker).args[0] == handle  # same handle, same unique
    h.send(worker, C.WORK_EXCEPTION, handle, b"boom")
    h.send(worker, C.WORK_FAIL, handle)  # the usual WORK_EXCEPTION + WORK_FAIL pair: no error
    assert h.recv(worker) == []
    h.advance(29.9)
    assert h.grab(worker).ptype == C.NO_JOB
    h.advance(0.1)
    assert h.grab(worker).args[0] == handle
    h.send(worker, C.WORK_COMPLETE, handle, b"done")
    result = h.fields(f"show job {handle.decode()}")
    assert (result["state"], result["attempts"], result["result"]) == ("complete", "3", "done")
    assert h.cmd("show failed") == ".\n"
    assert (h.lifecycle.retried, h.lifecycle.dead_lettered) == (2, 0)


def test_job_that_always_fails_becomes_a_dead_letter_and_can_be_requeued(h):
    retrying(h, max_attempts=2, backoff_initial=1)
    client, worker = h.peer(), h.worker(b"img")
    handle = h.submit(client, b"img", b"payload", b"u1")
    for _ in range(2):
        h.advance(1)
        assert h.grab(worker).args[0] == handle
        h.send(worker, C.WORK_EXCEPTION, handle, b"disk full")
    assert h.grab(worker).ptype == C.NO_JOB
    [line] = h.cmd("show failed img").splitlines()[:-1]
    fields = line.split("\t")
    assert fields[:4] == [handle.decode(), "img", "u1", "2"]
    assert fields[6:] == ["7", "disk full"]
    assert float(fields[4]) < float(fields[5])
    assert h.cmd("show failed other") == ".\n"
    assert (h.lifecycle.retried, h.lifecycle.dead_lettered) == (1, 1)
    assert h.fields(f"show job {handle.decode()}")["state"] == "exception"
    assert h.cmd(f"retry failed {handle.decode()}") == "OK 1\r\n"
    assert h.cmd("show failed") == ".\n"
    again = h.grab(worker)
    assert again.args[2:] == (b"u1", b"payload")
    h.send(worker, C.WORK_COMPLETE, again.args[0], b"")


def test_retry_and_purge_all_per_function_and_errors(h):
    retrying(h, "*", max_attempts=1)
    client, worker = h.peer(), h.worker(b"a", b"b")
    for name in (b"a", b"a", b"b"):
        h.submit(client, name)
        job = h.grab(worker)
        h.send(worker, C.WORK_FAIL, job.args[0])
    assert len(h.cmd("show failed").splitlines()) == 4
    assert len(h.cmd("show failed limit=1").splitlines()) == 2
    assert len(h.cmd("show failed offset=2").splitlines()) == 2
    assert h.cmd("show failed limit=x").startswith("ERR INVALID_ARGUMENTS")
    assert h.cmd("purge failed all a") == "OK 2\r\n"
    assert h.cmd("retry failed H:nope").startswith("ERR UNKNOWN_JOB")
    assert h.cmd("retry failed").startswith("ERR INVALID_ARGUMENTS")
    assert h.cmd("retry failed all") == "OK 1\r\n"
    assert h.grab(worker).args[1] == b"b"


def test_lost_worker_and_timeout_count_when_the_policy_says_so(h):
    retrying(h, max_attempts=3, backoff_initial=5, retry_on=("worker_lost", "timeout"))
    client = h.peer()
    handle = h.submit(client, b"img")
    first = h.worker(b"img")
    h.grab(first)
    h.broker.disconnect(first)
    worker = h.peer()
    h.send(worker, C.CAN_DO_TIMEOUT, b"img", b"1000")
    assert h.grab(worker).ptype == C.NO_JOB
    h.advance(5)
    assert h.grab(worker).args[0] == handle
    h.advance(1)  # CAN_DO_TIMEOUT passes: second counted failure, then it waits 10 s
    assert h.grab(worker).ptype == C.NO_JOB
    h.advance(10)
    assert h.grab(worker).args[0] == handle
    h.send(worker, C.WORK_FAIL, handle)  # not counted: ends as usual
    assert h.fields(f"show job {handle.decode()}")["state"] == "failed"
    assert h.cmd("show failed") == ".\n"


def test_job_retries_stays_the_limit_on_lost_workers():
    h = Harness(job_retries=1, result_ttl=60)
    retrying(h, max_attempts=5, retry_on=("fail",))
    client = h.peer()
    handle = h.submit(client, b"img")
    for _ in range(2):
        worker = h.worker(b"img")
        assert h.grab(worker).args[0] == handle
        h.broker.disconnect(worker)
    assert handle not in h.broker.jobs
    assert h.fields(f"show job {handle.decode()}")["state"] == "failed"
    assert h.cmd("show failed").splitlines()[0].startswith(handle.decode())  # it had a policy


def test_foreground_jobs_are_never_retried(h):
    retrying(h, max_attempts=3)
    client, worker = h.peer(), h.worker(b"img")
    handle = h.submit(client, b"img", ptype=C.SUBMIT_JOB)
    h.grab(worker)
    h.send(worker, C.WORK_FAIL, handle)
    assert h.one(client).ptype == C.WORK_FAIL
    assert handle not in h.broker.jobs and h.cmd("show failed") == ".\n"


def test_dead_letters_are_bounded_oldest_first():
    h = Harness(dead_letter_max=2, dead_letter_max_age=100)
    retrying(h, "*", max_attempts=1)
    client, worker = h.peer(), h.worker(b"f")
    handles = []
    for _ in range(3):
        handles.append(h.submit(client, b"f"))
        h.send(worker, C.WORK_FAIL, h.grab(worker).args[0])
        h.advance(1)
    assert [line.split("\t")[0] for line in h.cmd("show failed").splitlines()[:-1]] == \
           [x.decode() for x in handles[1:]]
    assert h.lifecycle.dead.dropped == 1
    h.advance(98)  # the second letter is now 100 s old
    assert [line.split("\t")[0] for line in h.cmd("show failed").splitlines()[:-1]] == [handles[2].decode()]
    assert h.fields("settings")["dead_letters_dropped"] == "2"


def test_policy_admin_commands(h):
    assert h.cmd("policy list") == ".\n"
    assert h.cmd("policy set img_* max_attempts=4 backoff_initial=0.5 retry_on=fail") == "OK\r\n"
    assert h.cmd("policy list") == ("img_*\tmax_attempts=4\tbackoff_initial=0.5\tbackoff_factor=2\t"
                                    "backoff_max=300\tjitter=0\tretry_on=fail\n.\n")
    assert h.cmd("policy set img_* jitter=3").startswith("ERR INVALID_ARGUMENTS policy+'img_*':+jitter")
    assert h.cmd("policy set img_* color=red").startswith("ERR INVALID_ARGUMENTS")
    assert h.cmd("policy set img_*").startswith("ERR INVALID_ARGUMENTS")
    assert h.lifecycle.policies.for_function(b"img_1").max_attempts == 4


# ---------------------------------------------------------------------------------------------- kept results

@pytest.mark.parametrize(("ending", "state"), [
    ((C.WORK_COMPLETE, b"result"), "complete"),
    ((C.WORK_FAIL,), "failed"),
    ((C.WORK_EXCEPTION, b"bad input"), "exception"),
])
@pytest.mark.parametrize("ptype", [C.SUBMIT_JOB_BG, C.SUBMIT_JOB])
def test_finished_jobs_are_kept_by_handle_and_unique(h, ending, state, ptype):
    client, worker = h.peer(), h.worker(b"f")
    handle = h.submit(client, b"f", b"in", b"key", ptype=ptype)
    queued = h.fields("show job unique f key")
    assert (queued["handle"], queued["state"], queued["attempts"], queued["priority"]) == \
           (handle.decode(), "queued", "0", "normal")
    h.grab(worker)
    assert h.fields(f"show job {handle.decode()}")["state"] == "running"
    h.send(worker, ending[0], handle, *ending[1:])
    for line in (f"show job {handle.decode()}", "show job unique f key"):
        record = h.fields(line)
        assert (record["state"], record["attempts"], record["unique"]) == (state, "1", "key")
        assert float(record["finished"]) == START
        assert record.get("result") == ("result" if state == "complete" and ptype == C.SUBMIT_JOB_BG else None)
        assert record["exception"] == ("bad input" if state == "exception" else "")
    client2 = h.peer()
    h.send(client2, C.GET_STATUS, handle)
    assert h.one(client2).args == (handle, b"0", b"0", b"0", b"0")  # gearmand's answer for a finished job


def test_cancelled_job_is_kept(h):
    handle = h.submit(h.peer(), b"f", unique=b"c")
    assert h.cmd(f"cancel job {handle.decode()}") == "OK\r\n"
    assert h.fields("show job unique f c")["state"] == "cancelled"


def test_large_results_are_not_kept_but_their_size_is(h):
    client, worker = h.peer(), h.worker(b"f")
    handle = h.submit(client, b"f")
    h.grab(worker)
    h.send(worker, C.WORK_COMPLETE, handle, b"x" * 17)
    record = h.fields(f"show job {handle.decode()}")
    assert "result" not in record and record["result_bytes"] == "17"


def test_kept_results_expire_after_the_ttl(h):
    client, worker = h.peer(), h.worker(b"f")
    handle = h.submit(client, b"f", unique=b"k")
    h.grab(worker)
    h.send(worker, C.WORK_COMPLETE, handle, b"")
    h.now += 59.9
    assert h.fields(f"show job {handle.decode()}")["state"] == "complete"
    h.now += 0.1
    assert h.cmd(f"show job {handle.decode()}").startswith("ERR UNKNOWN_JOB")
    assert h.cmd("show job unique f k").startswith("ERR UNKNOWN_JOB")
    assert not h.lifecycle.results.by_handle and not h.lifecycle.results.by_unique


def test_without_ttl_nothing_is_kept():
    h = Harness()
    client, worker = h.peer(), h.worker(b"f")
    handle = h.submit(client, b"f")
    h.grab(worker)
    h.send(worker, C.WORK_COMPLETE, handle, b"")
    assert h.cmd(f"show job {handle.decode()}").startswith("ERR UNKNOWN_JOB")
    assert h.cmd("show job").startswith("ERR INVALID_ARGUMENTS")


def test_without_ttl_a_retried_job_that_completes_leaves_no_attempts_behind():
    # Without kept results the broker calls ended() only once the lifecycle counts attempts (lifecycle_ends).
    h = Harness()
    assert not h.broker.lifecycle_ends
    retrying(h, max_attempts=3, backoff_initial=10)
    client, worker = h.peer(), h.worker(b"img")
    handle = h.submit(client, b"img")
    h.grab(worker)
    h.send(worker, C.WORK_FAIL, handle)
    assert list(h.lifecycle.attempts) == [handle] and h.broker.lifecycle_ends
    h.advance(10)
    assert h.grab(worker).args[0] == handle
    h.send(worker, C.WORK_COMPLETE, handle, b"done")
    assert h.lifecycle.attempts == {}


# ---------------------------------------------------------------------------------------------- schedules

def test_submit_job_sched_runs_at_the_next_matching_minute(h):
    client, worker = h.peer(), h.worker(b"f")
    h.now = START + 30  # half past the minute
    h.send(client, C.SUBMIT_JOB_SCHED, b"f", b"u", b"", b"", b"", b"", b"", b"data")  # every field empty: any
    handle = h.one(client).args[0]
    assert float(h.fields(f"show job {handle.decode()}")["when"]) == START + 60
    assert h.grab(worker).ptype == C.NO_JOB
    h.advance(29.9)
    assert h.grab(worker).ptype == C.NO_JOB
    h.advance(0.1)
    assert h.grab(worker).args == (handle, b"f", b"u", b"data")


def test_submit_job_sched_with_fields(h):
    client = h.peer()
    # START is 08:00 on Friday 2027-01-15: "30 9 * * fri" is 09:30 the same day.
    h.send(client, C.SUBMIT_JOB_SCHED, b"f", b"", b"30", b"9", b"*", b"1", b"fri", b"")
    handle = h.one(client).args[0]
    assert float(h.fields(f"show job {handle.decode()}")["when"]) == START + 90 * 60


@pytest.mark.parametrize(("fields", "name"), [
    ((b"60", b"", b"", b"", b""), b"minute"),
    ((b"", b"x", b"", b"", b""), b"hour"),
    ((b"", b"", b"32", b"", b""), b"day of month"),
    ((b"", b"", b"", b"0", b""), b"month"),
    ((b"", b"", b"", b"", b"9"), b"day of week"),
])
def test_submit_job_sched_bad_field_gets_an_error_naming_it(h, fields, name):
    client = h.peer()
    h.send(client, C.SUBMIT_JOB_SCHED, b"f", b"", *fields, b"")
    packet = h.one(client)
    assert packet.ptype == C.ERROR and packet.args[0] == b"INVALID_ARGUMENT" and name in packet.args[1]
    assert not h.broker.jobs


def test_repeating_schedule_by_admin_command(h):
    assert h.cmd('schedule add tick f "*/5 * * * *" hello world') == "OK\r\n"
    [line] = h.cmd("schedule list").splitlines()[:-1]
    assert line.split("\t") == ["tick", "f", "*/5 * * * *", "%.3f" % (START + 300), "admin", "", "hello world"]
    worker = h.worker(b"f")
    h.advance(299)
    assert h.grab(worker).ptype == C.NO_JOB
    for _ in range(2):
        h.advance(1)
        job = h.grab(worker)
        assert job.args[1:] == (b"f", b"", b"hello world")
        h.send(worker, C.WORK_COMPLETE, job.args[0], b"")
        h.advance(299)
        assert h.grab(worker).ptype == C.NO_JOB
    assert h.cmd("schedule cancel tick") == "OK\r\n"
    h.advance(3600)
    assert h.grab(worker).ptype == C.NO_JOB
    assert h.cmd("schedule list") == ".\n"


@pytest.mark.parametrize(("line", "answer"), [
    ('schedule add t f "* 24 * * *"', "ERR INVALID_SCHEDULE hour:"),
    ('schedule add t f "* * * *"', "ERR INVALID_SCHEDULE schedule:"),
    ("schedule add t f * * * * *", "ERR INVALID_ARGUMENTS"),
    ('schedule add t f "* * * * *', "ERR INVALID_ARGUMENTS"),
    ("schedule cancel nothing", "ERR UNKNOWN_SCHEDULE"),
    ("schedule", "ERR INVALID_ARGUMENTS"),
])
def test_schedule_command_errors(h, line, answer):
    assert h.cmd(line).replace("+", " ").startswith(answer)


# ---------------------------------------------------------------------------------------------- require_worker

def test_require_worker_option_refuses_submits_nobody_can_run(h):
    strict, lax = h.peer(), h.peer()
    h.send(strict, C.OPTION_REQ, b"require_worker")
    assert h.one(strict) == Packet(C.RES, C.OPTION_RES, (b"require_worker",))
    h.send(strict, C.SUBMIT_JOB, b"f", b"", b"x")
    error = h.one(strict)
    assert error.ptype == C.ERROR and error.args[0] == b"NO_WORKER" and b"'f'" in error.args[1]
    h.submit(lax, b"f")  # other connections are not affected
    worker = h.worker(b"f")
    h.submit(strict, b"f")
    h.send(worker, C.RESET_ABILITIES)
    h.send(strict, C.SUBMIT_JOB_BG, b"f", b"", b"x")
    assert h.one(strict).args[0] == b"NO_WORKER"


def test_settings_lists_limits_maxqueue_and_policies(h):
    h.cmd("maxqueue f 1 2 3")
    h.cmd("policy set g* max_attempts=2")
    answer = h.cmd("settings")
    lines = answer.splitlines()
    assert lines[-1] == "."
    assert "maxqueue\tf\t1\t2\t3" in lines
    assert "job_retries\t0" in lines and "result_ttl\t60" in lines and "result_max_bytes\t16" in lines
    assert any(line.startswith("policy\tg*\tmax_attempts=2\t") for line in lines)
    assert h.cmd("settings now").startswith("ERR INVALID_ARGUMENTS")


def test_kept_results_and_dead_letters_are_bounded_by_count_and_bytes():
    h = Harness(result_ttl=600, result_max_jobs=2, dead_letter_max_bytes=10)
    retrying(h, "doomed", max_attempts=1)
    client, worker = h.peer(), h.worker(b"f", b"doomed")
    handles = []
    for _ in range(3):
        handles.append(h.submit(client, b"f"))
        h.send(worker, C.WORK_COMPLETE, h.grab(worker).args[0], b"")
    assert h.cmd(f"show job {handles[0].decode()}").startswith("ERR UNKNOWN_JOB")  # the oldest went
    assert all(h.fields(f"show job {x.decode()}")["state"] == "complete" for x in handles[1:])
    for data in (b"123456", b"abcdef"):
        h.submit(client, b"doomed", data)
        h.send(worker, C.WORK_FAIL, h.grab(worker).args[0])
    [line] = h.cmd("show failed").splitlines()[:-1]  # 12 payload bytes > 10: the first letter went
    assert line.split("\t")[6] == "6" and h.lifecycle.dead.bytes == 6 and h.lifecycle.dead.dropped == 1


def test_with_an_acl_changes_need_invoke_or_grant(h):
    from geartrain.server.acl import ACL, ACLEntry

    retrying(h, "*", max_attempts=1)
    client, worker = h.peer(), h.worker(b"secret")
    handle = h.submit(client, b"secret")
    h.send(worker, C.WORK_FAIL, h.grab(worker).args[0])
    acl = ACL()
    acl.add(ACLEntry("ops", invoke="secret", grant=True))
    acl.add(ACLEntry("viewer", invoke="public"))
    h.broker.acl = acl
    viewer, ops = h.peer(), h.peer()
    viewer.subject, ops.subject = "viewer", "ops"

    def cmd(peer: Peer, line: str) -> str:
        return h.admin.handle(peer, line.encode()).decode()

    assert cmd(viewer, "show failed").startswith(handle.decode())  # reading is open, as `status` is
    for line in (f"retry failed {handle.decode()}", "purge failed all", 'schedule add t secret "* * * * *"',
                 "policy set x max_attempts=2"):
        assert cmd(viewer, line).startswith("ERR PERMISSION_DENIED"), line
    assert cmd(ops, 'schedule add t secret "* * * * *"') == "OK\r\n"
    assert cmd(viewer, "schedule cancel t").startswith("ERR PERMISSION_DENIED")
    assert cmd(ops, "policy set x max_attempts=2") == "OK\r\n"
    assert cmd(ops, f"retry failed {handle.decode()}") == "OK 1\r\n"
