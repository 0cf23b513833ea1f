"""Retries, dead letters, kept results, schedules and require_worker against real geard processes, with the
durable queue (SQLite, killed with SIGKILL and restarted) and in memory."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import pytest

from geartrain.protocol import constants as C

from wire import Wire

POLICY = """
[functions."flaky"]
max_attempts = 3
backoff_initial = 0.3
backoff_factor = 2
retry_on = ["fail", "exception"]

[functions."doomed"]
max_attempts = 2
backoff_initial = 0.05
"""


class Geard:
    """Starts geard with the test's queue (memory, one SQLite file or a PostgreSQL database), kills and restarts
    it."""

    def __init__(self, server_factory, tmp_path, queue: str, dsn: str | None = None) -> None:
        self.factory = server_factory
        self.queue = queue
        self.dsn = dsn
        self.db = tmp_path / "q.db"
        self.policy = tmp_path / "policy.toml"
        self.policy.write_text(POLICY)
        self.server = None

    @property
    def durable(self) -> bool:
        return self.queue != "memory"

    def start(self, *extra: str):
        queue = {"memory": (), "sqlite": ("--queue-type", "sqlite", "--sqlite-db", str(self.db)),
                 "postgres": ("--queue-type", "postgres", "--postgres-dsn", str(self.dsn), "--cluster-node", "t")}
        queue = queue[self.queue]
        self.server = self.factory("geard", *queue, "--policy-file", str(self.policy), "--result-ttl", "600",
                                   *extra)
        return self.server

    def kill(self) -> None:
        self.server.process.kill()
        self.server.process.wait(timeout=30)

    def wire(self) -> Wire:
        return Wire(self.server.host, self.server.port, timeout=30)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def geard(request, server_factory, tmp_path) -> Geard:
    dsn = request.getfixturevalue("postgres_dsn") if request.param == "postgres" else None
    return Geard(server_factory, tmp_path, request.param, dsn)


def durable(wire: Wire) -> None:
    """Wait until every change the server made so far is on disk: the JOB_CREATED of a background job is only
    sent then (a job of function "sync" stays queued)."""
    wire.submit(b"sync", ptype=C.SUBMIT_JOB_BG)


def fields(wire: Wire, command: str) -> dict[bytes, bytes]:
    answer = wire.admin(command)
    assert answer.ok, answer
    return dict(line.split(b"\t", 1) for line in answer.lines)


def test_job_failing_twice_runs_three_times_with_growing_waits(geard):
    geard.start()
    with geard.wire() as client, geard.wire() as worker:
        handle = client.submit(b"flaky", b"data", b"u", ptype=C.SUBMIT_JOB_BG)
        worker.register(b"flaky")
        runs, ended = [], []
        for ending in (C.WORK_FAIL, C.WORK_EXCEPTION, C.WORK_COMPLETE):
            job = worker.grab()
            runs.append(time.monotonic())
            assert job.args == (handle, b"flaky", b"u", b"data")
            ended.append(time.monotonic())  # before the send: the server's wait starts after this, however late
            worker.send(ending, handle, *([] if ending == C.WORK_FAIL else [b"oops"]))  # this process runs again
        # Order and lower bounds only: the second run waited 0.3 s, the third 0.6 s.
        assert runs[1] - ended[0] >= 0.3 - 0.005
        assert runs[2] - ended[1] >= 0.6 - 0.005
        with geard.wire() as other:
            record = fields(other, f"show job {handle.decode()}")
            assert (record[b"state"], record[b"attempts"]) == (b"complete", b"3")


def test_always_failing_job_is_a_dead_letter_that_survives_restart_and_runs_again(geard):
    geard.start()
    with geard.wire() as client, geard.wire() as worker:
        handle = client.submit(b"doomed", b"payload", b"d1", ptype=C.SUBMIT_JOB_BG)
        worker.register(b"doomed")
        for _ in range(2):
            assert worker.grab().args[0] == handle
            worker.send(C.WORK_EXCEPTION, handle, b"cannot parse")
        deadline = time.monotonic() + 30
        while not client.admin("show failed doomed").lines:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        (line,) = client.admin("show failed").lines
        assert line.split(b"\t")[:4] == [handle, b"doomed", b"d1", b"2"]
        assert line.endswith(b"\tcannot parse")
        durable(client)
    if geard.durable:
        geard.kill()
        geard.start()
    with geard.wire() as admin:
        (line,) = admin.admin("show failed doomed").lines
        assert line.startswith(handle + b"\tdoomed\td1\t2\t")
        assert admin.admin(f"retry failed {handle.decode()}").lines == (b"OK 1",)
        assert admin.admin("show failed").lines == ()
    with geard.wire() as worker:
        worker.register(b"doomed")
        job = worker.grab()
        assert job.args[1:] == (b"doomed", b"d1", b"payload")
        worker.send(C.WORK_COMPLETE, job.args[0], b"")
        assert fields(worker, "show job unique doomed d1")[b"state"] == b"complete"


def test_a_retry_waiting_for_its_backoff_keeps_its_attempts_across_sigkill(server_factory, tmp_path):
    geard = Geard(server_factory, tmp_path, "sqlite")
    geard.policy.write_text('[functions."slow"]\nmax_attempts = 2\nbackoff_initial = 3600\nbackoff_max = 3600\n')
    geard.start()
    with geard.wire() as wire:
        handle = wire.submit(b"slow", b"x", b"s1", ptype=C.SUBMIT_JOB_BG)
        wire.register(b"slow")
        assert wire.grab().args[0] == handle
        wire.send(C.WORK_EXCEPTION, handle, b"first failure")
        # Same connection: the server has handled WORK_EXCEPTION before this command.
        assert fields(wire, f"show job {handle.decode()}")[b"state"] == b"scheduled"
        durable(wire)
    geard.kill()
    geard.start()
    with geard.wire() as wire:
        record = fields(wire, "show job unique slow s1")
        assert (record[b"state"], record[b"attempts"], record[b"exception"]) == \
               (b"scheduled", b"1", b"first failure")
        assert float(record[b"when"]) > time.time() + 3000


@pytest.mark.parametrize("ending", ["complete", "fail", "exception", "cancel"])
def test_kept_results_by_handle_and_unique_from_a_second_connection(geard, ending):
    geard.start()
    with geard.wire() as client, geard.wire() as worker, geard.wire() as other:
        handle = client.submit(b"plain", b"in", b"k-" + ending.encode(), ptype=C.SUBMIT_JOB_BG)
        assert fields(other, f"show job {handle.decode()}")[b"state"] == b"queued"
        if ending == "cancel":
            assert other.admin(f"cancel job {handle.decode()}").ok
            state = b"cancelled"
        else:
            worker.register(b"plain")
            assert worker.grab().args[0] == handle
            assert fields(other, f"show job unique plain k-{ending}")[b"state"] == b"running"
            packet = {"complete": (C.WORK_COMPLETE, handle, b"out"), "fail": (C.WORK_FAIL, handle),
                      "exception": (C.WORK_EXCEPTION, handle, b"bad")}[ending]
            worker.send(*packet)
            worker.send(C.ECHO_REQ, b"")
            worker.expect(C.ECHO_RES)
            state = {"complete": b"complete", "fail": b"failed", "exception": b"exception"}[ending]
        for command in (f"show job {handle.decode()}", f"show job unique plain k-{ending}"):
            record = fields(other, command)
            assert (record[b"handle"], record[b"state"]) == (handle, state)
        assert record.get(b"result") == (b"out" if ending == "complete" else None)
        other.send(C.GET_STATUS, handle)
        assert other.expect(C.STATUS_RES).args == (handle, b"0", b"0", b"0", b"0")
        assert other.admin("show job H:none:1").lines[0].startswith(b"ERR UNKNOWN_JOB")


def test_submit_job_sched_raw_packet_and_bad_field(geard):
    geard.start()
    if 60 - time.time() % 60 < 5:  # the job is due at the next whole minute: not while the test still looks at it
        time.sleep(60 - time.time() % 60 + 0.1)
    with geard.wire() as client:
        sent = time.time()
        client.send(C.SUBMIT_JOB_SCHED, b"later", b"sch", b"", b"", b"", b"", b"", b"d")
        handle = client.expect(C.JOB_CREATED).args[0]
        record = fields(client, f"show job {handle.decode()}")
        when = float(record[b"when"])
        assert record[b"state"] == b"scheduled" and when % 60 == 0 and sent < when <= time.time() + 60
        client.send(C.SUBMIT_JOB_SCHED, b"later", b"", b"", b"", b"", b"13", b"", b"d")
        error = client.expect(C.ERROR)
        assert error.args[0] == b"INVALID_ARGUMENT" and b"month" in error.args[1]
    if geard.durable:
        geard.kill()
        geard.start()
        with geard.wire() as client:
            assert float(fields(client, "show job unique later sch")[b"when"]) == when


def stored_schedules(db) -> dict[str, dict]:
    conn = sqlite3.connect(str(db))
    try:
        return {key: json.loads(value) for key, value in
                conn.execute("SELECT key, value FROM geartrain_state WHERE kind = 'schedule'")}
    finally:
        conn.close()


def backdate_schedules(db, seconds: float) -> None:
    """Make every stored schedule's next firing lie `seconds` in the past (as if the server had been down)."""
    conn = sqlite3.connect(str(db))
    try:
        for key, raw in conn.execute("SELECT key, value FROM geartrain_state WHERE kind = 'schedule'").fetchall():
            value = json.loads(raw)
            value["next"] = time.time() - seconds
            conn.execute("UPDATE geartrain_state SET value = ? WHERE kind = 'schedule' AND key = ?",
                         (json.dumps(value).encode(), key))
        conn.commit()
    finally:
        conn.close()


