"""PostgreSQL stopped under load and started again: refusals (never a false JOB_CREATED), foreground jobs keep
flowing, the node says why and reconnects, and every acknowledged job is still there afterwards."""

from __future__ import annotations

import threading
import time

import pytest

from geartrain.protocol import constants as C

from cluster_nodes import DEADLINE, node, rows, wait_for
from conftest import start_geartrain
from pgserver import missing, running
from wire import Wire


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of this test alone: it is stopped and started again in the middle."""
    why = missing()
    if why is not None:
        pytest.skip(why)
    with running() as server:
        yield server


class Submitter(threading.Thread):
    """Submits background jobs in chunks of 20 without pause, reconnecting when the server cuts it off."""

    def __init__(self, server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.acked: list[bytes] = []
        self.refused: list[bytes] = []  # answered ERROR
        self.cut_off = 0  # connections closed with submits unanswered
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            while not self.done.is_set():
                try:
                    with Wire(self.server.host, self.server.port, timeout=30) as wire:
                        while not self.done.is_set():
                            chunk = [b"bg-%d" % i for i in range(n, n + 20)]
                            n += 20
                            wire.send_raw(b"".join(wire.conn.send_packet(C.SUBMIT_JOB_BG, b"work", u, u)
                                                   for u in chunk))
                            for unique in chunk:
                                event = wire.next_event()
                                if event.ptype == C.JOB_CREATED:
                                    self.acked.append(unique)
                                else:
                                    assert event.ptype == C.ERROR, event
                                    self.refused.append(unique)
                except ConnectionError:
                    self.cut_off += 1
                    time.sleep(0.05)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.done.set()
        self.join(60)
        assert self.error is None, self.error


def run_foreground(server, count: int) -> None:
    """count foreground jobs submitted and completed through the node (no database involved)."""
    with Wire(server.host, server.port) as client, Wire(server.host, server.port) as worker:
        worker.register(b"fg")
        for i in range(count):
            client.send(C.SUBMIT_JOB, b"fg", b"", b"%d" % i)
            handle = client.expect(C.JOB_CREATED).args[0]
            assigned = worker.grab()
            worker.send(C.WORK_COMPLETE, assigned.args[0], b"ok-%d" % i)
            assert client.expect(C.WORK_COMPLETE).args == (handle, b"ok-%d" % i)


def test_database_outage_under_load_loses_no_acknowledged_job(server_factory, own_postgres, capsys):
    pg = own_postgres
    dsn = pg.new_database()
    a = node(server_factory, dsn, "a", "--verbose", "INFO")
    # A second node, in this process, to read its store's readiness; it never takes node a's jobs over.
    probe = start_geartrain(queue_type="postgres", postgres_dsn=dsn, cluster_node="probe", lease_interval=0.2,
                            takeover_after=600)
    submitter = Submitter(a)
    try:
        submitter.start()
        wait_for(lambda: len(submitter.acked) >= 500, what="500 acknowledged submits")
        pg.stop("fast")
        wait_for(lambda: submitter.refused or submitter.cut_off, what="a refused background submit")
        down_acked = len(submitter.acked)
        run_foreground(a, 50)  # the database is down: foreground jobs do not care
        store = probe.server.store
        wait_for(lambda: not store.ready, what="the store reporting the outage")
        assert "database unreachable" in store.reason
        time.sleep(1.0)  # a while down, with submits refused all along
        pg.start()
        wait_for(lambda: len(submitter.acked) > down_acked + 500, what="submits acknowledged again")
        wait_for(lambda: store.ready, what="the store reconnecting")
    finally:
        submitter.stop()
        probe.stop()
    # Only what is in the database counts: the node is killed and a fresh one replays its rows.
    port = a.port
    a.process.kill()
    _, err = a.process.communicate(timeout=30)
    assert b"database unreachable" in err and b"reconnected to" in err
    again = node(server_factory, dsn, "a", port=port)
    delivered = []
    with Wire(again.host, again.port, timeout=DEADLINE) as worker:
        worker.register(b"work")
        while True:
            worker.send(C.GRAB_JOB_UNIQ)
            event = worker.next_event()
            if event.ptype == C.NO_JOB:
                break
            delivered.append(event.args[2])
            worker.send(C.WORK_COMPLETE, event.args[0], b"")
    assert len(delivered) == len(set(delivered))
    missing_jobs = set(submitter.acked) - set(delivered)
    assert not missing_jobs, f"{len(missing_jobs)} acknowledged jobs were lost"
    assert not set(submitter.refused) & set(submitter.acked)
    assert submitter.refused, "no submit was refused while the database was down"
    assert submitter.cut_off == 0, "a refused submit must be answered with ERROR, not a closed connection"
    wait_for(lambda: rows(dsn) == [(0,)], what="every row removed")
    with capsys.disabled():
        print(f"\n[outage] acknowledged {len(submitter.acked)}, refused with ERROR {len(submitter.refused)}, "
              f"connections cut off {submitter.cut_off}; delivered after a restart {len(delivered)}")
