"""The dead-letter store: background jobs that used up their attempts, kept for inspection and requeueing.

Bounded by count, payload bytes and age: when a limit is passed the oldest letters go first, each drop counted
and logged.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass

log = logging.getLogger("geartrain.deadletter")

__all__ = ["DeadLetter", "DeadLetters"]


@dataclass
class DeadLetter:
    """One job that failed for good: what it was, how often it ran, and its last WORK_EXCEPTION text."""

    handle: bytes
    function: bytes
    unique: bytes
    data: bytes
    priority: int
    attempts: int
    first_time: float
    last_time: float
    last_exception: bytes
    reducer: bytes = b""

    def encode(self) -> bytes:
        """As a durable record (JSON, bytes as base64)."""
        return json.dumps({
            key: base64.b64encode(value).decode() if isinstance(value, bytes) else value
            for key, value in asdict(self).items()
        }).encode()

    @classmethod
    def decode(cls, raw: bytes) -> DeadLetter:
        values = json.loads(raw)
        for key in ("handle", "function", "unique", "data", "last_exception", "reducer"):
            values[key] = base64.b64decode(values.get(key, ""))
        return cls(**values)


class DeadLetters:
    """Letters in arrival order, by handle; `dropped` counts letters pushed out by the limits."""

    def __init__(self, max_count: int = 10_000, max_age: float = 0.0, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_count = max_count
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.letters: dict[bytes, DeadLetter] = {}
        #: Payload bytes held.
        self.bytes = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.letters)

    def add(self, letter: DeadLetter, now: float) -> list[DeadLetter]:
        """Keep a letter; returns the letters the limits pushed out (oldest first)."""
        self.take(letter.handle)
        self.letters[letter.handle] = letter
        self.bytes += len(letter.data)
        return self.prune(now)

    def prune(self, now: float) -> list[DeadLetter]:
        gone = []
        letters = self.letters
        while letters:
            oldest = next(iter(letters.values()))
            too_many = self.max_count and len(letters) > self.max_count
            too_old = self.max_age and oldest.last_time + self.max_age <= now
            too_big = self.max_bytes and self.bytes > self.max_bytes
            if not (too_many or too_old or too_big):
                break
            gone.append(self.take(oldest.handle))  # type: ignore[arg-type]
        if gone:
            self.dropped += len(gone)
            log.warning("dropped %d dead letters past the limits (%d letters, %d bytes, %gs): %d dropped in all",
                        len(gone), self.max_count, self.max_bytes, self.max_age, self.dropped)
        return gone

    def select(self, function: bytes | None = None) -> Iterator[DeadLetter]:
        for letter in list(self.letters.values()):
            if function is None or letter.function == function:
                yield letter

    def take(self, handle: bytes) -> DeadLetter | None:
        letter = self.letters.pop(handle, None)
        if letter is not None:
            self.bytes -= len(letter.data)
        return letter
