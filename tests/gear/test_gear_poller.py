"""gear's poll-loop selector on epoll (gear.poller): selectors' behaviour for what the poll loop uses."""

from __future__ import annotations

import selectors
import socket

import pytest

from gear.poller import _EpollSelector, new_selector

pytestmark = pytest.mark.skipif(not hasattr(__import__("select"), "epoll"), reason="epoll only")


def test_new_selector_is_the_epoll_one_here():
    selector = new_selector()
    assert isinstance(selector, _EpollSelector)
    selector.close()


def test_register_select_unregister_like_selectors():
    selector = _EpollSelector()
    a, b = socket.socketpair()
    try:
        key = selector.register(a, selectors.EVENT_READ, ("read", "conn"))
        assert key.fileobj is a and key.data == ("read", "conn")
        with pytest.raises(KeyError):
            selector.register(a, selectors.EVENT_READ)
        assert selector.select(0) == []
        b.send(b"x")
        (ready,) = selector.select(1)
        assert ready[0] is key
        writable = selector.register(b, selectors.EVENT_WRITE, "w")
        assert {k.data for k, _ in selector.select(1)} == {("read", "conn"), "w"}
        assert selector.unregister(b) is writable
        with pytest.raises(KeyError):
            selector.unregister(b)
        a.close()  # a closed socket is still found, by its object, as selectors finds it
        assert selector.unregister(a) is key
    finally:
        a.close()
        b.close()
        selector.close()
