"""statsd reporting with gear's keys and kinds, batched so that the packet path pays a counter increment.

gear's Server sends, per packet, a timer and a counter `<prefix>.packet.<NAME>`, and gauges `<prefix>.queue.total`,
`.queue.running` and `.queue.waiting`. Here packets are counted where they are handled and sent once per
interval through one statsd pipeline (a few datagrams): the counter is exact, the timer gets one sample per packet
type per interval (the mean of the packets timed: the first of each interval and one in 16 after it), and the
gauges carry the queue at the time of sending.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import perf_counter
from typing import Any

import statsd

from ..protocol.constants import TYPE_NAMES
from .spill import Confirming

log = logging.getLogger("geartrain.statsd")

#: Seconds between two sends.
INTERVAL = 1.0
#: One packet in this many (per type) is timed, besides the first of each interval.
TIME_EVERY = 16

Gauges = Callable[[], tuple[int, int, int]]


class StatsdReporter:
    """Counts packets per type and sends them, with the queue gauges, to statsd every `interval` seconds."""

    def __init__(self, host: str, port: int = 8125, prefix: str | None = None, *, gauges: Gauges,
                 interval: float = INTERVAL) -> None:
        #: The statsd client (gear.Server.statsd is this object, as in gear).
        self.client = statsd.StatsClient(host, port, prefix or None)
        self.gauges = gauges
        self.interval = interval
        #: {packet type: [packets, packets timed, seconds spent in the timed ones]}
        self.slots: dict[int, list] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def slot(self, ptype: int) -> list:
        slot = self.slots.get(ptype)
        if slot is None:
            slot = self.slots[ptype] = [0, 0, 0.0]
        return slot

    def record(self, ptype: int, seconds: float) -> None:
        """One packet handled in `seconds` (gear.Server.reportTimingStats)."""
        slot = self.slot(ptype)
        slot[0] += 1
        slot[1] += 1
        slot[2] += seconds

    def instrument(self, handlers: dict[int, Callable[[Any, tuple[bytes, ...]], None]]) -> None:
        """Wrap every packet handler in place with a counter (and a timer for one packet in TIME_EVERY)."""
        for ptype, handler in list(handlers.items()):
            handlers[ptype] = self._counted(handler, self.slot(ptype))

    @staticmethod
    def _counted(handler: Callable[[Any, tuple[bytes, ...]], None], slot: list,
                 ) -> Callable[[Any, tuple[bytes, ...]], None]:
        def counted(peer: Any, args: tuple[bytes, ...]) -> None:
            slot[0] += 1
            try:
                if slot[0] % TIME_EVERY != 1:
                    handler(peer, args)
                    return
                start = perf_counter()
                handler(peer, args)
                slot[1] += 1
                slot[2] += perf_counter() - start
            except Confirming:  # handled again once its store read is done (spill.py): counted then
                slot[0] -= 1
                raise

        return counted

    # ------------------------------------------------------------------ sending

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send every interval from now on, from `loop` (call in the loop's thread)."""
        self._loop = loop
        self._timer = loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        try:
            self.send()
        except Exception:  # reporting never stops the server
            log.exception("sending statistics to statsd failed")
        if self._loop is not None:
            self._timer = self._loop.call_later(self.interval, self._tick)

    def send(self) -> None:
        """Send the gauges and what was counted since the last send, in as few datagrams as fit."""
        total, running, waiting = self.gauges()
        with self.client.pipeline() as pipe:
            pipe.gauge("queue.total", total)
            pipe.gauge("queue.running", running)
            pipe.gauge("queue.waiting", waiting)
            for ptype, slot in self.slots.items():
                packets, timed, seconds = slot
                if not packets:
                    continue
                key = f"packet.{TYPE_NAMES.get(ptype, 'UNKNOWN')}"
                pipe.incr(key, packets)
                if timed:
                    pipe.timing(key, seconds * 1000.0 / timed)
                slot[0] = slot[1] = 0
                slot[2] = 0.0

    def close(self) -> None:
        """Send what is left and stop."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None
        try:
            self.send()
        except Exception:
            log.exception("sending statistics to statsd failed")
        self.client.close()


def broker_gauges(broker: Any) -> Gauges:
    """queue.total, queue.running and queue.waiting of a broker (gear's meanings: jobs held, running, not)."""

    def gauges() -> tuple[int, int, int]:
        total = len(broker.jobs)
        running = sum(function.running for function in list(broker.functions.values()))
        return total, running, total - running

    return gauges
