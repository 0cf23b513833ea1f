"""The TLS host entry form {'host', 'port', 'keyfile', 'certfile', 'ca_certs'} against geartrain's TLS listener."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest 9 does not put this directory on sys.path
sys.path.insert(0, str(Path(__file__).parent.parent))  # certs.py
pytest.register_assert_rewrite("gearman_helpers")
import gearman  # noqa: E402

from certs import make_pki  # noqa: E402

pytest_plugins = ["gearman_helpers"]  # fixtures: run_worker


@pytest.fixture
def tls_server(tmp_path):
    from geartrain.server import Server, ServerConfig

    pki = make_pki(tmp_path / "pki")
    key, cert, ca = pki.server_files()
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], ssl_key=key, ssl_cert=cert, ssl_ca=ca))
    server.start_in_thread()
    try:
        yield server, pki
    finally:
        server.stop()


def test_client_and_worker_over_mutual_tls(tls_server, run_worker):
    server, pki = tls_server
    worker_key, worker_cert, ca = pki.client_files("worker")
    client_key, client_cert, _ = pki.client_files("client")

    def entry(key: str, cert: str) -> dict:
        return {"host": "127.0.0.1", "port": server.port, "keyfile": key, "certfile": cert, "ca_certs": ca}

    worker = gearman.GearmanWorker([entry(worker_key, worker_cert)])
    worker.register_task("gm_tls", lambda worker, job: b"secure " + job.data)
    run_worker(worker)
    client = gearman.GearmanClient([entry(client_key, client_cert)])
    request = client.submit_job("gm_tls", b"hello" * 50_000, poll_timeout=20)
    assert request.result == b"secure " + b"hello" * 50_000
    admin = gearman.GearmanAdminClient([entry(client_key, client_cert)])
    assert admin.ping_server() >= 0


def test_untrusted_server_certificate_is_refused(tls_server, tmp_path):
    server, pki = tls_server
    key, cert, _ = pki.client_files("client")
    foreign_ca = str(pki.foreign_ca_file)
    entry = {"host": "127.0.0.1", "port": server.port, "keyfile": key, "certfile": cert, "ca_certs": foreign_ca}
    with pytest.raises(gearman.errors.ServerUnavailable):
        gearman.GearmanClient([entry]).submit_job("gm_tls", b"x", poll_timeout=5)
