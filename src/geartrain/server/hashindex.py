"""A compact multimap from byte keys to non-zero integers for millions of entries: 16 bytes a slot in two flat
arrays (a 64-bit hash of the key, the value), no Python object per entry, and no key kept.

find(key) gives the value of every entry whose key hashes alike; the caller confirms each one against the real
key (spill.py reads it back from the store). Several entries may share a hash, or even a key.

Open addressing with linear probing, in SHARDS tables chosen by the hash's top bits (the slot comes from its low
bits). A table doubles when 3/4 full and halves when under 1/8 full, so a resize copies one shard: a pause and a
transient extra of 1/SHARDS of the index, not of all of it. Removing an entry shifts the rest of its cluster back
(no tombstones: lookups do not slow down as entries come and go).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable

SHARD_BITS = 6
SHARDS = 1 << SHARD_BITS
MIN_SLOTS = 8
_MASK64 = (1 << 64) - 1
_SHIFT = 64 - SHARD_BITS


#: Python's hash of bytes: SipHash with a key drawn at start, so colliding keys cannot be chosen from outside.
key_hash: Callable[[bytes], int] = hash


def _zeros(typecode: str, slots: int) -> array:
    return array(typecode, bytes(8 * slots))


class _Table:
    __slots__ = ("hashes", "values", "used", "mask")

    def __init__(self, slots: int) -> None:
        self.hashes = _zeros("Q", slots)
        #: 0 marks an empty slot.
        self.values = _zeros("q", slots)
        self.used = 0
        self.mask = slots - 1

    def resized(self, slots: int) -> _Table:
        table = _Table(slots)
        hashes, values, mask = table.hashes, table.values, table.mask
        for h, value in zip(self.hashes, self.values, strict=True):
            if value:
                i = h & mask
                while values[i]:
                    i = (i + 1) & mask
                hashes[i] = h
                values[i] = value
        table.used = self.used
        return table

    def delete(self, i: int) -> None:
        """Empty slot i, moving back each later entry of the cluster that may not sit past the hole."""
        hashes, values, mask = self.hashes, self.values, self.mask
        j = i
        while True:
            j = (j + 1) & mask
            value = values[j]
            if not value:
                break
            home = hashes[j] & mask
            # The entry at j stays when its home lies cyclically in (i, j]: its probe never passes the hole.
            if (home > i and home <= j) if i <= j else (home > i or home <= j):
                continue
            hashes[i] = hashes[j]
            values[i] = value
            i = j
        hashes[i] = 0
        values[i] = 0
        self.used -= 1


class HashIndex:
    """Entries (key, value) by a 64-bit hash of the key; values are non-zero ints that fit in 64 bits."""

    __slots__ = ("hash", "tables", "count")

    def __init__(self, hash_function: Callable[[bytes], int] = key_hash) -> None:
        self.hash = hash_function
        self.tables: list[_Table | None] = [None] * SHARDS
        self.count = 0

    def __len__(self) -> int:
        return self.count

    # The methods below are written out in full, without helper calls: each runs for every spilled job.

    def add(self, key: bytes, value: int) -> None:
        if not value:
            raise ValueError("0 marks an empty slot: values must not be 0")
        h = self.hash(key) & _MASK64
        tables = self.tables
        table = tables[h >> _SHIFT]
        if table is None:
            table = tables[h >> _SHIFT] = _Table(MIN_SLOTS)
        elif (table.used + 1) * 4 > (table.mask + 1) * 3:
            table = tables[h >> _SHIFT] = table.resized((table.mask + 1) * 2)
        values = table.values
        mask = table.mask
        i = h & mask
        while values[i]:
            i = (i + 1) & mask
        table.hashes[i] = h
        values[i] = value
        table.used += 1
        self.count += 1

    def find(self, key: bytes) -> list[int]:
        """The values of the entries whose key hashes as `key` does (confirm each: the keys are not kept)."""
        h = self.hash(key) & _MASK64
        table = self.tables[h >> _SHIFT]
        if table is None:
            return []
        values = table.values
        mask = table.mask
        i = h & mask
        value = values[i]
        if not value:
            return []
        hashes = table.hashes
        found = []
        while value:
            if hashes[i] == h:
                found.append(value)
            i = (i + 1) & mask
            value = values[i]
        return found

    def remove(self, key: bytes, value: int) -> bool:
        """Remove one entry (key, value); False when there is none."""
        h = self.hash(key) & _MASK64
        shard = h >> _SHIFT
        table = self.tables[shard]
        if table is None:
            return False
        values = table.values
        hashes = table.hashes
        mask = table.mask
        i = h & mask
        while True:
            found = values[i]
            if not found:
                return False
            if found == value and hashes[i] == h:
                break
            i = (i + 1) & mask
        table.delete(i)
        self.count -= 1
        slots = mask + 1
        if not table.used:
            self.tables[shard] = None
        elif slots > MIN_SLOTS and table.used * 8 < slots:
            self.tables[shard] = table.resized(slots // 2)
        return True

    def memory(self) -> int:
        """Bytes the arrays take (benchmarks and tests)."""
        return sum(16 * (table.mask + 1) for table in self.tables if table is not None)
