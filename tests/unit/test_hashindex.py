"""HashIndex: the compact key -> value multimap that indexes the uniques of spilled jobs (hashindex.py)."""

from __future__ import annotations

import random

import pytest

from geartrain.server.hashindex import FP_BITS, FULL_FIRST, FULL_LAST, MIN_SLOTS, SHARD_BITS, SHARDS, HashIndex


def check_against(index: HashIndex, model: dict[bytes, set[int]]) -> None:
    assert len(index) == sum(len(values) for values in model.values())
    for key, values in model.items():
        assert set(index.find(key)) >= values


def test_add_find_remove():
    index = HashIndex()
    assert index.find(b"a") == [] and not index.remove(b"a", 1)
    index.add(b"a", 1)
    index.add(b"b", -2)  # negative values are kept as they are
    assert index.find(b"a") == [1] and index.find(b"b") == [-2] and index.find(b"c") == []
    assert not index.remove(b"a", 2)  # (key, value) must both match
    assert index.remove(b"a", 1) and index.find(b"a") == [] and len(index) == 1
    index.add(b"x", 0)  # any value: an empty slot is marked by its fingerprint, never 0
    assert index.find(b"x") == [0] and index.remove(b"x", 0) and index.find(b"x") == []


def test_a_hash_whose_fingerprint_bits_are_zero_is_kept():
    # Fingerprint 0 marks an empty slot: such a key gets fingerprint 1 and is found (with any key of print 1).
    index = HashIndex(lambda key: (3 << FP_BITS) if key == b"zero" else (3 << FP_BITS) | 1)
    index.add(b"zero", 1)
    index.add(b"one", 2)
    assert sorted(index.find(b"zero")) == [1, 2] and len(index) == 2
    assert index.remove(b"zero", 1) and index.find(b"zero") == [2]


def test_one_key_may_have_several_values():
    index = HashIndex()
    index.add(b"k", 5)
    index.add(b"k", 7)
    assert sorted(index.find(b"k")) == [5, 7]
    assert index.remove(b"k", 5) and index.find(b"k") == [7]


@pytest.mark.parametrize("hash_function", [lambda key: 12345, lambda key: len(key), lambda key: key[0] << FP_BITS])
def test_colliding_hashes_keep_every_entry_findable_through_growth_and_removal(hash_function):
    # Every key (or many) hashes alike: one cluster in one table; find() returns all the alike ones (the caller
    # confirms), removal shifts the cluster back without losing anyone.
    index = HashIndex(hash_function)
    model: dict[bytes, set[int]] = {}
    rng = random.Random(1)
    for n in range(1, 600):
        key = b"key-%d" % rng.randrange(300)
        index.add(key, n)
        model.setdefault(key, set()).add(n)
        if n % 3 == 0:
            victim = rng.choice(sorted(model))
            value = model[victim].pop()
            assert index.remove(victim, value)
            if not model[victim]:
                del model[victim]
    check_against(index, model)
    for key, values in model.items():
        found = index.find(key)
        assert values <= set(found)
        assert all(hash_function(other) == hash_function(key) for other, vs in model.items()
                   for v in vs if v in found)


def test_entries_in_one_cluster_with_other_fingerprints_are_not_found():
    # Same shard and home slot, fingerprints that differ above the slot bits: probed past, never returned.
    index = HashIndex(lambda key: 5 + (len(key) << 20))
    index.add(b"a", 1)
    index.add(b"bb", 2)
    index.add(b"a", 3)
    assert sorted(index.find(b"a")) == [1, 3] and index.find(b"bb") == [2] and index.find(b"ccc") == []
    assert index.remove(b"a", 1) and index.find(b"bb") == [2] and index.find(b"a") == [3]


def test_grows_by_doubling_and_shrinks_when_emptied():
    # A hash without collisions among these keys (an odd multiplier is one-to-one modulo 2**36, the bits used), so
    # each key finds exactly its own value. With Python's hash, drawn anew by each process, two of the 50,000 keys
    # share shard and fingerprint in about 1 run of 57 (7 of 400 PYTHONHASHSEED values): find() rightly returns
    # both values, for the caller to confirm.
    index = HashIndex(lambda key: int(key) * 2_654_435_761 % (1 << (FP_BITS + SHARD_BITS)))
    keys = [b"%032d" % n for n in range(50_000)]
    for n, key in enumerate(keys, 1):
        index.add(key, n)
    assert len(index) == 50_000
    big = index.memory()
    assert big <= 12 * 4 * 50_000  # at least 1/4 full (3/4 at most before doubling)
    assert all(index.find(key) == [n] for n, key in enumerate(keys, 1))
    for n, key in enumerate(keys[:49_000], 1):
        assert index.remove(key, n)
    assert index.memory() < big / 4
    assert all(index.find(key) == [n] for n, key in enumerate(keys, 1) if n > 49_000)
    for n, key in enumerate(keys[49_000:], 49_001):
        assert index.remove(key, n)
    assert len(index) == 0 and index.memory() == 0


def test_random_operations_match_a_dict():
    rng = random.Random(7)
    index = HashIndex(lambda key: hash(key) & 0xFF)  # 256 hashes: many collisions across shards and clusters
    model: dict[bytes, set[int]] = {}
    value = 0
    for _ in range(20_000):
        if model and rng.random() < 0.45:
            key = rng.choice(list(model))
            v = model[key].pop()
            if not model[key]:
                del model[key]
            assert index.remove(key, v)
        else:
            value += 1
            key = b"%d" % rng.randrange(5_000)
            index.add(key, value if value % 2 else -value)
            model.setdefault(key, set()).add(value if value % 2 else -value)
    check_against(index, model)


def test_a_small_index_stays_small():
    index = HashIndex()
    index.add(b"only", 1)
    assert index.memory() == 12 * MIN_SLOTS and SHARDS * 12 * MIN_SLOTS < 10_000


def test_the_shards_of_an_evenly_filled_index_double_at_different_counts():
    # Each shard doubles (a pause: one shard copied) at its own share of its slots, so the shards of an index,
    # which fill alike, do not all double within a few entries of each other.
    # Shard, then a fingerprint of its own (never 0, which is kept for empty slots).
    index = HashIndex(lambda key: int(key) % SHARDS << FP_BITS | (int(key) // SHARDS + 1))
    slots = 256
    per_shard = int(slots * (FULL_FIRST + FULL_LAST) / 2)  # past the first shards' share, short of the last ones'
    for n in range(per_shard * SHARDS):
        index.add(b"%d" % n, n + 1)
    sizes = [table.mask + 1 for table in index.tables if table is not None]
    assert len(sizes) == SHARDS
    assert sizes.count(slots) >= SHARDS // 3 and sizes.count(slots * 2) >= SHARDS // 3
    assert all(index.find(b"%d" % n) == [n + 1] for n in range(0, per_shard * SHARDS, 97))
