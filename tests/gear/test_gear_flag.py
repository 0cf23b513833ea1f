"""gear.flag.Flag: the Event-compatible wait under every job, submit and status query."""

from __future__ import annotations

import functools
import threading

from gear.flag import Flag

DEADLINE = 30.0


def test_set_clear_and_timeouts():
    flag = Flag()
    assert not flag.is_set()
    assert flag.wait(0) is False and flag.wait(0.01) is False
    flag.set()
    flag.set()  # setting twice is harmless
    assert flag.is_set() and flag.wait() is True and flag.wait(0) is True
    flag.clear()
    assert not flag.is_set() and flag.wait(0.01) is False
    flag.clear()  # clearing twice is harmless
    flag.set()
    assert flag.wait(0) is True


def test_set_wakes_every_waiting_thread():
    flag = Flag()
    started = threading.Barrier(5)
    woken: list[bool] = []

    def waiter() -> None:
        started.wait(DEADLINE)
        woken.append(flag.wait(DEADLINE))

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for thread in threads:
        thread.start()
    started.wait(DEADLINE)
    flag.set()
    for thread in threads:
        thread.join(DEADLINE)
    assert woken == [True] * 4


def test_racing_setters_and_waiters_leave_it_set_without_errors():
    errors: list[BaseException] = []
    for _ in range(200):
        flag = Flag()
        go = threading.Barrier(4)

        def run(action, go=go) -> None:
            try:
                go.wait(DEADLINE)
                action()
            except BaseException as exc:  # noqa: BLE001 - any error here is the failure under test
                errors.append(exc)

        wait = functools.partial(flag.wait, DEADLINE)
        actions = (flag.set, flag.set, wait, wait)
        threads = [threading.Thread(target=run, args=(a,)) for a in actions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
        assert flag.is_set() and flag.wait(0)
    assert errors == []
