"""A small blocking HTTP client for the tests, over urllib (a real HTTP client, not ours)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(server, path: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None,
            scheme: str = "http", context: ssl.SSLContext | None = None, timeout: float = 30.0) -> Reply:
    url = f"{scheme}://127.0.0.1:{server.extra['http_port']}{path}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, exc.headers, exc.read())


def metrics(server, **kwargs) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} parsed with prometheus_client's own parser."""
    reply = request(server, "/metrics", **kwargs)
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]
