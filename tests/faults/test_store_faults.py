"""Faults of the durable queue against real geard processes and real files: failed writes and syncs (an LD_PRELOAD
shim), a full disk (a tmpfs volume), descriptor exhaustion (ulimit -n), a queue file deleted under the server.

The rule in every case: the peer that asked gets a clear ERROR, the connection and its other jobs go on, nothing
acknowledged is lost (a census after SIGKILL and restart finds every acknowledged job and no refused one), and the
server recovers without a restart.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from geartrain.protocol import constants as C
from geartrain.protocol.codec import Packet
from geartrain.server.store.sqlite import WAL_SIZE_LIMIT
from geartrain.server.transport import RESERVED_DESCRIPTORS

from conftest import free_port, stop_process, stopping_all, wait_for_port
from wire import Wire

HERE = Path(__file__).resolve().parent
DEADLINE = 60.0


class Geard:
    """One geard process on a SQLite queue, its log in a file the test can read."""

    def __init__(self, db: Path, log: Path, env: dict | None = None, nofile: int | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.db, self.log_path = db, log
        self.port = free_port()
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
        self.log_file = open(log, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "geartrain.server.cli", "-d", "--listen-address", "127.0.0.1", "-p", str(self.port),
             "--queue-type", "sqlite", "--sqlite-db", str(db), "--verbose", "INFO", *extra],
            stdout=subprocess.DEVNULL, stderr=self.log_file, env={**os.environ, **(env or {})}, preexec_fn=limit)
        try:
            wait_for_port("127.0.0.1", self.port, deadline=DEADLINE, process=self.process)
        except BaseException:
            self.stop()
            raise

    def wire(self, timeout: float = DEADLINE) -> Wire:
        return Wire("127.0.0.1", self.port, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, deadline: float = DEADLINE) -> str:
        end = time.monotonic() + deadline
        while text not in self.log():
            if time.monotonic() > end or self.process.poll() is not None:
                raise AssertionError(f"{text!r} not logged; the log:\n{self.log()[-3000:]}")
            time.sleep(0.02)
        return self.log()

    def kill9(self) -> None:
        stop_process(self.process, signal.SIGKILL)
        self.log_file.close()

    def stop(self) -> None:
        stop_process(self.process)
        self.log_file.close()


@pytest.fixture
def geards() -> Iterator:
    with stopping_all(Geard) as start:
        yield start


@pytest.fixture(scope="session")
def shim(tmp_path_factory) -> Path:
    """faultshim.c built for this run (gcc is part of the test requirements)."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the fault-injection shim: apt-get install gcc")
    out = tmp_path_factory.mktemp("shim") / "faultshim.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(out), str(HERE / "faultshim.c"), "-ldl"],
                   check=True, capture_output=True, timeout=120)
    return out


def shim_env(shim: Path, control: Path, db: Path) -> dict:
    """The environment that loads the shim for the queue's log (-wal): every commit writes and syncs it, and
    nothing else does but a checkpoint's sync (see the retry in the tests)."""
    return {"LD_PRELOAD": str(shim), "FAULT_CONTROL": str(control), "FAULT_MATCH": f"{db}-wal"}


@pytest.fixture
def tiny_volume(tmp_path) -> Iterator:
    """A function that mounts a tmpfs of the given size (removed at the end); skips where mounting is refused."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"volume{len(mounted)}"
        where.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=60)


def fill(volume: Path) -> Path:
    """Take every free byte of a volume with one file; returns it (delete it to make room again)."""
    filler = volume / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 512, 1):  # down to the last bytes of a partial block
            block = b"\0" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


def submit_pipelined(client: Wire, uniques: list[bytes], name: bytes = b"durable", data: bytes = b"x") -> dict:
    """Send every background submit at once; the answers in order: {unique: JOB_CREATED handle or ERROR args}."""
    client.send_raw(b"".join(client.conn.send_packet(C.SUBMIT_JOB_BG, name, u, data) for u in uniques))
    answers = {}
    for unique in uniques:
        event = client.next_event()
        assert isinstance(event, Packet) and event.ptype in (C.JOB_CREATED, C.ERROR), event
        answers[unique] = event.args[0] if event.ptype == C.JOB_CREATED else event.args
    return answers


def acknowledged(answers: dict) -> set[bytes]:
    return {u for u, a in answers.items() if isinstance(a, bytes)}


def refusals(answers: dict) -> list[tuple[bytes, ...]]:
    return [a for a in answers.values() if isinstance(a, tuple)]


def census(start, db: Path, log: Path) -> set[bytes]:
    """Restart geard on the file (after a SIGKILL) and list the uniques it replayed."""
    server = start(db, log)
    try:
        with server.wire() as admin:
            return set(admin.admin("show unique jobs").lines)
    finally:
        server.stop()


def foreground_round_trip(client: Wire, worker: Wire, name: bytes = b"fg") -> None:
    """A foreground job on this client's connection runs and completes: the connection is alive and served."""
    handle = client.submit(name, b"ping")
    job = worker.grab()
    assert job.args[0] == handle
    worker.send(C.WORK_COMPLETE, handle, b"pong")
    assert client.expect(C.WORK_COMPLETE).args == (handle, b"pong")


