"""Server choice and reconnect pacing, written once for every client face.

- A consistent-hash ring on the job's unique over the pool in a canonical order (sorted "host:port" names), so
  every client given the same servers, in whatever order, sends a unique to the same server: coalescing and
  GET_STATUS_UNIQUE work across a pool. When that server is down the next one on the ring takes the unique, and
  only the uniques of the down server move.
- Jobs without a unique go round-robin.
- One Backoff policy for reconnecting: the first retry after ``initial`` seconds, doubling up to ``ceiling``, each
  delay drawn between half and all of its nominal value (jitter spreads reconnect storms), and back to
  ``initial`` once a connection stayed up ``stable_after`` seconds (a server that accepts and drops at once gets
  no busy loop).
"""

from __future__ import annotations

import random
import zlib
from bisect import bisect
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

__all__ = ["Backoff", "Ring", "RoundRobin", "server_name"]

S = TypeVar("S", bound=Hashable)

#: Points per server on the ring: enough for an even spread over a handful of servers, cheap to build.
REPLICAS = 160


def server_name(host: str, port: int) -> str:
    """The canonical name of a server, "host:port" ("[v6]:port" for IPv6): the ring's sort and hash key."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _hash(data: bytes) -> int:
    return zlib.crc32(data)


class Ring(Generic[S]):
    """A consistent-hash ring over servers, each known by a canonical name; see the module docstring.

    ``servers`` maps each server object (a face's connection) to its name; the ring depends only on the names.
    """

    __slots__ = ("_points", "_owners", "_servers", "_single")

    def __init__(self, servers: Iterable[tuple[S, str]], replicas: int = REPLICAS) -> None:
        named = sorted(servers, key=lambda pair: pair[1])
        names = [name for _, name in named]
        if len(set(names)) != len(names):
            raise ValueError(f"a server is listed twice in {names}")
        self._servers: list[S] = [server for server, _ in named]
        points: list[tuple[int, int]] = []
        for index, name in enumerate(names):
            key = name.encode("utf-8")
            points += [(_hash(b"%s-%d" % (key, replica)), index) for replica in range(replicas)]
        points.sort()
        self._points = [point for point, _ in points]
        self._owners = [index for _, index in points]
        self._single = self._servers[0] if len(self._servers) == 1 else None

    @property
    def servers(self) -> list[S]:
        """The servers in canonical order."""
        return list(self._servers)

    def __len__(self) -> int:
        return len(self._servers)

    def pick(self, unique: bytes, usable: Callable[[S], bool] | None = None) -> S | None:
        """The server for ``unique``: its owner on the ring, else the next usable one along it; None if none is."""
        single = self._single
        if single is not None:
            return single if usable is None or usable(single) else None
        if not self._servers:
            return None
        owners = self._owners
        servers = self._servers
        start = bisect(self._points, _hash(unique)) % len(owners)
        first = servers[owners[start]]
        if usable is None or usable(first):
            return first
        for server in self._walk(start):
            if usable(server):
                return server
        return None

    def order(self, unique: bytes) -> list[S]:
        """Every server in the order ``unique`` tries them: its owner first, then the next distinct ones on the ring."""
        if len(self._servers) <= 1:
            return list(self._servers)
        start = bisect(self._points, _hash(unique)) % len(self._owners)
        return [self._servers[self._owners[start]], *self._walk(start)]

    def _walk(self, start: int) -> Iterable[S]:
        """The servers after the owner of point ``start``, each once, in ring order."""
        owners = self._owners
        seen = {owners[start]}
        count = len(owners)
        for step in range(1, count):
            index = owners[(start + step) % count]
            if index not in seen:
                seen.add(index)
                yield self._servers[index]
                if len(seen) == len(self._servers):
                    return


class RoundRobin(Generic[S]):
    """Jobs without a unique: each pick takes the next usable server after the previous pick."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, servers: Sequence[S], usable: Callable[[S], bool] | None = None) -> S | None:
        count = len(servers)
        for step in range(count):
            index = (self._next + step) % count
            server = servers[index]
            if usable is None or usable(server):
                self._next = index + 1
                return server
        return None


class Backoff:
    """The reconnect delays of one server; see the module docstring for the rule.

    ``next_delay()`` after each failed attempt or loss gives the seconds to wait; ``connected(now)`` when a
    connection is made and ``lost(now)`` when it breaks (clock values in seconds, any monotonic clock).
    """

    INITIAL = 0.1
    CEILING = 10.0
    STABLE_AFTER = 10.0

    __slots__ = ("ceiling", "initial", "stable_after", "_nominal", "_since", "_random")

    def __init__(
        self,
        initial: float = INITIAL,
        ceiling: float = CEILING,
        stable_after: float = STABLE_AFTER,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if initial <= 0 or ceiling < initial:
            raise ValueError(f"backoff needs 0 < initial <= ceiling, got initial={initial} ceiling={ceiling}")
        self.initial = initial
        self.ceiling = ceiling
        self.stable_after = stable_after
        self._nominal = initial
        self._since: float | None = None
        self._random = rng

    @property
    def nominal(self) -> float:
        """The nominal delay of the next retry (the actual one is between half and all of it)."""
        return self._nominal

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; doubles the nominal delay for the one after, up to the ceiling."""
        nominal = self._nominal
        self._nominal = min(nominal * 2, self.ceiling)
        return nominal * (0.5 + 0.5 * self._random())

    def connected(self, now: float) -> None:
        self._since = now

    def lost(self, now: float) -> None:
        """A connection broke: a connection that had stayed up long enough starts the delays afresh."""
        if self._since is not None and now - self._since >= self.stable_after:
            self.reset()
        self._since = None

    def reset(self) -> None:
        self._nominal = self.initial
