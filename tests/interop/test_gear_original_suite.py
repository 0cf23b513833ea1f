"""gear 0.16.0's own test suite (gear/tests/ of its sdist from PyPI) passes against our `gear`.

The sdist is downloaded once per machine; its tests are put in our package's place and run with their own runner
(testtools) in a subprocess, as gear's project runs them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import gear
import geartrain

from conftest import machine_lock

CACHE = Path(os.environ.get("GEARTRAIN_TEST_VENVS", "/tmp/geartrain-test-venvs")) / "gear-0.16.0-sdist"
#: gear 0.16.0's suite: test_gear.py and test_functional.py.
TESTS = 43


@pytest.fixture(scope="session")
def original_tests() -> Path:
    """gear/tests/ of gear 0.16.0's sdist, downloaded once per machine."""
    tests = CACHE / "gear-0.16.0" / "gear" / "tests"
    with machine_lock(CACHE.parent):  # another test run on this machine may be extracting it right now
        if not (tests / "test_functional.py").exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            out = subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                 "--no-binary", ":all:", "gear==0.16.0", "-d", str(CACHE)],
                capture_output=True, text=True, timeout=600)
            if out.returncode:
                pytest.fail(f"pip download gear==0.16.0 failed: {out.stderr[-2000:]}")
            with tarfile.open(CACHE / "gear-0.16.0.tar.gz") as sdist:
                sdist.extractall(CACHE, filter="data")
    return tests


def test_gear_0_16_0_own_suite_passes_against_our_gear(original_tests, tmp_path):
    package = tmp_path / "gear"
    shutil.copytree(Path(gear.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(original_tests, package / "tests")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join((str(tmp_path), str(Path(geartrain.__file__).parent.parent))))
    out = subprocess.run(
        [sys.executable, "-m", "testtools.run", "gear.tests.test_gear", "gear.tests.test_functional"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    report = out.stdout + out.stderr
    failed = re.findall(r"^(?:FAIL|ERROR): (\S+)", report, re.MULTILINE)
    assert out.returncode == 0 and not failed, f"failed: {failed}\n{report[-6000:]}"
    assert re.search(rf"^Ran {TESTS} tests", report, re.MULTILINE), report[-3000:]
