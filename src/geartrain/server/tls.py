"""TLS contexts for the server and its clients, and the peer's certificate Common Name (the ACL subject).

TLS 1.2 and 1.3 only. With a CA the server requires a client certificate signed by it (mutual TLS, like gear);
the Common Name of that certificate is the subject the ACL knows the connection by.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from ..sockets import client_context  # the one client context builder, re-exported for the tests

__all__ = ["ServerTLSSession", "client_context", "peer_common_name", "server_context"]

StrPath = str | os.PathLike[str]


def server_context(ssl_key: StrPath, ssl_cert: StrPath, ssl_ca: StrPath | None = None) -> ssl.SSLContext:
    """A server-side context presenting `ssl_cert`/`ssl_key`; with `ssl_ca`, client certificates are required
    and must be signed by that CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=ssl_cert, keyfile=ssl_key)
    if ssl_ca is not None:
        context.load_verify_locations(cafile=ssl_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def peer_common_name(ssl_object: Any) -> str | None:
    """The Common Name of the peer's verified certificate, or None when there is none.

    Accepts an ssl.SSLObject or ssl.SSLSocket, or an asyncio transport (its "ssl_object" extra info).
    When the certificate names several CNs, the last one wins, as in gear.
    """
    if ssl_object is None:
        return None
    if not hasattr(ssl_object, "getpeercert") and hasattr(ssl_object, "get_extra_info"):
        ssl_object = ssl_object.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
    try:
        cert = ssl_object.getpeercert()
    except (ValueError, ssl.SSLError):  # handshake not done yet
        return None
    if not cert:
        return None
    common_name: str | None = None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                common_name = value
    return common_name


class ServerTLSSession:
    """The server side of one TLS connection over memory BIOs, driven by the connection's own protocol object.

    Sans-I/O like the rest of the server: ciphertext in, (plaintext, ciphertext to send) out. Doing the
    handshake here rather than in the event loop's TLS layer keeps it non-blocking on any loop, lets the
    server log a refused peer by address, and puts the handshake under the server's own timeout.
    """

    __slots__ = ("_in", "_out", "ssl_object", "established", "closed")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._in, self._out, server_side=True)
        self.established = False
        self.closed = False

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed ciphertext; return (plaintext, ciphertext to send). Raises ssl.SSLError on a failed handshake."""
        self._in.write(data)
        if not self.established:
            try:
                self.ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                return b"", self._out.read()
            self.established = True
        chunks = []
        while True:
            try:
                chunk = self.ssl_object.read(1 << 18)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = True
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), self._out.read()

    def send(self, plaintext: bytes) -> bytes:
        """Encrypt application data; return the ciphertext to write."""
        self.ssl_object.write(plaintext)
        return self._out.read()

    def alert(self) -> bytes:
        """Whatever the TLS layer still has to say (a failed handshake's alert)."""
        return self._out.read()
