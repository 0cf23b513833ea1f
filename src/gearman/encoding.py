"""DataEncoder (the data field codec users override) and the str/bytes rules for names on the wire."""

from __future__ import annotations

from typing import Any

from geartrain.protocol import to_bytes


class DataEncoder:
    """Turns job data into bytes and back; subclass it and set ``data_encoder`` on a client or worker.

    The default passes bytes through, encodes ``str`` as UTF-8 and ``None`` as empty data, and gives back the
    bytes it received. It applies to data fields only, never to task names, uniques or handles.
    """

    @classmethod
    def encode(cls, encodable_object: Any) -> bytes:
        if type(encodable_object) is bytes:  # the common case first
            return encodable_object
        if encodable_object is None:
            return b""
        if isinstance(encodable_object, (str, bytes, bytearray, memoryview)):
            return to_bytes(encodable_object)
        raise TypeError(
            f"DataEncoder cannot send a {type(encodable_object).__name__}: pass bytes or str, "
            "or set a data_encoder that serialises it"
        )

    @classmethod
    def decode(cls, decodable_string: bytes) -> Any:
        return decodable_string


def to_wire(value: str | bytes | bytearray, what: str = "value") -> bytes:
    """A task name, unique, handle or client id as wire bytes (str is UTF-8)."""
    kind = type(value)
    if kind is bytes:  # the common cases first, without building the error message
        return value  # type: ignore[return-value]
    if kind is str:
        return value.encode("utf-8")  # type: ignore[union-attr]
    return to_bytes(value, f"the {what}")


def from_wire(value: bytes) -> str:
    """Wire bytes as text; bytes that are not UTF-8 survive a round trip through to_wire()."""
    return value.decode("utf-8", "surrogateescape")


def to_wire_lossless(value: str | bytes) -> bytes:
    """Like to_wire() but reverses from_wire() exactly for text holding escaped non-UTF-8 bytes."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return to_wire(value)
