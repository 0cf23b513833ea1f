"""Socket helpers shared by every face: tuning (the server's too), one reused receive buffer, the client TLS context.

``ssl`` is imported only when a TLS context is built, so that ``import gear`` stays light.
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

RECV_SIZE = 256 * 1024

_local = threading.local()
_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_KEEPALIVE_OPTIONS = ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT")


def tune(
    sock: Any,
    keepalive: bool = False,
    keepidle: int | None = None,
    keepintvl: int | None = None,
    keepcnt: int | None = None,
    buffer: int = 0,
) -> None:
    """TCP_NODELAY on TCP sockets (each small request goes out at once); keepalive with its timings if asked;
    SO_SNDBUF and SO_RCVBUF of ``buffer`` bytes if asked (0 leaves them to the kernel's autotuning).

    Anything without a TCP family (a Unix socket, a test's fake socket without a ``family``) is left alone.
    """
    if getattr(sock, "family", None) not in _TCP_FAMILIES:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in zip(_KEEPALIVE_OPTIONS, (keepidle, keepintvl, keepcnt), strict=True):
                if value is not None and hasattr(socket, option):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        if buffer > 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    except OSError:
        pass  # a socket already closed by its peer: the first read or write reports it


def recv_some(sock: socket.socket) -> bytes:
    """``sock.recv(RECV_SIZE)`` through one reused buffer per thread.

    ``recv(256 KiB)`` allocates its result at full size and shrinks it afterwards, which for a buffer that
    large costs glibc an mmap, an mremap and a munmap per read; here only the bytes read are copied out.
    Exceptions are the socket's own (BlockingIOError, ssl.SSLWantReadError, OSError). An object without
    ``recv_into`` is read with ``recv``.
    """
    view = getattr(_local, "view", None)
    if view is None:
        view = _local.view = memoryview(bytearray(RECV_SIZE))
    try:
        count = sock.recv_into(view)
    except AttributeError:  # a stand-in socket with recv() only (gear 0.16.0's test suite has one)
        return sock.recv(RECV_SIZE)
    return bytes(view[:count])


def client_context(
    ssl_key: Any = None,
    ssl_cert: Any = None,
    ssl_ca: Any = None,
    check_hostname: bool = False,
    verify: bool = True,
) -> ssl.SSLContext:
    """The client TLS context of every face: TLS 1.2 or later, the server verified against ``ssl_ca`` (the
    system store when None) unless ``verify`` is False, ``ssl_cert``/``ssl_key`` presented when given.

    Hostname checking is off unless asked: gear deployments use certificates named by role (CN), not by host.
    """
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname and verify
    if verify:
        context.verify_mode = ssl.CERT_REQUIRED
        if ssl_ca is not None:
            context.load_verify_locations(cafile=ssl_ca)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        context.verify_mode = ssl.CERT_NONE
    if ssl_cert is not None:
        context.load_cert_chain(certfile=ssl_cert, keyfile=ssl_key)
    elif ssl_key is not None:
        raise ValueError("ssl_key given without ssl_cert")
    return context