def test_repeating_schedules_survive_restart_and_a_missed_firing_runs_once(server_factory, tmp_path):
    geard = Geard(server_factory, tmp_path, "sqlite")
    geard.policy.write_text(POLICY + '[[schedules]]\nname = "nightly"\nfunction = "report"\ncron = "0 3 * * *"\n'
                            'data = "all"\n')
    geard.start()
    with geard.wire() as admin:
        assert admin.admin('schedule add hourly report "0 * * * *" hourly run').lines == (b"OK",)
        names = sorted(line.split(b"\t")[0] for line in admin.admin("schedule list").lines)
        assert names == [b"hourly", b"nightly"]
    geard.server.stop()  # a clean stop, so the file can be edited
    assert sorted(stored_schedules(geard.db)) == ["hourly", "nightly"]
    backdate_schedules(geard.db, 7200)  # two hours down: each schedule missed at least one firing
    geard.start()
    with geard.wire() as worker:
        lines = {line.split(b"\t")[0]: line.split(b"\t") for line in worker.admin("schedule list").lines}
        assert set(lines) == {b"hourly", b"nightly"}
        assert all(float(line[3]) > time.time() for line in lines.values())  # the next firing is ahead
        worker.register(b"report")
        got = sorted(worker.grab().args[3] for _ in range(2))
        assert got == [b"all", b"hourly run"]  # one run each, not one per missed hour
        worker.send(C.GRAB_JOB_UNIQ)
        assert worker.expect(C.NO_JOB)
        assert worker.admin("schedule cancel hourly").lines == (b"OK",)
        assert [line.split(b"\t")[0] for line in worker.admin("schedule list").lines] == [b"nightly"]


