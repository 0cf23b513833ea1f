"""The server's collector settings keep each pass over the middle generation small while a backlog grows."""

from __future__ import annotations

import gc

import pytest

from geartrain.server.collector import THRESHOLDS, tune_collector


@pytest.fixture
def collector_restored():
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_a_growing_backlog_meets_middle_generation_passes_of_about_100k_objects(collector_restored):
    """1.2 million long-lived objects (a backlog's jobs) made after tune_collector(): the middle generation is
    collected several times, and no pass examines more than about 100,000 objects. With the thresholds before
    (20,000, 50, 100) its one pass examined about a million objects: a 0.2-0.4 s stop of geard's event loop."""
    examined: list[int] = []

    def record(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 1:
            examined.append(len(gc.get_objects(generation=0)) + len(gc.get_objects(generation=1)))

    tune_collector()
    gc.callbacks.append(record)
    try:
        backlog = [[n] for n in range(1_200_000)]
    finally:
        gc.callbacks.remove(record)
    assert len(backlog) == 1_200_000
    assert len(examined) >= 5, examined
    young, middle, _ = THRESHOLDS
    assert max(examined) <= 1.5 * young * middle, examined
