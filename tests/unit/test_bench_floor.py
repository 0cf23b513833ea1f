"""benchmarks/floor_server.py (run.py's `python-floor`) serves the loads it is the floor of: the load generator's
clients and workers check every result, handle and unique. A few jobs each, no timing."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import loadgen
    import servers

    return servers, loadgen


def _plan(loadgen, port: int, mode: str, **kw):
    tag = loadgen.new_tag("floor")
    return loadgen.Plan(port=port, func=f"f_{tag}".encode(), tag=tag, mode=mode, payload=64, duration=60.0,
                        timeout=60.0, **kw)


def test_the_floor_server_serves_foreground_lockstep_and_background_loads(bench):
    servers, loadgen = bench
    with servers.running(servers.SERVERS["python-floor"]) as server:
        pipelined = loadgen.run_foreground(_plan(loadgen, server.port, "foreground", clients=2, workers=2,
                                                 inflight=8, jobs=400))
        assert not pipelined.errors and pipelined.jobs == 400
        lockstep = loadgen.run_foreground(_plan(loadgen, server.port, "foreground", clients=1, workers=1,
                                                inflight=1, jobs=50))
        assert not lockstep.errors and lockstep.jobs == 50
        background = loadgen.run_background(_plan(loadgen, server.port, "background", clients=2, workers=2,
                                                  inflight=0, jobs=300, window=100))
        assert not background.errors and background.jobs == 300