# ------------------------------------------------------------------------------------- failed writes and syncs


@pytest.mark.parametrize("fault, words", [
    ("5 write once", b"I/O error"),
    ("5 fsync once", b"I/O error"),
    ("28 write once", b"disk full"),
])
def test_one_failed_write_refuses_its_own_jobs_only_and_loses_no_acknowledged_one(geards, shim, tmp_path, fault,
                                                                                   words):
    db, control = tmp_path / "q.db", tmp_path / "fault"
    server = geards(db, tmp_path / "geard.log", env=shim_env(shim, control, db))
    answers: dict = {}
    with server.wire() as client, server.wire() as worker, server.wire() as other:
        worker.register(b"fg")
        fg = client.submit(b"fg", b"held across the fault")  # a foreground job in flight on the same connection
        answers.update(submit_pipelined(client, [b"a%d" % i for i in range(300)]))
        control.write_text(fault)
        for round_ in range(20):  # until the fault has fired (the shim removes its control file then)
            answers.update(submit_pipelined(client, [b"b%d-%d" % (round_, i) for i in range(100)]))
            answers.update(submit_pipelined(other, [b"o%d-%d" % (round_, i) for i in range(50)]))
            if not control.exists():
                if refusals(answers):
                    break
                control.write_text(fault)  # it hit a checkpoint's sync after a commit, which nobody waits for
        assert not control.exists() and refusals(answers), "the injected fault never failed a commit"
        answers.update(submit_pipelined(client, [b"c%d" % i for i in range(300)]))  # recovered: all stored
        refused = refusals(answers)
        assert refused and all(code == b"QUEUE_ERROR" and words in text for code, text in refused)
        assert all(isinstance(answers[b"c%d" % i], bytes) for i in range(300))
        # The connection, its foreground job and its acknowledged work go on.
        job = worker.grab()
        assert job.args[0] == fg
        worker.send(C.WORK_COMPLETE, fg, b"done")
        assert client.expect(C.WORK_COMPLETE).args == (fg, b"done")
        foreground_round_trip(client, worker)
    log = server.log()
    assert log.count("cannot write") == 1 and "writes again" in log
    server.kill9()
    stored = census(geards, db, tmp_path / "census.log")
    assert stored == acknowledged(answers)  # every acknowledged job, and no refused one


def test_a_batch_whose_sync_failed_is_not_found_after_a_crash_right_after_it(geards, shim, tmp_path):
    """A failed fsync leaves the batch's frames in the log; they must not come back at the next start."""
    db, control = tmp_path / "q.db", tmp_path / "fault"
    server = geards(db, tmp_path / "geard.log", env=shim_env(shim, control, db))
    with server.wire() as client:
        answers = submit_pipelined(client, [b"kept%d" % i for i in range(20)])
        control.write_text("5 fsync once")
        answers.update(submit_pipelined(client, [b"refused%d" % i for i in range(20)]))
        assert refusals(answers) and not control.exists()
    server.kill9()  # no later batch has written over the failed one
    assert census(geards, db, tmp_path / "census.log") == acknowledged(answers)


