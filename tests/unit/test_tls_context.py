"""Real TLS handshakes on loopback with the server and client contexts, and reading the peer's Common Name."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from geartrain.server.tls import client_context, peer_common_name, server_context

from certs import PKI, make_pki

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("tls"))


@dataclass
class Outcome:
    """What both ends of one connection saw."""

    server_cn: str | None = None
    client_cn: str | None = None
    version: str | None = None
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    echoed: bytes = b""

    @property
    def accepted(self) -> bool:
        return self.server_error is None and self.client_error is None and self.echoed == b"ping"


def connect(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    host: str = "127.0.0.1",
    server_hostname: str | None = None,
) -> Outcome:
    """Handshake over a loopback TCP connection; the server echoes what the client sends."""
    outcome = Outcome()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(1)
    listener.settimeout(TIMEOUT)

    def serve() -> None:
        try:
            raw, _ = listener.accept()
            raw.settimeout(TIMEOUT)
            with server_ctx.wrap_socket(raw, server_side=True) as tls:
                outcome.server_cn = peer_common_name(tls)
                data = tls.recv(4)
                tls.sendall(data)
        except (OSError, ssl.SSLError) as exc:
            outcome.server_error = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname()[:2], timeout=TIMEOUT) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                outcome.version = tls.version()
                outcome.client_cn = peer_common_name(tls)
                tls.sendall(b"ping")
                outcome.echoed = tls.recv(4)
    except (OSError, ssl.SSLError) as exc:
        outcome.client_error = exc
    finally:
        thread.join(TIMEOUT)
        listener.close()
    assert not thread.is_alive()
    return outcome


def mutual_server(pki: PKI) -> ssl.SSLContext:
    return server_context(*pki.server_files())


def test_valid_client_is_accepted_and_its_cn_is_read(pki: PKI) -> None:
    outcome = connect(mutual_server(pki), client_context(*pki.client_files("my_worker")))
    assert outcome.accepted, outcome
    assert outcome.server_cn == "my_worker"
    assert outcome.client_cn == "geartrain-server"


def test_each_client_is_known_by_its_own_cn(pki: PKI) -> None:
    server = mutual_server(pki)
    for cn in ("client", "node manager", "caf\u00e9"):
        outcome = connect(server, client_context(*pki.client_files(cn)))
        assert outcome.accepted, outcome
        assert outcome.server_cn == cn


def test_tls13_is_negotiated_by_default(pki: PKI) -> None:
    outcome = connect(mutual_server(pki), client_context(*pki.client_files("c13")))
    assert outcome.accepted, outcome
    assert outcome.version == "TLSv1.3"


def test_tls12_is_negotiable_with_mutual_auth(pki: PKI) -> None:
    client = client_context(*pki.client_files("c12"))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    outcome = connect(mutual_server(pki), client)
    assert outcome.accepted, outcome
    assert outcome.version == "TLSv1.2"
    assert outcome.server_cn == "c12"


def test_contexts_require_tls12_and_verified_peers(pki: PKI) -> None:
    server = mutual_server(pki)
    client = client_context(*pki.client_files("c"))
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname is False


@pytest.mark.parametrize(
    "max_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"]
)
def test_client_without_certificate_is_refused(pki: PKI, max_version: ssl.TLSVersion) -> None:
    client = client_context(ssl_ca=pki.ca_file)
    client.maximum_version = max_version
    outcome = connect(mutual_server(pki), client)
    assert not outcome.accepted
    assert isinstance(outcome.server_error, ssl.SSLError), outcome
    assert outcome.server_cn is None


@pytest.mark.parametrize(
    "max_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"]
)
def test_self_signed_client_is_refused(pki: PKI, max_version: ssl.TLSVersion) -> None:
    client = client_context(*pki.self_signed_client_files("my_worker"))
    client.maximum_version = max_version
    outcome = connect(mutual_server(pki), client)
    assert not outcome.accepted
    assert isinstance(outcome.server_error, ssl.SSLError), outcome
    assert "certificate" in str(outcome.server_error).lower()


@pytest.mark.parametrize(
    "max_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"]
)
def test_client_from_another_ca_is_refused(pki: PKI, max_version: ssl.TLSVersion) -> None:
    client = client_context(*pki.foreign_client_files("my_worker"))
    client.maximum_version = max_version
    outcome = connect(mutual_server(pki), client)
    assert not outcome.accepted
    assert isinstance(outcome.server_error, ssl.SSLError), outcome
    assert "certificate" in str(outcome.server_error).lower()


def test_client_refuses_a_server_from_another_ca(pki: PKI) -> None:
    key, cert, _ = pki.foreign_server_files()
    server = server_context(key, cert, pki.ca_file)
    outcome = connect(server, client_context(*pki.client_files("c")))
    assert not outcome.accepted
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError), outcome


def test_server_without_ca_does_not_ask_for_client_certificates(pki: PKI) -> None:
    key, cert, ca = pki.server_files()
    server = server_context(key, cert)
    assert server.verify_mode == ssl.CERT_NONE
    outcome = connect(server, client_context(ssl_ca=ca))
    assert outcome.accepted, outcome
    assert outcome.server_cn is None  # no client certificate, no subject
    assert outcome.client_cn == "geartrain-server"


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1"])
def test_hostname_checking_accepts_the_names_in_the_certificate(pki: PKI, name: str) -> None:
    client = client_context(*pki.client_files("c"), check_hostname=True)
    assert client.check_hostname is True
    outcome = connect(mutual_server(pki), client, server_hostname=name)
    assert outcome.accepted, outcome


def test_hostname_checking_accepts_ipv6_loopback(pki: PKI) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    client = client_context(*pki.client_files("c"), check_hostname=True)
    outcome = connect(mutual_server(pki), client, host="::1", server_hostname="::1")
    assert outcome.accepted, outcome


def test_hostname_checking_refuses_other_names_only_when_asked(pki: PKI) -> None:
    checking = client_context(*pki.client_files("c"), check_hostname=True)
    outcome = connect(mutual_server(pki), checking, server_hostname="gearman.example.com")
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError), outcome
    relaxed = client_context(*pki.client_files("c"))
    outcome = connect(mutual_server(pki), relaxed, server_hostname="gearman.example.com")
    assert outcome.accepted, outcome


def test_client_context_rejects_a_key_without_a_certificate(pki: PKI) -> None:
    key, _, ca = pki.client_files("c")
    with pytest.raises(ValueError):
        client_context(ssl_key=key, ssl_ca=ca)


def test_server_context_reports_missing_files(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        server_context(tmp_path / "nokey.pem", tmp_path / "nocert.pem")


def test_asyncio_server_reads_the_cn_from_its_transport(pki: PKI) -> None:
    async def main() -> tuple[str | None, bytes]:
        seen: list[str | None] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(peer_common_name(writer.transport))
            writer.write(await reader.readexactly(4))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=mutual_server(pki))
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(*pki.client_files("async_worker"))
            )
            writer.write(b"ping")
            echoed = await reader.readexactly(4)
            writer.close()
            await writer.wait_closed()
        return seen[0], echoed

    cn, echoed = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert (cn, echoed) == ("async_worker", b"ping")


class FakePeer:
    def __init__(self, cert: dict | None) -> None:
        self.cert = cert

    def getpeercert(self) -> dict | None:
        return self.cert


def test_peer_common_name_without_a_certificate() -> None:
    assert peer_common_name(None) is None
    assert peer_common_name(FakePeer(None)) is None
    assert peer_common_name(FakePeer({})) is None  # an unverified certificate reads as {}
    assert peer_common_name(FakePeer({"subject": ((("organizationName", "x"),),)})) is None


def test_peer_common_name_takes_the_last_cn_like_gear() -> None:
    cert = {"subject": ((("commonName", "first"),), (("organizationName", "o"),), (("commonName", "last"),))}
    assert peer_common_name(FakePeer(cert)) == "last"
