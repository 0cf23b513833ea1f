"""systemd's notify protocol (sd_notify) with the standard library: readiness, watchdog pings, stopping.

Under a `Type=notify` unit systemd sets NOTIFY_SOCKET (a path, or "@name" in the abstract namespace); geard sends
READY=1 once its listeners are up and its queue is replayed, STOPPING=1 when it begins to shut down, and, when
the unit sets WatchdogSec= (WATCHDOG_USEC, for WATCHDOG_PID when given), WATCHDOG=1 from its event loop at half
that interval, so a loop that stops turning gets the service restarted. Without NOTIFY_SOCKET every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("geartrain.server")

__all__ = ["Notifier"]


class Notifier:
    """Datagrams to systemd's notification socket, read from the environment given (os.environ by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is Linux's abstract namespace: a leading NUL byte.
        self.address: str | None = ("\0" + address[1:] if address.startswith("@") else address) or None
        self.watchdog_interval: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6
        self._ping: asyncio.TimerHandle | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, state: str) -> bool:
        """Send one state ("READY=1", "STOPPING=1", ...); False (and a log line) when it could not be sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(state.encode("utf-8"), self.address)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"), exc)
            return False
        return True

    def ready(self, status: str = "") -> None:
        """Listeners are up and the queue is replayed (with a STATUS= line for `systemctl status`)."""
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> None:
        """Shutdown has begun: systemd stops expecting watchdog pings."""
        if self._ping is not None:
            self._ping.cancel()
            self._ping = None
        self.notify("STOPPING=1")

    def start_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        """Ping from `loop` at half the watchdog interval (a no-op unless WATCHDOG_USEC is set)."""
        if self.watchdog_interval is not None and self.address is not None:
            self._schedule_ping(loop)

    def _schedule_ping(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.watchdog_interval is not None
        self.notify("WATCHDOG=1")
        self._ping = loop.call_later(self.watchdog_interval / 2, self._schedule_ping, loop)
