"""The store's writer threads: blocking engine calls run there, and each result comes back to the event loop.

Why not a ThreadPoolExecutor with loop.run_in_executor: the loop thread takes Python-level locks there that the
writer thread takes too, right around each call (the executor's idle semaphore, released by the worker after each
call; the concurrent Future's condition, held by the worker while it sets the result), so the loop that starts the
next commit right after a landing can stop until the writer thread has the GIL and a core again. Here the loop
shares only the queue with the writers, and results come back through call_soon_threadsafe. Measured in geard
under benchmarks/durable.py's load: starting a commit took the loop 80-90 us of wall time (70 us of CPU) with the
executor and 54-59 us (31-54 us) with these threads; on a busier machine the executor's submit alone took 0.05-0.5
ms per commit.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any


class Writers:
    """`count` threads that run calls in the order they were handed over (one at a time each)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int, name: str) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[tuple[asyncio.Future, Callable[..., Any], tuple] | None] = queue.SimpleQueue()
        # Daemon threads: the server waits for its commits in Store.close(); a thread still blocked in a write when
        # the interpreter exits has nothing acknowledged to lose.
        self._threads = [threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def run(self, call: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Run call(*args) on a writer thread; the future (of the loop) gets its result or exception."""
        future = self._loop.create_future()
        self._queue.put((future, call, args))
        return future

    def shutdown(self) -> None:
        """Let the threads end once the calls handed over so far have run."""
        for _ in self._threads:
            self._queue.put(None)

    def _serve(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            future, call, args = item
            result = exc = None
            try:
                result = call(*args)
            except BaseException as error:  # handed to the loop, as an executor would
                exc = error
            self._settle(future, result, exc)
            del item, future, call, args, result, exc  # nothing of a batch stays referenced while the thread waits

    def _settle(self, future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
        try:
            self._loop.call_soon_threadsafe(_set, future, result, exc)
        except RuntimeError:  # the loop is closed: nobody waits for the answer
            pass


def _set(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
