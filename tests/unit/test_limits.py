"""Bounded memory without sockets: maxqueue and --max-queued-jobs answered as gearmand answers a full queue, and
the runs a spilled backlog is kept in."""

from __future__ import annotations

from geartrain.protocol import Decoder
from geartrain.protocol import constants as C
from geartrain.server.admin import Admin
from geartrain.server.broker import Broker
from geartrain.server.spill import STAMP_SPAN, SpillQueue


def answers(broker: Broker, peer) -> list:
    events = Decoder(accept=C.RES).feed(peer.take_output())
    broker.dirty.clear()
    return events


def test_maxqueue_refusal_is_gearmands_queue_full_error():
    broker = Broker(b"H:t")
    admin = Admin(broker)
    client = broker.connect(1)
    assert admin.handle(client, b"maxqueue f 1 2 1") == b"OK\r\n"
    for ptype in (C.SUBMIT_JOB_HIGH_BG, C.SUBMIT_JOB_HIGH_BG, C.SUBMIT_JOB, C.SUBMIT_JOB, C.SUBMIT_JOB):
        broker.handle(client, ptype, (b"f", b"", b"x"))
    got = [(e.ptype, e.args) for e in answers(broker, client)]
    full = (C.ERROR, (b"QUEUE_ERROR", b"Job queue is full"))
    assert [p for p, _ in got] == [C.JOB_CREATED, C.ERROR, C.JOB_CREATED, C.JOB_CREATED, C.ERROR]
    assert got[1] == got[4] == full
    assert broker.stats.rejected["queue_full"] == 2


def test_a_coalescing_submit_is_not_refused_by_a_full_queue():
    broker = Broker(b"H:t", max_queued_jobs=1)
    client = broker.connect(1)
    broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"u", b"x"))
    broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"u", b"x"))
    first, second = answers(broker, client)
    assert first.ptype == second.ptype == C.JOB_CREATED and first.args == second.args


def test_max_queued_jobs_counts_every_held_job_and_frees_as_they_end():
    broker = Broker(b"H:t", max_queued_jobs=2)
    client, worker = broker.connect(1), broker.connect(2)
    broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"", b"1"))
    broker.handle(client, C.SUBMIT_JOB, (b"g", b"", b"2"))
    broker.handle(client, C.SUBMIT_JOB_LOW_BG, (b"h", b"", b"3"))
    created, _, refused = answers(broker, client)
    assert refused.ptype == C.ERROR and refused.args[0] == b"QUEUE_ERROR"
    assert refused.args[1] == b"Job queue is full: the server holds its maximum of 2 jobs"
    broker.handle(worker, C.CAN_DO, (b"f",))
    broker.handle(worker, C.GRAB_JOB, ())
    (assign,) = answers(broker, worker)
    broker.handle(client, C.SUBMIT_JOB_BG, (b"h", b"", b"4"))  # a running job is still held
    assert answers(broker, client)[0].ptype == C.ERROR
    broker.handle(worker, C.WORK_COMPLETE, (assign.args[0], b""))
    broker.handle(client, C.SUBMIT_JOB_BG, (b"h", b"", b"5"))
    assert answers(broker, client)[0].ptype == C.JOB_CREATED


def test_spill_queue_keeps_runs_finds_handles_and_skips_gone_ones():
    queue = SpillQueue()
    for ref, num in [(1, 100), (2, 101), (3, 102), (7, 103), (8, 110), (9, 111)]:
        queue.append(ref, num, 5.0)
    assert queue.count == 6 and len(queue.runs()) == 3  # (1..3, 100..102), (7, 103), (8..9, 110..111)
    assert [queue.find(n) for n in (100, 102, 103, 104, 110, 111, 112, 99)] == [1, 3, 7, None, 8, 9, None, None]
    queue.gone.add(101)
    assert queue.find(101) is None
    assert list(queue.handles()) == [100, 102, 103, 110, 111]
    assert queue.front(4) == [(1, 100, 3, 5.0), (7, 103, 1, 5.0)]
    queue.advance(2)
    assert queue.front(10) == [(3, 102, 1, 5.0), (7, 103, 1, 5.0), (8, 110, 2, 5.0)]
    assert queue.find(100) is None and queue.find(102) == 3
    queue.advance(3)
    assert queue.front(10) == [(9, 111, 1, 5.0)]


def test_spill_queue_open_run_is_seen_by_every_read_and_closed_by_it():
    # The run being appended to lives outside the arrays until a read: each read sees it, and an append after a
    # read starts a run of its own (still found, still in order).
    queue = SpillQueue()
    queue.append(1, 100, 5.0)
    queue.append(2, 101, 5.0)
    assert queue.find(101) == 2 and queue.find(102) is None
    queue.append(3, 102, 5.0)
    assert queue.find(102) == 3
    assert queue.runs() == [(1, 100, 2), (3, 102, 1)]
    assert list(queue.handles()) == [100, 101, 102] and queue.count == 3
    queue.append(4, 103, 5.0)
    assert queue.front(10) == [(1, 100, 2, 5.0), (3, 102, 1, 5.0), (4, 103, 1, 5.0)]
    queue.advance(3)
    queue.append(5, 104, 5.0)
    assert queue.front(10) == [(4, 103, 1, 5.0), (5, 104, 1, 5.0)] and queue.memory() == 4 * 4 * 8


def test_spill_queue_runs_span_at_most_stamp_span():
    # A spilled job's wait counts from its run's stamp: a run only grows with jobs queued close after its first.
    queue = SpillQueue()
    for ref, stamp in [(1, 10.0), (2, 10.0 + STAMP_SPAN), (3, 10.0 + 2 * STAMP_SPAN), (4, 10.0 + 2 * STAMP_SPAN)]:
        queue.append(ref, 100 + ref, stamp)
    assert queue.front(10) == [(1, 101, 2, 10.0), (3, 103, 2, 10.0 + 2 * STAMP_SPAN)]
