"""Who may use the HTTP listener: bearer tokens, HTTPS, and client certificates whose subject the ACL judges."""

from __future__ import annotations

import ssl
import urllib.error

import pytest

from geartrain.protocol import constants as C
from geartrain.server import Server, ServerConfig
from geartrain.server.acl import ACL, ACLEntry

from certs import make_pki
from http_client import request
from wire import Wire

TOKEN = "s3cret-t0ken"
BACKGROUND = {"X-Gearman-Background": "true"}


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return str(path)


def test_token_guards_every_route_but_health_and_metrics(http_factory, token_file):
    server = http_factory(http_token_file=token_file)
    good = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/api/status", "/api/workers", "/api/jobs", "/", "/static/dashboard.js"):
        missing = request(server, path)
        assert missing.status == 401, path
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert b"missing Authorization" in missing.body
        wrong = request(server, path, headers={"Authorization": "Bearer not-it"})
        assert wrong.status == 401 and b"wrong bearer token" in wrong.body
        basic = request(server, path, headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert basic.status == 401 and b"is not Bearer" in basic.body
        assert request(server, path, headers=good).status == 200, path
    for path in ("/healthz", "/readyz", "/metrics"):
        assert request(server, path).status == 200, path
    refused = request(server, "/work", "POST", b"x", BACKGROUND)
    assert refused.status == 401
    assert request(server, "/api/status", headers=good).json()["total"] == 0  # nothing was submitted
    accepted = request(server, "/work", "POST", b"x", {**BACKGROUND, **good})
    assert accepted.status == 200 and accepted.headers["X-Gearman-Job-Handle"]


def test_token_all_guards_health_and_metrics_too(http_factory, token_file):
    server = http_factory(http_token_file=token_file, http_token_all=True)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert request(server, path).status == 401, path
        assert request(server, path, headers={"Authorization": "Bearer " + TOKEN}).status == 200, path


def test_an_empty_or_missing_token_file_stops_the_server_with_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, message in ((empty, "is empty"), (tmp_path / "absent", "cannot read the HTTP token file")):
        server = Server(ServerConfig(listen=[("127.0.0.1", 0)], http_port=0, http_listen="127.0.0.1",
                                     http_token_file=str(path)))
        with pytest.raises(ValueError, match=message):
            server.start_in_thread()
        server.stop()


def _client(pki, cn: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if cn is not None:
        key, cert, _ = pki.client_files(cn)
        context.load_cert_chain(cert, key)
    return context


def test_https_with_client_certificates_and_the_acl(http_factory, tmp_path):
    pki = make_pki(tmp_path)
    key, cert, ca = pki.server_files()
    acl = ACL()
    acl.add(ACLEntry("submitter", invoke="^allowed"))
    acl.add(ACLEntry("operator", invoke="^allowed", grant=True))
    server = http_factory(ssl_key=key, ssl_cert=cert, ssl_ca=ca, acl=acl)

    def call(cn, path, method="GET", data=None, headers=None):
        return request(server, path, method, data, headers, scheme="https", context=_client(pki, cn))

    assert call("submitter", "/healthz").status == 200
    created = call("submitter", "/allowed_fn", "POST", b"x", BACKGROUND)
    assert created.status == 200
    handle = created.headers["X-Gearman-Job-Handle"]
    denied = call("submitter", "/other_fn", "POST", b"x", BACKGROUND)
    assert denied.status == 403 and denied.headers["X-Gearman-Error"] == "PERMISSION_DENIED"
    assert b"submitter may not invoke" in denied.body
    stranger = call("stranger", "/allowed_fn", "POST", b"x", BACKGROUND)
    assert stranger.status == 403
    no_grant = call("submitter", "/api/jobs/" + handle, "DELETE")
    assert no_grant.status == 403 and b"grant" in no_grant.body
    assert call("operator", "/api/jobs/" + handle, "DELETE").status == 200
    metrics = call("operator", "/metrics").body.decode()
    assert 'geartrain_acl_denials_total{action="invoke"} 2.0' in metrics
    assert 'geartrain_acl_denials_total{action="cancel"} 1.0' in metrics
    assert 'geartrain_submits_rejected_total{reason="acl"} 2.0' in metrics
    # No client certificate, or one from another CA: the TLS handshake fails.
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        call(None, "/healthz")
    foreign_key, foreign_cert, _ = pki.foreign_client_files("submitter")
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(foreign_cert, foreign_key)
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        request(server, "/healthz", scheme="https", context=context)
    # Plain HTTP on an HTTPS port gets no job in.
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        request(server, "/allowed_fn", "POST", b"x", BACKGROUND)


def test_tls_handshake_failures_on_the_gearman_port_are_counted(http_factory, tmp_path):
    pki = make_pki(tmp_path)
    key, cert, ca = pki.server_files()
    server = http_factory(ssl_key=key, ssl_cert=cert, ssl_ca=ca)
    with pytest.raises((ssl.SSLError, ConnectionError, TimeoutError)):
        with Wire(server.host, server.port, ssl_context=ssl.create_default_context(cafile=ca)) as wire:
            wire.send(C.ECHO_REQ, b"x")
            wire.expect(C.ECHO_RES)
    context = ssl.create_default_context(cafile=ca)
    client_key, client_cert, _ = pki.client_files("w")
    context.load_cert_chain(client_cert, client_key)
    body = request(server, "/metrics", scheme="https", context=context).body.decode()
    assert "geartrain_tls_handshake_failures_total 1.0" in body


def test_geard_refuses_to_start_with_a_bad_token_file(tmp_path):
    import subprocess
    import sys

    empty = tmp_path / "empty"
    empty.write_text("")
    result = subprocess.run([sys.executable, "-m", "geartrain.server.cli", "-d", "--queue-type", "memory",
                             "--http-port", "0", "--http-token-file", str(empty)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "is empty: put the bearer token in it" in result.stderr
