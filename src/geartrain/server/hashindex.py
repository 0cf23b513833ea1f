"""A compact multimap from byte keys to non-zero integers for millions of entries: 12 bytes a slot in two flat
arrays (a FP_BITS-bit fingerprint of the key's hash, the value), no Python object per entry, and no key kept.

find(key) gives the value of every entry whose fingerprint matches; the caller confirms each one against the real
key (spill.py reads it back from the store). Several entries may share a fingerprint, or even a key. A key that
is not there matches some other entry at a rate of about (table load) x 2**-(FP_BITS - log2 slots) per lookup:
1 lookup in ~7,000 with 10M entries (2**18 slots a shard), 1 in ~100 with a thousand million.

Open addressing with linear probing, in SHARDS tables chosen by SHARD_BITS other bits of the hash. A slot is the
fingerprint's low bits, so a table is resized from its own arrays; fingerprints of 30 bits take 4 bytes where a
whole 64-bit hash took 8 (and are one-digit ints for CPython: operations were ~5% faster). A table doubles when
a share of it between FULL_FIRST and FULL_LAST is used (by shard number) and halves when under 1/8 full, so a
resize copies one shard: a pause (23 ms for a shard of 98,000 entries, 13:32Z) and a transient extra of 1/SHARDS
of the index, not of all of it. The shards of an index fill alike, so with one share they would all double
within a few thousand entries of each other, 64 pauses in a row; with the shares spread, their doublings spread
over a seventh of the count. Removing an entry shifts the rest of its cluster back (no tombstones: lookups do
not slow down as entries come and go).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable
from typing import Final

#: Final: compiled, the constants below are inlined (a plain module global is a dict lookup at each use).
FP_BITS: Final = 30
SHARD_BITS: Final = 6
SHARDS: Final = 1 << SHARD_BITS
MIN_SLOTS: Final = 8
#: The share of its slots at which shard 0 doubles, and the last shard; the others' lie evenly between.
FULL_FIRST: Final = 0.70
FULL_LAST: Final = 0.80
_FP_MASK: Final = (1 << FP_BITS) - 1
_HASH_MASK: Final = (1 << (FP_BITS + SHARD_BITS)) - 1

#: Python's hash of bytes: SipHash with a key drawn at start, so colliding keys cannot be chosen from outside.
key_hash: Callable[[bytes], int] = hash


class _Table:
    __slots__ = ("prints", "values", "used", "mask", "share", "full")

    def __init__(self, slots: int, share: float) -> None:
        #: 0 marks an empty slot (a fingerprint is never 0): a probe reads only this array until a print matches.
        self.prints = array("i", bytes(4 * slots))
        self.values = array("q", bytes(8 * slots))
        self.used = 0
        self.mask = slots - 1
        self.share = share
        #: Entries at which the table doubles.
        self.full = int(slots * share)

    def resized(self, slots: int) -> _Table:
        # Rebuilt in lists and packed back at once: compiled, a list's items are read and written natively where
        # each item of an array goes through Python's item protocol (and array(typecode, list) parses each item).
        table = _Table(0, self.share)
        mask = slots - 1
        prints = [0] * slots
        values = [0] * slots
        old_values = self.values.tolist()
        old_prints = self.prints.tolist()
        for k in range(len(old_prints)):
            fp = old_prints[k]
            if fp:
                i = fp & mask
                while prints[i]:
                    i = (i + 1) & mask
                prints[i] = fp
                values[i] = old_values[k]
        table.prints = array("i", struct.pack(f"{slots}i", *prints))
        table.values = array("q", struct.pack(f"{slots}q", *values))
        table.mask = mask
        table.full = int(slots * self.share)
        table.used = self.used
        return table

    def delete(self, i: int) -> None:
        """Empty slot i, moving back each later entry of the cluster that may not sit past the hole."""
        prints, values, mask = self.prints, self.values, self.mask
        j = i
        while True:
            j = (j + 1) & mask
            fp = prints[j]
            if not fp:
                break
            home = fp & mask
            # The entry at j stays when its home lies cyclically in (i, j]: its probe never passes the hole.
            if (home > i and home <= j) if i <= j else (home > i or home <= j):
                continue
            prints[i] = fp
            values[i] = values[j]
            i = j
        prints[i] = 0
        values[i] = 0
        self.used -= 1


class HashIndex:
    """Entries (key, value) by a fingerprint of the key's hash; values are ints that fit in 64 bits."""

    __slots__ = ("hash", "tables")

    def __init__(self, hash_function: Callable[[bytes], int] = key_hash) -> None:
        self.hash = hash_function
        self.tables: list[_Table | None] = [None] * SHARDS

    def __len__(self) -> int:
        return sum(table.used for table in self.tables if table is not None)

    # The methods below are written out in full, without helper calls: each runs for every spilled job.

    def add(self, key: bytes, value: int) -> None:
        h = self.hash(key) & _HASH_MASK
        shard = h >> FP_BITS
        fp = h & _FP_MASK or 1
        tables = self.tables
        table = tables[shard]
        if table is None:
            table = tables[shard] = _Table(MIN_SLOTS, FULL_FIRST + (FULL_LAST - FULL_FIRST) * shard / (SHARDS - 1))
        elif table.used >= table.full:
            table = tables[shard] = table.resized((table.mask + 1) * 2)
        prints = table.prints
        mask = table.mask
        i = fp & mask
        while prints[i]:
            i = (i + 1) & mask
        prints[i] = fp
        table.values[i] = value
        table.used += 1

    def find(self, key: bytes) -> list[int]:
        """The values of the entries whose fingerprint is the key's (confirm each: the keys are not kept)."""
        h = self.hash(key) & _HASH_MASK
        table = self.tables[h >> FP_BITS]
        if table is None:
            return []
        prints = table.prints
        mask = table.mask
        fp = h & _FP_MASK or 1
        i = fp & mask
        print_ = prints[i]
        if not print_:
            return []
        found = []
        while print_:
            if print_ == fp:
                found.append(table.values[i])
            i = (i + 1) & mask
            print_ = prints[i]
        return found

    def remove(self, key: bytes, value: int) -> bool:
        """Remove one entry (key, value); False when there is none."""
        h = self.hash(key) & _HASH_MASK
        shard = h >> FP_BITS
        table = self.tables[shard]
        if table is None:
            return False
        values = table.values
        prints = table.prints
        mask = table.mask
        fp = h & _FP_MASK or 1
        i = fp & mask
        while True:
            print_ = prints[i]
            if not print_:
                return False
            if print_ == fp and values[i] == value:
                break
            i = (i + 1) & mask
        table.delete(i)
        slots = mask + 1
        if not table.used:
            self.tables[shard] = None
        elif slots > MIN_SLOTS and table.used * 8 < slots:
            self.tables[shard] = table.resized(slots // 2)
        return True

    def memory(self) -> int:
        """Bytes the arrays take (benchmarks and tests)."""
        return sum(12 * (table.mask + 1) for table in self.tables if table is not None)
