"""Blocking-socket helpers shared by the thread-based faces (``gear`` and ``gearman``)."""

from __future__ import annotations

import socket
import threading

RECV_SIZE = 256 * 1024

_local = threading.local()


def recv_some(sock: socket.socket) -> bytes:
    """``sock.recv(RECV_SIZE)`` through one reused buffer per thread.

    ``recv(256 KiB)`` allocates its result at full size and shrinks it afterwards, which for a buffer that
    large costs glibc an mmap, an mremap and a munmap per read; here only the bytes read are copied out.
    Exceptions are the socket's own (BlockingIOError, ssl.SSLWantReadError, OSError).
    """
    view = getattr(_local, "view", None)
    if view is None:
        view = _local.view = memoryview(bytearray(RECV_SIZE))
    count = sock.recv_into(view)
    return bytes(view[:count])
