"""The poll loop's selector: selectors' interface (register, unregister, select, close), straight on epoll where
there is one. selectors.EpollSelector.select() spends several Python calls per wake-up (timeout rounding, the
key of each descriptor through a method); a gear poll loop wakes for nearly every packet, so here select() is one
epoll call and a dict lookup per ready descriptor. Elsewhere, selectors' own default."""

from __future__ import annotations

import select
import selectors
from typing import Any

__all__ = ["new_selector"]


def new_selector() -> Any:
    """An _EpollSelector on Linux, else selectors.DefaultSelector()."""
    if hasattr(select, "epoll"):
        return _EpollSelector()
    return selectors.DefaultSelector()


def _fd(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else fileobj.fileno()


class _EpollSelector:
    """The part of selectors.BaseSelector the poll loop uses; select() returns (SelectorKey, events) pairs."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = _fd(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        mask = (select.EPOLLIN if events & selectors.EVENT_READ else 0) | (
            select.EPOLLOUT if events & selectors.EVENT_WRITE else 0)
        self._epoll.register(fd, mask)
        key = self._keys[fd] = selectors.SelectorKey(fileobj, fd, events, data)
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        try:
            fd = _fd(fileobj)
        except (AttributeError, OSError, ValueError):
            fd = -1
        if fd < 0:  # a closed socket (fileno() is -1): find it by its object, as selectors does
            fd = next((k.fd for k in self._keys.values() if k.fileobj is fileobj), -1)
        key = self._keys.pop(fd)  # KeyError when it is not registered, as selectors raises
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # already closed: epoll forgot it by itself
        return key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        keys = self._keys
        ready = self._epoll.poll(-1 if timeout is None else timeout)
        if len(ready) == 1:  # the common case: one connection readable
            fd, mask = ready[0]
            key = keys.get(fd)
            return [(key, mask)] if key is not None else []
        return [(keys[fd], mask) for fd, mask in ready if fd in keys]

    def close(self) -> None:
        self._epoll.close()
        self._keys.clear()
