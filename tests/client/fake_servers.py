"""A scripted Gearman server stand-in, for servers whose answers no real one we can run gives."""

from __future__ import annotations

import socket
import threading

from geartrain.protocol import Decoder, encode_response
from geartrain.protocol import constants as C
from geartrain.protocol.constants import REQ


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
