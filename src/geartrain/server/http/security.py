"""Who may use the HTTP listener: a bearer token (--http-token-file) and TLS client certificates (--ssl-ca).

The certificate's Common Name is the subject the ACL (geartrain.server.acl) judges: `invoke` for a job
submission (checked by the broker, as for a Gearman connection), `grant` for a cancel.
"""

from __future__ import annotations

import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..tls import peer_common_name, server_context

log = logging.getLogger("geartrain.http")

#: Routes a load balancer or Prometheus reaches without the token (unless --http-token-all).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def load_token(path: str) -> str:
    """The token in `path` (surrounding whitespace dropped); an empty or unreadable file is an error."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the HTTP token file {path}: {exc.strerror}") from None
    if not token:
        raise ValueError(f"the HTTP token file {path} is empty: put the bearer token in it")
    return token


def token_middleware(token: str, protect_all: bool) -> Any:
    """Refuse requests without `Authorization: Bearer <token>` (401, with what was wrong)."""
    expected = token.encode("utf-8")

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if protect_all or request.path not in OPEN_PATHS:
            header = request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            if not header:
                problem = "missing Authorization: Bearer <token>"
            elif scheme.lower() != "bearer":
                problem = f"Authorization scheme {scheme[:20]!r} is not Bearer"
            elif not hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected):
                problem = "wrong bearer token"
            else:
                return await handler(request)
            log.info("HTTP %s %s from %s refused: %s", request.method, request.path, request.remote, problem)
            return web.Response(status=401, text=problem + "\n",
                                headers={"WWW-Authenticate": 'Bearer realm="geard"'})
        return await handler(request)

    return require_token


def http_ssl_context(config: Any) -> ssl.SSLContext | None:
    """HTTPS with the server's own TLS files; with --ssl-ca, client certificates are required."""
    if config.ssl_key and config.ssl_cert:
        return server_context(config.ssl_key, config.ssl_cert, config.ssl_ca)
    return None


def request_subject(request: web.BaseRequest) -> str | None:
    """The Common Name of the request's verified client certificate, or None."""
    transport = request.transport
    if transport is None:
        return None
    return peer_common_name(transport.get_extra_info("ssl_object"))
