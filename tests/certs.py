"""A throw-away PKI for TLS tests, generated at test time with trustme (no certificate is ever committed).

    pki = make_pki(tmp_path)
    key, cert, ca = pki.server_files()          # for the server: cert valid for 127.0.0.1, localhost and ::1
    key, cert, ca = pki.client_files("worker")  # a client cert with CN=worker signed by the same CA
    pki.foreign_client_files("worker")          # CN=worker, but signed by an unrelated CA
    pki.self_signed_client_files("worker")      # CN=worker, signed by itself
Every method returns (key, cert, ca) paths as str, ready for ssl_key/ssl_cert/ssl_ca arguments.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_IDENTITIES = ("127.0.0.1", "localhost", "::1")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


@dataclass
class PKI:
    """A CA with a server certificate and client certificates issued on demand, plus an unrelated CA."""

    directory: Path
    ca: trustme.CA = field(default_factory=trustme.CA)
    foreign_ca: trustme.CA = field(default_factory=trustme.CA)
    _cache: dict[tuple[str, str], tuple[str, str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.foreign_ca.cert_pem.write_to_path(str(self.foreign_ca_file))

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def foreign_ca_file(self) -> Path:
        return self.directory / "foreign-ca.pem"

    def _leaf(self, kind: str, ca: trustme.CA, *identities: str, common_name: str) -> tuple[str, str]:
        leaf = ca.issue_cert(*identities, common_name=common_name)
        key = self.directory / f"{kind}-{_safe(common_name)}.key"
        cert = self.directory / f"{kind}-{_safe(common_name)}.pem"
        leaf.private_key_pem.write_to_path(str(key))
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        return str(key), str(cert)

    def server_files(self, common_name: str = "geartrain-server") -> tuple[str, str, str]:
        """(key, cert, ca): the server's key and certificate, and the CA that signs the clients."""
        cached = self._cache.get(("server", common_name))
        if cached is None:
            key, cert = self._leaf("server", self.ca, *SERVER_IDENTITIES, common_name=common_name)
            cached = self._cache[("server", common_name)] = (key, cert, str(self.ca_file))
        return cached

    def client_files(self, cn: str) -> tuple[str, str, str]:
        """(key, cert, ca): a client certificate with Common Name `cn` from the server's CA."""
        cached = self._cache.get(("client", cn))
        if cached is None:
            key, cert = self._leaf("client", self.ca, common_name=cn)
            cached = self._cache[("client", cn)] = (key, cert, str(self.ca_file))
        return cached

    def foreign_client_files(self, cn: str) -> tuple[str, str, str]:
        """(key, cert, ca): CN `cn` signed by an unrelated CA; ca is the real CA (trusts the server)."""
        cached = self._cache.get(("foreign", cn))
        if cached is None:
            key, cert = self._leaf("foreign", self.foreign_ca, common_name=cn)
            cached = self._cache[("foreign", cn)] = (key, cert, str(self.ca_file))
        return cached

    def foreign_server_files(self, common_name: str = "geartrain-server") -> tuple[str, str, str]:
        """(key, cert, ca): a server certificate from the unrelated CA (for clients that must refuse it)."""
        cached = self._cache.get(("foreign-server", common_name))
        if cached is None:
            key, cert = self._leaf(
                "foreign-server", self.foreign_ca, *SERVER_IDENTITIES, common_name=common_name
            )
            cached = self._cache[("foreign-server", common_name)] = (key, cert, str(self.foreign_ca_file))
        return cached

    def self_signed_client_files(self, cn: str) -> tuple[str, str, str]:
        """(key, cert, ca): a self-signed certificate with CN `cn`; ca is the real CA."""
        cached = self._cache.get(("self-signed", cn))
        if cached is None:
            private_key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
            now = datetime.datetime.now(datetime.timezone.utc)
            certificate = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(private_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(private_key, hashes.SHA256())
            )
            key = self.directory / f"self-signed-{_safe(cn)}.key"
            cert = self.directory / f"self-signed-{_safe(cn)}.pem"
            key.write_bytes(
                private_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
            cached = self._cache[("self-signed", cn)] = (str(key), str(cert), str(self.ca_file))
        return cached


def make_pki(tmp_path: Path | str) -> PKI:
    """A fresh PKI whose PEM files live under `tmp_path`/pki."""
    return PKI(Path(tmp_path) / "pki")