def test_schedules_in_memory_are_listed_and_cancelled(geard):
    geard.start()
    with geard.wire() as admin:
        assert admin.admin('schedule add tick f "*/5 * * * *"').lines == (b"OK",)
        (line,) = admin.admin("schedule list").lines
        name, function, cron, when, source, unique, data = line.split(b"\t")
        assert (name, function, cron, source) == (b"tick", b"f", b"*/5 * * * *", b"admin")
        assert float(when) % 300 == 0
        assert admin.admin('schedule add bad f "* * 0 * *"').lines[0].startswith(b"ERR INVALID_SCHEDULE day+of+month")
        assert admin.admin("schedule cancel tick").lines == (b"OK",)
        assert admin.admin("schedule list").lines == ()


def test_policy_file_is_reloaded_on_sighup_and_changed_by_admin(server_factory, tmp_path):
    geard = Geard(server_factory, tmp_path, "memory")
    geard.start()
    with geard.wire() as admin:
        assert [line.split(b"\t")[0] for line in admin.admin("policy list").lines] == [b"flaky", b"doomed"]
        assert admin.admin("policy set flaky max_attempts=9").lines == (b"OK",)
        assert b"max_attempts=9" in admin.admin("policy list").lines[0]
        geard.policy.write_text('[functions."other_*"]\nmax_attempts = 4\n')
        geard.server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while [line.split(b"\t")[0] for line in admin.admin("policy list").lines] != [b"other_*"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        geard.policy.write_text("[functions")  # a bad file keeps what is in effect
        geard.server.process.send_signal(signal.SIGHUP)
        admin.send(C.ECHO_REQ, b"")
        admin.expect(C.ECHO_RES)
        assert admin.admin("policy list").lines[0].startswith(b"other_*\tmax_attempts=4")


def test_bad_policy_file_stops_geard_with_the_reason(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "p.toml"
    bad.write_text('[functions."x"]\njitter = 5\n')
    done = subprocess.run([sys.executable, "-m", "geartrain.server.cli", "-d", "--queue-type", "memory",
                           "--policy-file", str(bad), "-p", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "jitter must be between 0 and 1" in done.stderr
