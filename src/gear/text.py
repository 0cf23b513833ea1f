"""gear's lenient text conversion (str to UTF-8, bytes-likes to bytes, anything else such as None unchanged):
the protocol's one conversion, under gear's name."""

from __future__ import annotations

from geartrain.protocol.text import as_bytes as to_bytes

__all__ = ["to_bytes"]
