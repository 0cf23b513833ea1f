"""Bytes objects filled in place: a large payload is read from the socket straight into the bytes it comes out as.

A packet's arguments are bytes (the broker keys, stores and relays them as such). Reading a payload into a buffer
and then making bytes of it copies every byte once more: a 1 MiB job through geard paid 2 MiB of such copies, about
a tenth of its CPU. CPython's C API makes a bytes object of a given size without filling it
(PyBytes_FromStringAndSize(NULL, n), as C code that reads into a new bytes object does) and a writable view of any
memory (PyMemoryView_FromMemory); through ctypes the decoder uses both, so the kernel's copy out of the socket is the
only copy, as in gearmand, which receives a packet's data into the buffer it later sends from.

The rule: the view is filled completely, then dropped, before the bytes object is shared (until then nobody else
holds it). Where that C API is not at hand (not CPython), unfilled() gives a bytearray instead and finished() copies
it into bytes once.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

#: PyMemoryView_FromMemory's flag for a writable view (PyBUF_WRITE in CPython's headers).
_PYBUF_WRITE = 0x200

_new: Callable[[None, int], bytes] | None = None
_view: Callable[[int, int, int], memoryview] | None = None
_address: Callable[[bytes], int] | None = None


def _bind() -> bool:
    """Bind the three C functions and check on a small object that they do what is said above."""
    global _new, _view, _address
    try:
        api = ctypes.pythonapi
        new, address, view = api.PyBytes_FromStringAndSize, api.PyBytes_AsString, api.PyMemoryView_FromMemory
    except (AttributeError, OSError):
        return False
    new.restype, new.argtypes = ctypes.py_object, (ctypes.c_char_p, ctypes.c_ssize_t)
    address.restype, address.argtypes = ctypes.c_void_p, (ctypes.py_object,)
    view.restype, view.argtypes = ctypes.py_object, (ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)
    probe = new(None, 3)
    space = view(address(probe), 3, _PYBUF_WRITE)
    space[:] = b"abc"
    if type(probe) is not bytes or probe != b"abc" or space.readonly:
        return False
    _new, _view, _address = new, view, address
    return True


IN_PLACE = _bind()


def unfilled(size: int) -> tuple[bytes | bytearray, memoryview]:
    """A buffer of `size` (at least 2) bytes and a writable view of all of it: fill the view completely, drop it,
    then take the bytes with finished()."""
    if _new is not None and _view is not None and _address is not None and size > 1:
        # size > 1: CPython shares its one empty and its one-byte bytes objects; any larger one is new.
        target = _new(None, size)
        return target, _view(_address(target), size, _PYBUF_WRITE)
    buffer = bytearray(size)
    return buffer, memoryview(buffer)


def finished(buffer: bytes | bytearray) -> bytes:
    """The bytes of a buffer from unfilled() once it is filled (no copy when it was filled in place)."""
    return buffer if type(buffer) is bytes else bytes(buffer)
