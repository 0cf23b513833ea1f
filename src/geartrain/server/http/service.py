"""HttpService: one aiohttp listener on the server's loop, its routes, and its life cycle.

aiohttp because it runs on the loop geard already has (an AppRunner and a TCPSite, no thread), parses HTTP/1.1
for us (keep-alive, chunked bodies, body size limits), serves static files and JSON, and cancels a handler when
its client disconnects, which is how a waiting HTTP submission learns its client left.

Routing (one port serves both): GET serves /metrics, /healthz, /readyz, /api/..., the dashboard at / and its
files under /static/; POST or PUT to any path outside /api/ submits a job to the function the path names. With
http_submit_only (gearmand's -r http alone) every path and method submits.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from .api import Api
from .metrics import Exposition
from .security import http_ssl_context, load_token, token_middleware
from .submit import Submissions

log = logging.getLogger("geartrain.http")

STATIC = Path(__file__).resolve().parent / "static"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HttpService:
    """The HTTP listener of one Server (config.http_port, config.http_listen)."""

    def __init__(self, server: Any) -> None:
        config = server.config
        self.server = server
        self.submissions = Submissions(server)
        self.api = Api(server)
        self.exposition = Exposition(server, config.metrics_max_functions)
        middlewares = []
        if config.http_token_file:
            middlewares.append(token_middleware(load_token(config.http_token_file), config.http_token_all))
        self.ssl_context = http_ssl_context(config)
        # Bodies past the packet limit are refused (413) while being read; the exact rule is in submit.py.
        app = web.Application(middlewares=middlewares, client_max_size=config.max_packet_size + 1)
        if config.http_submit_only:
            app.router.add_route("*", "/{function:.*}", self.submissions.handle)
        else:
            app.router.add_routes([
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics),
                *self.api.routes(),
                web.get("/", self.dashboard),
                web.static("/static", STATIC),
                web.route("*", "/api/{rest:.*}", self.no_api_route),
                web.post("/{function:.*}", self.submissions.handle),
                web.put("/{function:.*}", self.submissions.handle),
            ])
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        self.site: web.TCPSite | None = None

    @property
    def port(self) -> int:
        """The port listened on (config.http_port 0 picks one)."""
        return self.runner.addresses[0][1]

    async def start(self) -> None:
        config = self.server.config
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, config.http_listen or None, config.http_port,
                                ssl_context=self.ssl_context, reuse_address=True)
        await self.site.start()
        log.info("HTTP%s listening on %s port %d%s", "S" if self.ssl_context else "", config.http_listen or "*",
                 self.port, " (job submission only)" if config.http_submit_only else "")

    async def close(self) -> None:
        self.submissions.close()
        await self.runner.cleanup()

    # ------------------------------------------------------------------ routes

    async def healthz(self, request: web.Request) -> web.Response:
        """The loop answers."""
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        """200 once every listener is up and the durable queue is replayed; 503 before that and while stopping."""
        if getattr(self.server, "ready", False):
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: starting (replaying the durable queue) or stopping\n")

    async def metrics(self, request: web.Request) -> web.Response:
        families = self.exposition.collect()
        body = await asyncio.get_running_loop().run_in_executor(None, self.exposition.render, families)
        return web.Response(body=body, headers={"Content-Type": METRICS_TYPE})

    async def dashboard(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def no_api_route(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text=f"no API route {request.method} {request.path}; jobs are submitted "
                            "by POST to a path outside /api/\n")
