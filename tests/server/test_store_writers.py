"""The store's writer threads (store/writers.py): results and exceptions back on the loop, order, shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest

from geartrain.server.store.writers import Writers

DEADLINE = 30.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, DEADLINE))


def test_calls_run_off_the_loop_in_order_and_answer_on_it():
    async def main() -> None:
        writers = Writers(asyncio.get_running_loop(), 1, "test-writer")
        ran: list[tuple[int, str]] = []

        def call(n: int) -> int:
            ran.append((n, threading.current_thread().name))
            return n * 2

        try:
            futures = [writers.run(call, n) for n in range(50)]
            assert [await future for future in futures] == [n * 2 for n in range(50)]
            assert [n for n, _ in ran] == list(range(50))
            assert {name for _, name in ran} == {"test-writer-0"}
        finally:
            writers.shutdown()

    run(main())


def test_an_exception_reaches_the_future_and_the_thread_goes_on():
    async def main() -> None:
        writers = Writers(asyncio.get_running_loop(), 1, "test-writer")

        def fail() -> None:
            raise OSError(28, "No space left on device")

        try:
            with pytest.raises(OSError, match="No space left"):
                await writers.run(fail)
            assert await writers.run(lambda: "still serving") == "still serving"
        finally:
            writers.shutdown()

    run(main())


def test_shutdown_ends_the_threads_after_the_calls_handed_over():
    async def main() -> None:
        writers = Writers(asyncio.get_running_loop(), 3, "test-writers")
        gate = threading.Event()
        future = writers.run(gate.wait, DEADLINE)
        writers.shutdown()
        gate.set()
        assert await future is True
        for thread in writers._threads:
            await asyncio.get_running_loop().run_in_executor(None, thread.join, DEADLINE)
            assert not thread.is_alive()

    run(main())


def test_a_result_after_the_loop_closed_is_dropped_quietly(monkeypatch):
    escaped: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_value))
    loop = asyncio.new_event_loop()
    writers = Writers(loop, 1, "test-writer")
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(DEADLINE)
        return "late"

    writers.run(slow)
    assert started.wait(DEADLINE)
    loop.close()
    release.set()
    writers.shutdown()
    writers._threads[0].join(DEADLINE)
    assert not writers._threads[0].is_alive()
    assert escaped == []  # call_soon_threadsafe on the closed loop raised nothing out of the thread
