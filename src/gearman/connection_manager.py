"""What the client, worker and admin client share: the host list, the data encoder and the select loop."""

from __future__ import annotations

import logging
import selectors
import time
from collections.abc import Callable, Iterable
from typing import Any

from .connection import GearmanConnection, parse_host
from .constants import DEFAULT_CONNECT_TIMEOUT
from .encoding import DataEncoder
from .errors import ConnectionError

log = logging.getLogger("gearman")

_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_READ_WRITE = _READ | _WRITE

__all__ = ["DataEncoder", "GearmanConnectionManager"]


class GearmanConnectionManager:
    """Owns one GearmanConnection per host and polls them in a single thread with selectors."""

    connection_class = GearmanConnection
    data_encoder: type[DataEncoder] = DataEncoder
    #: Seconds a connect may take before that server counts as down.
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    def __init__(self, host_list: Iterable[Any] | None = None) -> None:
        self.connection_list: list[GearmanConnection] = []
        self._selector: selectors.BaseSelector | None = None
        #: What the selector holds now, as (socket, events, connection) in order: unchanged polls skip re-registering.
        self._registered: list[tuple[Any, int, Any]] = []
        for entry in host_list or []:
            self.add_connection(entry)

    def add_connection(self, entry: Any) -> GearmanConnection:
        options = parse_host(entry)
        connection = self.connection_class(connect_timeout=self.connect_timeout, **options)
        self.connection_list.append(connection)
        return connection

    def establish_connection(self, connection: GearmanConnection) -> GearmanConnection:
        """Connect if needed and greet the server; ConnectionError when it cannot be reached."""
        if not connection.connected:
            connection.connect()
            self.on_connect(connection)
        return connection

    def on_connect(self, connection: GearmanConnection) -> None:
        """Hook: the connection was just (re)opened; queue whatever greeting the role needs."""

    def on_connection_lost(self, connection: GearmanConnection, reason: Exception) -> None:
        """Hook: the connection broke and was closed."""

    def handle_event(self, connection: GearmanConnection, event: Any) -> None:
        """Hook: one packet or admin answer arrived."""

    def shutdown(self) -> None:
        for connection in self.connection_list:
            connection.close()
        # The selector stays: shutdown() may be called from another thread while work() is inside select().

    # -- the loop --------------------------------------------------------------------------------------
    def _lose(self, connection: GearmanConnection, reason: Exception) -> None:
        log.debug("connection to %s lost: %s", connection.address, reason)
        connection.close()
        self.on_connection_lost(connection, reason)

    def _read(self, connection: GearmanConnection) -> None:
        try:
            events = connection.read()
        except ConnectionError as exc:
            for event in getattr(exc, "events", ()):
                self.handle_event(connection, event)
            if connection.connected:
                self._lose(connection, exc)
            return
        for event in events:
            if not connection.connected:
                break
            self.handle_event(connection, event)

    def flush_connection(self, connection: GearmanConnection) -> None:
        if not connection.connected:
            return
        try:
            connection.flush()
        except ConnectionError as exc:
            self._lose(connection, exc)

    def poll_connections_once(
        self, connections: Iterable[GearmanConnection], timeout: float | None, extra: Any = None
    ) -> bool:
        """One select over the live connections (plus an optional wake-up socket); True if any was active."""
        # What to select on, as (socket, events, connection); writes go out eagerly (most fit in the socket
        # buffer at once), so a connection waits for writability only when some of its bytes stayed queued.
        signature: list[tuple[Any, int, Any]] = []
        for connection in connections:
            if connection.connected:
                if connection._out:
                    self.flush_connection(connection)
                    if not connection.connected:
                        continue
                signature.append((connection.gearman_socket, _READ_WRITE if connection._out else _READ, connection))
        if not signature and extra is None:
            if timeout:
                time.sleep(timeout)  # nothing to wait on; honour the caller's pacing
            return False
        if extra is not None:
            signature.append((extra, _READ, None))
        ready = self._select(signature, timeout)
        activity = False
        for key, mask in ready:
            connection = key.data
            if connection is None:
                activity = True
                try:
                    extra.recv(4096)
                except OSError:
                    pass
                continue
            if not connection.connected:
                continue
            activity = True
            if mask & _WRITE:
                self.flush_connection(connection)
            if mask & _READ and connection.connected:
                self._read(connection)
        return activity

    def _select(self, signature: list[tuple[Any, int, Any]], timeout: float | None) -> list:
        """Select on one selector kept across polls, re-registering only what changed since the last poll."""
        selector = self._selector
        if selector is None:
            selector = self._selector = selectors.DefaultSelector()
        if signature == self._registered:
            return selector.select(timeout)
        self._registered = signature
        wanted = {fileobj: (events, data) for fileobj, events, data in signature}
        try:
            for key in list(selector.get_map().values()):
                if key.fileobj not in wanted:
                    selector.unregister(key.fileobj)
            for fileobj, (events, data) in wanted.items():
                try:
                    key = selector.get_key(fileobj)
                except KeyError:
                    selector.register(fileobj, events, data)
                    continue
                if key.events != events or key.data is not data:
                    selector.modify(fileobj, events, data)
        except (KeyError, ValueError, OSError):
            # A socket was closed behind our back: start over with a fresh selector.
            selector.close()
            selector = self._selector = selectors.DefaultSelector()
            for fileobj, (events, data) in wanted.items():
                selector.register(fileobj, events, data)
        return selector.select(timeout)

    def poll_connections_until_stopped(
        self,
        submitted_connections: Iterable[GearmanConnection],
        callback_fxn: Callable[[bool], bool],
        timeout: float | None = None,
    ) -> bool:
        """Poll until callback_fxn(any_activity) returns False or the timeout passes; False on timeout."""
        connections = list(submitted_connections)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            any_activity = self.poll_connections_once(connections, remaining)
            if not callback_fxn(any_activity):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
