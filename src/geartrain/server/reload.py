"""What SIGHUP reads again: the ACL file and the TLS certificate and key. A file that fails keeps the old setting.

Each function returns the new object, or None when there is nothing to reload or the file is bad; a bad file is
logged with the reason, and the server goes on with what it had (a typo in a reloaded file never opens or closes
the server to anyone).
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from .config import ServerConfig

log = logging.getLogger("geartrain.server")

__all__ = ["reread_acl", "reread_tls"]


def reread_acl(config: ServerConfig) -> Any:
    """The ACL from config.acl_file, or None (no file, or a bad one: the current ACL stays)."""
    if not config.acl_file:
        return None
    from .acl import load_acl_file

    try:
        acl = load_acl_file(config.acl_file)
    except Exception as exc:  # ACLError, OSError: any failure keeps the old ACL
        log.error("SIGHUP: kept the current ACL: cannot load %s: %s", config.acl_file, exc)
        return None
    log.info("SIGHUP: reloaded the ACL from %s (%d subjects)", config.acl_file, len(acl))
    return acl


def reread_tls(config: ServerConfig) -> ssl.SSLContext | None:
    """A server context from the TLS files again, or None (no TLS, or a bad file: new connections keep the old)."""
    if not (config.ssl_key and config.ssl_cert):
        return None
    from .tls import server_context

    try:
        context = server_context(config.ssl_key, config.ssl_cert, config.ssl_ca)
    except (OSError, ssl.SSLError, ValueError) as exc:
        log.error("SIGHUP: kept the current TLS certificate: cannot load %s / %s: %s",
                  config.ssl_cert, config.ssl_key, exc)
        return None
    log.info("SIGHUP: reloaded the TLS certificate %s; new connections use it", config.ssl_cert)
    return context
