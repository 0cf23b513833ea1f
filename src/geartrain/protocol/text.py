"""Text is a face, bytes are the truth: the one conversion every face applies to names, uniques and data."""

from __future__ import annotations

from typing import Any


def to_bytes(value: Any, what: str = "value") -> bytes:
    """bytes as they are, str as UTF-8, bytearray and memoryview copied; anything else is a TypeError."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


def as_bytes(value: Any) -> Any:
    """The lenient form (gear's): str as UTF-8, bytearray and memoryview copied, anything else (bytes, None)
    unchanged."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value