def test_four_pipelining_clients_and_one_injected_eio_lose_no_acknowledged_job(geards, shim, tmp_path):
    """The trial of the issue: four clients pipelining 3,000 background submits each, one EIO on a write."""
    db, control = tmp_path / "q.db", tmp_path / "fault"
    server = geards(db, tmp_path / "geard.log", env=shim_env(shim, control, db))
    results: list[dict] = [{} for _ in range(4)]
    errors: list[BaseException] = []
    started = threading.Barrier(5)

    def client(index: int) -> None:
        try:
            with server.wire() as wire:
                started.wait(DEADLINE)
                for window in range(6):
                    uniques = [b"c%d-%d-%d" % (index, window, i) for i in range(500)]
                    results[index].update(submit_pipelined(wire, uniques))
                wire.send(C.ECHO_REQ, b"alive")
                assert wire.expect(C.ECHO_RES).args == (b"alive",)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    started.wait(DEADLINE)
    control.write_text("5 write once")
    for thread in threads:
        thread.join(DEADLINE * 2)
    assert not errors, errors
    assert not control.exists(), "the injected fault never fired"
    answers = {u: a for result in results for u, a in result.items()}
    assert len(answers) == 12000
    refused = refusals(answers)
    assert refused and all(code == b"QUEUE_ERROR" and b"I/O error" in text for code, text in refused)
    server.kill9()
    assert census(geards, db, tmp_path / "census.log") == acknowledged(answers)


# ------------------------------------------------------------------------------------------------ full disk


def test_a_full_disk_refuses_background_submits_with_an_error_and_serves_again_when_there_is_room(
        geards, tiny_volume, tmp_path):
    volume = tiny_volume("8m")
    db = volume / "q.db"
    server = geards(db, tmp_path / "geard.log")
    answers: dict = {}
    with server.wire() as client, server.wire() as worker:
        worker.register(b"fg")
        answers.update(submit_pipelined(client, [b"before%d" % i for i in range(20)], data=b"d" * 2048))
        filler = fill(volume)
        fg = client.submit(b"fg", b"foreground")
        answers.update(submit_pipelined(client, [b"full%d" % i for i in range(50)], data=b"d" * 65536))
        refused = refusals(answers)
        assert refused and all(code == b"QUEUE_ERROR" and b"disk full" in text for code, text in refused)
        client.send(C.ECHO_REQ, b"still here")
        assert client.expect(C.ECHO_RES).args == (b"still here",)
        job = worker.grab()
        worker.send(C.WORK_COMPLETE, job.args[0], b"ok")
        assert client.expect(C.WORK_COMPLETE).args == (fg, b"ok")
        filler.unlink()
        answers.update(submit_pipelined(client, [b"after%d" % i for i in range(20)], data=b"d" * 2048))
        assert all(isinstance(answers[b"after%d" % i], bytes) for i in range(20))
    log = server.log()
    assert log.count("cannot write: disk full") == 1 and "writes again" in log and log.count("tidying") <= 1
    server.kill9()
    assert census(geards, db, tmp_path / "census.log") == acknowledged(answers)


def test_geard_starts_replays_and_serves_on_a_full_disk(geards, tiny_volume, tmp_path):
    volume = tiny_volume("4m")
    db = volume / "q.db"
    server = geards(db, tmp_path / "first.log")
    with server.wire() as client:
        stored = acknowledged(submit_pipelined(client, [b"kept%d" % i for i in range(30)], data=b"k" * 1024))
    server.stop()
    fill(volume)
    server = geards(db, tmp_path / "second.log")
    log = server.wait_log("replayed 30 jobs")
    assert "free" in log and "refused with ERROR QUEUE_ERROR (disk full)" in log  # the clear line at start
    with server.wire() as client, server.wire() as worker:
        assert set(client.admin("show unique jobs").lines) == stored
        worker.register(b"fg")
        foreground_round_trip(client, worker)
        answers = submit_pipelined(client, [b"no-room"], data=b"n" * 65536)
        ((code, text),) = refusals(answers)
        assert code == b"QUEUE_ERROR" and b"disk full" in text
        foreground_round_trip(client, worker)
    assert server.log().count("cannot write") == 1 and server.log().count("tidying") <= 1
    server.kill9()
    (volume / "filler").unlink()
    assert census(geards, db, tmp_path / "census.log") == stored


