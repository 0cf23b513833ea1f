"""gear's lenient text conversion: str to UTF-8, bytes-likes to bytes, anything else (None) unchanged."""

from __future__ import annotations

from typing import Any


def to_bytes(value: Any) -> Any:
    """str becomes UTF-8 bytes, bytearray and memoryview become bytes; None and bytes pass through."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value
