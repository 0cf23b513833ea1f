"""Server addresses as users write them: "host:port", "[v6]:port", "host", "v6" or a (host, port) pair."""

from __future__ import annotations

from typing import Any

from .constants import DEFAULT_PORT

__all__ = ["parse_address"]


def parse_address(spec: Any, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """(host, port) from "host:port", "[v6]:port", "host", a bare IPv6 address, a (host, port) pair or bytes.

    Raises ValueError naming the entry when it cannot be read.
    """
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise ValueError(f"bad server address {spec!r}: expected (host, port)")
        host, port = spec
        host = host.decode("utf-8") if isinstance(host, bytes) else str(host)
        return host, _port(port, spec)
    if isinstance(spec, bytes):
        spec = spec.decode("utf-8")
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"bad server address {spec!r}: expected 'host:port' or (host, port)")
    text = spec.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad server address {spec!r}: expected '[v6 address]:port'")
        return host, _port(rest[1:], spec) if rest else default_port
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port, spec)
    return text, default_port


def _port(value: Any, spec: Any) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"bad server address {spec!r}: the port must be a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad server address {spec!r}: port {port} is out of range")
    return port
