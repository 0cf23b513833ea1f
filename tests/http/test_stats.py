"""The counters behind /metrics, on a broker without sockets and with a driven clock."""

from __future__ import annotations

from bisect import bisect_left

from geartrain.protocol import constants as C
from geartrain.server.broker import Broker
from geartrain.server.stats import JOB_SECONDS, Histogram, Stats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_histogram_buckets_follow_prometheus_le_semantics():
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert histogram.count == 5 and histogram.total == 0.05 + 0.1 + 0.5 + 1.0 + 7.0


def test_wait_and_run_times_and_results_with_a_driven_clock():
    clock = Clock()
    broker = Broker(clock=clock)
    client, worker = broker.connect(1), broker.connect(2)
    broker.handle(worker, C.CAN_DO, (b"f",))
    broker.handle(client, C.SUBMIT_JOB, (b"f", b"", b"x"))
    clock.now += 2.0
    broker.handle(worker, C.GRAB_JOB, ())
    handle = next(iter(worker.running))
    clock.now += 0.3
    broker.handle(worker, C.WORK_EXCEPTION, (handle, b"boom"))
    stats = broker.stats.functions[b"f"]
    assert stats.submitted == [1, 0]
    assert stats.finished == {"complete": 0, "fail": 0, "exception": 1}
    assert stats.wait.counts[JOB_SECONDS.index(2.5)] == 1 and stats.wait.total == 2.0
    assert stats.run.counts[JOB_SECONDS.index(0.5)] == 1 and abs(stats.run.total - 0.3) < 1e-9
    failure = broker.stats.failures[-1]
    assert (failure.handle, failure.result, failure.detail) == (handle, "exception", b"boom")


def test_short_waits_and_runs_take_the_same_buckets_as_the_bisect():
    # The broker counts times up to the first bound without a bisect; the edges must agree with it.
    for wait, run in ((0.0, 0.001), (0.001, 0.0015), (0.0015, 0.0), (0.5, 0.001)):
        clock = Clock()
        clock.now = 0.0
        broker = Broker(clock=clock)
        client, worker = broker.connect(1), broker.connect(2)
        broker.handle(worker, C.CAN_DO, (b"f",))
        broker.handle(client, C.SUBMIT_JOB, (b"f", b"", b"x"))
        clock.now = wait
        broker.handle(worker, C.GRAB_JOB, ())
        clock.now = wait + run
        broker.handle(worker, C.WORK_COMPLETE, (next(iter(worker.running)), b""))
        stats = broker.stats.functions[b"f"]
        for histogram, value in ((stats.wait, wait), (stats.run, clock.now - wait)):
            expected = [0] * (len(JOB_SECONDS) + 1)
            expected[bisect_left(JOB_SECONDS, value)] = 1
            assert histogram.counts == expected, value
        assert stats.finished == {"complete": 1, "fail": 0, "exception": 0}


def test_the_remembered_bucket_gives_the_bisects_answer_at_every_edge():
    # Waits past SHORTEST reuse the last bucket while the value is within its edges: a deep backlog's waits fall in
    # one bucket job after job. Values at, just below and just above every bound, in an order that stays, climbs
    # and falls, must land where the bisect puts them.
    values = []
    for bound in JOB_SECONDS[1:]:
        values += [bound, bound, bound * 0.999, bound * 1.001, bound, bound * 1.001]
    values += values[::-1] + [0.0015, 4000.0, 4000.0, 0.002]
    clock = Clock()
    broker = Broker(clock=clock)
    client, worker = broker.connect(1), broker.connect(2)
    broker.handle(worker, C.CAN_DO, (b"f",))
    expected = [0] * (len(JOB_SECONDS) + 1)
    for value in values:  # each job queued at 0.0, so that its wait and its run are the value exactly
        clock.now = 0.0
        broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"", b"x"))
        clock.now = value
        broker.handle(worker, C.GRAB_JOB, ())
        clock.now = value * 2
        broker.handle(worker, C.WORK_COMPLETE, (next(iter(worker.running)), b""))
        expected[bisect_left(JOB_SECONDS, value)] += 1
    stats = broker.stats.functions[b"f"]
    assert stats.wait.counts == expected
    assert stats.run.counts == expected
    observed = Histogram(JOB_SECONDS)
    for value in values:
        observed.observe(value)
    assert observed.counts == expected


def test_a_retry_restarts_the_wait_and_counts():
    clock = Clock()
    broker = Broker(clock=clock, job_retries=1)
    client, worker = broker.connect(1), broker.connect(2)
    broker.handle(worker, C.CAN_DO, (b"f",))
    broker.handle(client, C.SUBMIT_JOB_BG, (b"f", b"", b"x"))
    broker.handle(worker, C.GRAB_JOB, ())
    clock.now += 100.0
    broker.disconnect(worker)
    stats = broker.stats.functions[b"f"]
    assert stats.retries == 1
    again = broker.connect(3)
    broker.handle(again, C.CAN_DO, (b"f",))
    clock.now += 0.002
    broker.handle(again, C.GRAB_JOB, ())
    assert stats.wait.count == 2 and abs(stats.wait.total - 0.002) < 1e-9
    broker.disconnect(again)  # past --job-retries 1: the job fails
    assert stats.retries == 2 and stats.finished == {"complete": 0, "fail": 1, "exception": 0}
    assert stats.run.count == 1  # the failed job's last run, which ended with its worker


def test_rejections_and_denials_by_reason():
    broker = Broker(max_unique_length=4)
    peer = broker.connect(1)
    broker.set_max_queue(b"full", [1, 1, 1])
    broker.handle(peer, C.SUBMIT_JOB_BG, (b"full", b"", b"1"))
    broker.handle(peer, C.SUBMIT_JOB_BG, (b"full", b"", b"2"))
    broker.handle(peer, C.SUBMIT_JOB_BG, (b"f", b"too-long", b"x"))
    broker.handle(peer, C.SUBMIT_JOB_BG, (b"bad\x01", b"", b"x"))
    assert broker.stats.rejected == {"queue_full": 1, "acl": 0, "limit": 1, "invalid": 1}


def test_names_past_the_tracking_limit_are_counted_together():
    stats = Stats(Clock(), max_functions=2)
    assert stats.of(b"a") is stats.of(b"a")
    stats.of(b"b")
    assert stats.of(b"c") is stats.other and stats.of(b"d") is stats.other
    assert set(stats.functions) == {b"a", b"b"}


def test_counting_off_keeps_no_counters():
    broker = Broker()
    broker.stats = None
    client, worker = broker.connect(1), broker.connect(2)
    broker.handle(worker, C.CAN_DO, (b"f",))
    broker.handle(client, C.SUBMIT_JOB, (b"f", b"", b"x"))
    broker.handle(worker, C.GRAB_JOB, ())
    broker.handle(worker, C.WORK_COMPLETE, (next(iter(worker.running)), b"r"))
    assert broker.jobs == {} and broker.functions[b"f"].stats is None
