"""Mutual TLS interoperability with the original gear 0.16.0 (from PyPI, in a throwaway virtualenv).

Debian's gearmand serves plaintext even with --ssl, so the original gear is the TLS peer here: its client talks
to geartrain's server, and our `gear` client talks to its geard.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from geartrain.protocol import constants as C
from geartrain.server import Server, ServerConfig
from geartrain.server.tls import client_context

from certs import make_pki
from conftest import free_port, machine_lock, stop_process, wait_for_port
from wire import Wire

VENV = Path(os.environ.get("GEARTRAIN_TEST_VENVS", "/tmp/geartrain-test-venvs")) / "gear-0.16.0"


def original_env() -> dict[str, str]:
    """The environment for gear 0.16.0's programs: without PYTHONPATH, which may name our gear (a checkout's src/)."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


@pytest.fixture(scope="session")
def original_gear() -> Path:
    """The python of a virtualenv holding gear 0.16.0, built once per machine."""
    python = VENV / "bin" / "python"
    with machine_lock(VENV.parent):  # another test run on this machine may be building it right now
        if not python.exists() or subprocess.run([python, "-c", "import gear"], capture_output=True).returncode:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=300)
            out = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                  "gear==0.16.0"], capture_output=True, text=True, timeout=600)
            if out.returncode:
                pytest.fail(f"pip install gear==0.16.0 failed: {out.stderr[-2000:]}")
    return python


CLIENT = textwrap.dedent("""
    import sys, time, gear
    host, port, key, cert, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    client = gear.Client("original")
    client.addServer(host, port, key, cert, ca)
    client.waitForServer(30)
    job = gear.Job(b"reverse", b"test string")
    client.submitJob(job)
    deadline = time.time() + 30
    while not job.complete and time.time() < deadline:
        time.sleep(0.01)
    print(b"".join(job.data).decode())
    client.shutdown()
""")


def test_original_gear_client_talks_tls_to_geartrain(original_gear, tmp_path):
    pki = make_pki(tmp_path)
    key, cert, ca = pki.server_files()
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], ssl_key=key, ssl_cert=cert, ssl_ca=ca))
    server.start_in_thread()
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    client = subprocess.Popen([original_gear, str(script), "127.0.0.1", str(server.port), *pki.client_files("c")],
                              env=original_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with Wire("127.0.0.1", server.port, ssl_context=client_context(*pki.client_files("w")), timeout=30) as w:
            w.register(b"reverse")
            job = w.grab(timeout=30)
            w.send(C.WORK_COMPLETE, job.args[0], job.args[3][::-1])
            out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        assert out.decode().strip() == "gnirts tset"
        assert {p.subject for p in server.broker.peers.values()} <= {"w"}
    finally:
        stop_process(client)
        server.stop()


def test_our_gear_client_talks_tls_to_the_original_geard(original_gear, tmp_path):
    gear = pytest.importorskip("gear")
    if not hasattr(gear, "Client") or not (Path(gear.__file__ or "").resolve().parents[1] / "geartrain").is_dir():
        pytest.fail("the gear imported is not this project's")
    pki = make_pki(tmp_path)
    key, cert, ca = pki.server_files()
    port = free_port()
    geard = subprocess.Popen([original_gear.parent / "geard", "-d", "-p", str(port), "--ssl-key", key,
                              "--ssl-cert", cert, "--ssl-ca", ca], env=original_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    client = worker = None
    try:
        wait_for_port("127.0.0.1", port, process=geard)
        worker = gear.Worker("w")
        worker.addServer("127.0.0.1", port, *pki.client_files("w"))
        worker.registerFunction("reverse")
        client = gear.Client("c")
        client.addServer("127.0.0.1", port, *pki.client_files("c"))
        client.waitForServer(30)
        job = gear.Job("reverse", "test string")
        client.submitJob(job)
        wjob = worker.getJob()
        wjob.sendWorkComplete(wjob.arguments[::-1])
        deadline = time.monotonic() + 30
        while not job.complete and time.monotonic() < deadline:
            time.sleep(0.01)
        assert job.complete and b"".join(job.data) == b"gnirts tset"
    finally:
        for party in (client, worker):
            if party is not None:
                party.shutdown()
        stop_process(geard)
