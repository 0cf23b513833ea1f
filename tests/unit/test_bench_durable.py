"""benchmarks/durable.py builds its servers' command lines: geartrain on the pure Python of the checkout, or, with
--compiled, on a compiled build put on PYTHONPATH (the process that runs is still the server: `env` execs it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def durable(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import durable

    return durable


def test_geartrain_runs_from_the_build_given(durable, tmp_path):
    argv, db, table = durable.server_command("geartrain-sqlite-normal", 4730, tmp_path, ["--memory-jobs", "0"],
                                             build=Path("/opt/build"))
    assert argv[:4] == ["env", "PYTHONPATH=/opt/build", sys.executable, "-m"]
    assert argv[4] == "geartrain.server.cli" and "--memory-jobs" in argv and argv[-1] == "normal"
    assert db == tmp_path / "geartrain.sqlite3" and table == "geartrain_jobs"


def test_the_nowrite_server_replaces_the_module_by_its_script_with_or_without_a_build(durable, tmp_path):
    for build, at in ((None, 1), (Path("/opt/build"), 3)):
        argv, db, _ = durable.server_command("geartrain-sqlite-nowrite", 4730, tmp_path, build=build)
        assert argv[at - 1] == sys.executable and argv[at:at + 2] == ["-c", durable.NO_WRITE]
        assert argv[at + 2:at + 4] == ["-d", "-p"] and db is None


def test_without_a_build_geartrain_runs_on_the_interpreter_s_path(durable, tmp_path):
    argv, db, _ = durable.server_command("geartrain-memory", 4730, tmp_path)
    assert argv[0] == sys.executable and argv[-2:] == ["--queue-type", "memory"] and db is None
