"""The gearman face against servers that answer OPTION_REQ otherwise: gear 0.16.0's geard ignores it, a scripted
server refuses it with ERROR. Every request keeps its own handle and result."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest 9 does not put this directory on sys.path
sys.path.insert(0, str(Path(__file__).parents[1] / "client"))
pytest.register_assert_rewrite("gearman_helpers")
from other_servers import OptionRefusingServer, original_gear, original_geard  # noqa: E402, F401

import gearman  # noqa: E402

pytest_plugins = ["gearman_helpers"]  # fixtures: run_worker


def test_gear_0_16_geard_which_ignores_option_req(original_geard, run_worker):  # noqa: F811
    client = gearman.GearmanClient([original_geard.address])
    worker = gearman.GearmanWorker([original_geard.address])
    worker.register_task("go_up", lambda worker, job: job.data.upper())
    run_worker(worker)
    requests = client.submit_multiple_jobs([dict(task="go_up", data=f"job {n}") for n in range(4)], poll_timeout=30)
    assert [r.state for r in requests] == [gearman.JOB_COMPLETE] * 4
    assert [r.result for r in requests] == [f"JOB {n}".encode() for n in range(4)]
    assert len({r.job.handle for r in requests}) == 4


def test_a_server_refusing_option_req_with_error():
    with OptionRefusingServer() as server:
        client = gearman.GearmanClient([server.address])
        requests = client.submit_multiple_jobs([dict(task="f", data=f"job {n}") for n in range(4)], poll_timeout=30)
        assert [r.result for r in requests] == [f"JOB {n}".encode() for n in range(4)]
        assert server.options_refused == 1
        client.shutdown()
