"""Fixtures of the HTTP tests: geartrain servers with their HTTP listener on ephemeral loopback ports."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import RunningServer, start_geartrain, stopping_all

# The helper modules of these tests (http_client.py) import by name from this folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def http_factory() -> Iterator:
    """Start geartrain servers with HTTP on (options are ServerConfig fields); all stop at the end."""

    def start(**options) -> RunningServer:
        options.setdefault("http_port", 0)
        options.setdefault("http_listen", "127.0.0.1")
        server = start_geartrain(**options)
        server.extra["http_port"] = server.server.http.port  # type: ignore[union-attr]
        return server

    with stopping_all(start) as make:
        yield make


@pytest.fixture
def http_server(http_factory) -> RunningServer:
    return http_factory()