def test_the_log_stays_small_under_steady_churn_and_is_truncated_when_idle(geards, tiny_volume, tmp_path):
    volume = tiny_volume("16m")
    db = volume / "q.db"
    wal = volume / "q.db-wal"
    server = geards(db, tmp_path / "geard.log")
    largest = 0
    with server.wire() as client, server.wire() as worker:
        worker.register(b"churn")
        for i in range(1500):  # never more than one job queued
            answers = submit_pipelined(client, [b"j%d" % i], name=b"churn", data=b"c" * 2048)
            assert not refusals(answers), answers
            job = worker.grab()
            worker.send(C.WORK_COMPLETE, job.args[0], b"")
            if i % 50 == 0:
                largest = max(largest, wal.stat().st_size)
        largest = max(largest, wal.stat().st_size)
        assert largest <= WAL_SIZE_LIMIT + (1 << 20), f"the log grew to {largest} bytes under churn"
        end = time.monotonic() + DEADLINE
        while wal.exists() and wal.stat().st_size > 0:  # idle: truncated
            assert time.monotonic() < end, f"the log still holds {wal.stat().st_size} bytes when idle"
            time.sleep(0.05)
    assert db.stat().st_size <= 64 * 1024
    assert "cannot write" not in server.log()


# --------------------------------------------------------------------------------------- a vanished queue file


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_queue_file_deleted_or_replaced_under_the_server_is_recreated_with_every_held_job(geards, tmp_path, how):
    db = tmp_path / "q.db"
    server = geards(db, tmp_path / "geard.log")
    with server.wire() as client, server.wire() as worker:
        worker.register(b"fg")
        answers = submit_pipelined(client, [b"before%d" % i for i in range(100)])
        for path in (db, tmp_path / "q.db-wal"):
            path.unlink(missing_ok=True)
        if how == "replaced":
            conn = sqlite3.connect(str(db))
            conn.execute("CREATE TABLE mine (x)")
            conn.commit()
            conn.close()
        server.wait_log(f"was {'deleted' if how == 'deleted' else 'replaced by another file'} under the running")
        server.wait_log("recreated the store")
        answers.update(submit_pipelined(client, [b"after%d" % i for i in range(100)]))
        refused = refusals(answers)
        assert all(code == b"QUEUE_ERROR" and b"under the running server" in text for code, text in refused)
        foreground_round_trip(client, worker)
    if how == "replaced":
        (aside,) = tmp_path.glob("q.db.replaced-*")
        assert sqlite3.connect(str(aside)).execute("SELECT name FROM sqlite_master").fetchall() == [("mine",)]
    server.kill9()
    assert census(geards, db, tmp_path / "census.log") == acknowledged(answers)


# ---------------------------------------------------------------------------------------- descriptor exhaustion


def test_a_flood_of_connections_at_the_descriptor_limit_cannot_make_commits_fail(geards, tmp_path):
    db = tmp_path / "q.db"
    geards(db, tmp_path / "first.log").stop()  # a queue file closed cleanly: its log (-wal) is gone
    assert db.exists() and not (tmp_path / "q.db-wal").exists()
    server = geards(db, tmp_path / "geard.log", nofile=96)
    flood: list = []
    try:
        with server.wire() as client:
            for _ in range(200):  # far past the limit: the server refuses what would eat the store's reserve
                flood.append(server.wire(timeout=5))
            client.send(C.ECHO_REQ, b"flooded")  # the flood has been taken in: answers come in order
            assert client.expect(C.ECHO_RES).args == (b"flooded",)
            in_use = len(os.listdir(f"/proc/{server.process.pid}/fd"))
            # (a few connections just accepted may be on their way out: half the reserve is the bound)
            assert in_use <= 96 - RESERVED_DESCRIPTORS // 2, f"{in_use} descriptors open: the reserve was taken"
            # The first commit opens the log: a new descriptor, which the reserve keeps for it.
            answers = submit_pipelined(client, [b"a%d" % i for i in range(50)])
            assert not refusals(answers), refusals(answers)[:3]
        log = server.log()
        assert "kept for the store" in log and "cannot write" not in log
    finally:
        for wire in flood:
            wire.close()
    server.kill9()
    assert census(geards, db, tmp_path / "census.log") == acknowledged(answers)
