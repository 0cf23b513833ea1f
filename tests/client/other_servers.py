"""Servers other than geartrain and gearmand: gear 0.16.0's own geard (a fixture) and a scripted stand-in for
answers no server we can run gives."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from geartrain.protocol import Decoder, encode_response
from geartrain.protocol import constants as C
from geartrain.protocol.constants import REQ

sys.path.insert(0, str(Path(__file__).parents[1] / "interop"))
from test_gear_original_tls import original_env, original_gear  # noqa: E402, F401  (gear 0.16.0's virtualenv)

from conftest import RunningServer, free_port, stop_process, wait_for_port  # noqa: E402


@pytest.fixture
def original_geard(original_gear) -> Iterator[RunningServer]:  # noqa: F811
    """gear 0.16.0's own geard on a loopback port: it ignores OPTION_REQ (and ECHO_REQ) entirely."""
    port = free_port()
    process = subprocess.Popen([original_gear.parent / "geard", "-d", "-p", str(port), "--listen-address",
                                "127.0.0.1"], env=original_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, process=process)
        yield RunningServer("gear-0.16.0", "127.0.0.1", port, process=process)
    finally:
        stop_process(process)


class OptionRefusingServer:
    """On a loopback port: answers OPTION_REQ with ERROR (as a server that knows no options may), GET_STATUS
    with "unknown", and each submit with JOB_CREATED and, for a foreground one, WORK_COMPLETE holding the job's
    data upper-cased. Threads end when close() is called (use it as a context manager)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.options_refused = 0
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._handles = 0
        self._lock = threading.Lock()
        self._spawn(self._accept)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._connections.append(conn)
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        decoder = Decoder(accept=REQ)
        try:
            while data := conn.recv(65536):
                out = b""
                for packet in decoder.feed(data):
                    out += self._answer(packet)
                if out:
                    conn.sendall(out)
        except OSError:
            pass

    def _answer(self, packet) -> bytes:
        ptype, args = packet.ptype, packet.args
        if ptype == C.OPTION_REQ:
            self.options_refused += 1
            return encode_response(C.ERROR, b"UNKNOWN_OPTION", b"no options here")
        if ptype == C.GET_STATUS:
            return encode_response(C.STATUS_RES, args[0], b"0", b"0", b"0", b"0")
        if ptype in C.SUBMIT_TYPES:
            with self._lock:
                self._handles += 1
                handle = b"H:fake:%d" % self._handles
            out = encode_response(C.JOB_CREATED, handle)
            if not C.SUBMIT_TYPES[ptype][0]:
                out += encode_response(C.WORK_COMPLETE, handle, args[-1].upper())
            return out
        return b""

    def close(self) -> None:
        # close() alone does not wake a thread blocked in accept() on Linux; shutdown() does (accept raises).
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for conn in self._connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        for thread in self._threads:
            thread.join(10)

    def __enter__(self) -> OptionRefusingServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
