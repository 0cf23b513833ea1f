"""gearmand's HTTP job submission (its "-r http" protocol plugin), over the broker's own submit path.

Each request becomes a broker peer, as a Gearman client connection would: the request is handed to the broker
as the SUBMIT_JOB packet gearmand's plugin builds from it, and the packets the broker answers with (JOB_CREATED,
WORK_DATA, WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION, ERROR) come back through the server's flush pass, durable
store holds included, to Exchange.write(). The rules (README, "HTTP: gearmand's job submission"):

- POST (or PUT) /<function> submits; the body is the workload. X-Gearman-Unique sets the unique,
  X-Gearman-Background: true makes it a background job, X-Gearman-Priority: high|low its priority.
- 200 carries X-Gearman-Job-Handle and X-Gearman-Command (JOB_CREATED for a background job, WORK_COMPLETE
  with the result, WORK_DATA chunks first, for a foreground one), as gearmand answers.
- WORK_FAIL and WORK_EXCEPTION: 500 with the same headers (gearmand says 200 for WORK_FAIL: a caller that only
  checks the status would take a failure for a result); the body of WORK_EXCEPTION is the worker's exception.
- No function name: 404, as gearmand; a body over --max-packet-size: 413; an ERROR from the broker maps to
  403 (PERMISSION_DENIED), 503 (QUEUE_ERROR, or the server starting or stopping), 500 (the durable store failed
  to commit the job) or 400; X-Gearman-Error names it.
- A client that disconnects while waiting is a Gearman client that disconnects: a job only it waited for is
  dropped if still queued; a running one finishes and its result is discarded.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from aiohttp import web

from ...protocol import constants as C
from ...protocol.codec import Decoder, Packet
from .security import request_subject

log = logging.getLogger("geartrain.http")

PRIORITIES = {"high": C.PRIORITY_HIGH, "low": C.PRIORITY_LOW}
#: Broker ERROR codes -> HTTP status.
ERROR_STATUS = {b"PERMISSION_DENIED": 403, b"QUEUE_ERROR": 503, b"ARGUMENT_TOO_LARGE": 413,
                b"SHUTTING_DOWN": 503, b"STORE_FAILED": 500}

#: Peer ids of HTTP submissions, far above any file descriptor number.
_ids = itertools.count(1 << 40)


class Exchange:
    """The broker-side connection of one HTTP submission: decodes the packets the broker sends it."""

    kind = "http"
    tls = None

    def __init__(self, background: bool) -> None:
        self.background = background
        self.decoder = Decoder(accept=C.RES, max_packet_size=1 << 32)
        self.handle = b""
        self.data: list[bytes] = []
        self.command = ""
        self.error: tuple[bytes, str] | None = None
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        #: What the server aborts when the store fails to commit this peer's job (GroupCommitStore._failed).
        self.transport = self

    def write(self, chunks: list[bytes]) -> None:
        for event in self.decoder.feed(b"".join(chunks)):
            if type(event) is Packet:
                self._packet(event.ptype, event.args)

    def _packet(self, ptype: int, args: tuple[bytes, ...]) -> None:
        if ptype == C.JOB_CREATED:
            self.handle = args[0]
            if self.background:
                self._finish("JOB_CREATED")
        elif ptype == C.WORK_DATA:
            self.data.append(args[1])
        elif ptype == C.WORK_COMPLETE:
            self.data.append(args[1])
            self._finish("WORK_COMPLETE")
        elif ptype == C.WORK_FAIL:
            self._finish("WORK_FAIL")
        elif ptype == C.WORK_EXCEPTION:
            self.data = [args[1]]
            self._finish("WORK_EXCEPTION")
        elif ptype == C.ERROR:
            self.error = (args[0], args[1].decode("utf-8", "replace"))
            self._finish("ERROR")

    def _finish(self, command: str) -> None:
        if not self.done.done():
            self.command = command
            self.done.set_result(command)

    def close(self, why: str, code: bytes = b"SHUTTING_DOWN") -> None:
        """End the request without a result (the server stops, or the store failed)."""
        if not self.done.done():
            self.error = (code, why)
            self.command = "ERROR"
            self.done.set_result("ERROR")

    def abort(self) -> None:
        self.close("the durable store failed to commit the job: it was not stored and will not run",
                   b"STORE_FAILED")


def _text(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=headers)


class Submissions:
    """The HTTP submission handler of one server."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.waiting: set[Exchange] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info.get("function", request.path.lstrip("/"))
        name = path.lstrip("/").encode("utf-8", "surrogateescape")
        if not name:
            return _text(404, "no function name: POST /<function> with the workload as the body")
        data = await request.read()
        unique = request.headers.get("X-Gearman-Unique", "").encode("utf-8", "surrogateescape")
        background = request.headers.get("X-Gearman-Background", "").strip().lower() == "true"
        priority = PRIORITIES.get(request.headers.get("X-Gearman-Priority", "").strip().lower(),
                                  C.PRIORITY_NORMAL)
        server = self.server
        limit = server.config.max_packet_size
        size = len(name) + len(unique) + len(data) + 2
        if size > limit:
            log.info("HTTP submit from %s refused: %d bytes exceed the packet limit", request.remote, size)
            return _text(413, f"the job ({size} bytes with its function name and unique) exceeds the packet "
                         f"limit of {limit} bytes", **{"X-Gearman-Error": "ARGUMENT_TOO_LARGE"})
        if not getattr(server, "ready", False):
            return _text(503, "the server is starting or shutting down", **{"X-Gearman-Error": "NOT_READY"})
        broker = server.broker
        exchange = Exchange(background)
        peer = broker.connect(next(_ids), f"{request.remote or '-'}", request_subject(request))
        peer.conn = exchange
        peer.client_id = b"http"
        peer.exceptions = True
        self.waiting.add(exchange)
        try:
            broker.handle(peer, C.submit_type(background, priority), (name, unique, data))
            server.schedule_flush()
            await exchange.done
        except asyncio.CancelledError:
            log.info("HTTP client %s went away waiting for job %r of %r; it is treated as a disconnected "
                     "client", request.remote, exchange.handle, name)
            raise
        finally:
            self.waiting.discard(exchange)
            broker.disconnect(peer)
            server.schedule_flush()
        return self._answer(exchange)

    @staticmethod
    def _answer(exchange: Exchange) -> web.Response:
        command = exchange.command
        if command == "ERROR":
            assert exchange.error is not None
            code, message = exchange.error
            status = ERROR_STATUS.get(code, 400)
            return _text(status, message, **{"X-Gearman-Error": code.decode("ascii", "replace")})
        headers = {"X-Gearman-Job-Handle": exchange.handle.decode("ascii", "replace"),
                   "X-Gearman-Command": command}
        status = 200 if command in ("JOB_CREATED", "WORK_COMPLETE") else 500
        body = b"".join(exchange.data)
        if command == "WORK_FAIL":
            body = b"the worker reported WORK_FAIL\n"
        return web.Response(status=status, body=body, headers=headers,
                            content_type="application/octet-stream" if command != "WORK_FAIL" else "text/plain")

    def close(self) -> None:
        for exchange in list(self.waiting):
            exchange.close("the server is shutting down")
