"""What the index of spilled uniques costs per operation (geartrain.server.hashindex against a dict), and what a
confirmation read costs on the event loop (SQLiteStore.peek_uniques, one row by primary key): with the writer
thread idle, and while it commits 512-row batches back to back.

    python benchmarks/unique_index.py              # index operations, then the reads
    python benchmarks/unique_index.py --rows 1000000
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

from backlog import uuid_like

from geartrain.server.hashindex import HashIndex
from geartrain.server.store.sqlite import _INSERT, SQLiteStore


def index_operations(count: int, rounds: int) -> None:
    keys = [uuid_like(1, i) for i in range(count)]
    misses = [uuid_like(2, i) for i in range(count)]
    for _ in range(rounds):  # interleaved: the machine's load moves both alike
        index = HashIndex()
        t0 = time.perf_counter()
        for i, key in enumerate(keys, 1):
            index.add(key, i)
        t1 = time.perf_counter()
        for key in misses:
            index.find(key)
        t2 = time.perf_counter()
        for i, key in enumerate(keys, 1):
            index.remove(key, i)
        t3 = time.perf_counter()
        table: dict[bytes, int] = {}
        for i, key in enumerate(keys, 1):
            table[key] = i
        t4 = time.perf_counter()
        for key in misses:
            table.get(key)
        t5 = time.perf_counter()
        for key in keys:
            del table[key]
        t6 = time.perf_counter()
        us = 1e6 / count
        print(f"HashIndex add {(t1 - t0) * us:.2f} us, miss {(t2 - t1) * us:.2f} us, remove {(t3 - t2) * us:.2f} us;"
              f"  dict {(t4 - t3) * us:.2f}, {(t5 - t4) * us:.2f}, {(t6 - t5) * us:.2f} us")


def reads(rows: int, seconds: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="unique-index-"))
    store = SQLiteStore(work / "q.db")
    try:
        store.open_engine()
        conn = store.conn
        assert conn is not None
        conn.execute("BEGIN")
        conn.executemany(_INSERT, ((i, b"work", uuid_like(1, i), 1, 0.0, b"", b"x" * 64) for i in range(1, rows + 1)))
        conn.execute("COMMIT")
        refs = [random.randrange(1, rows + 1) for _ in range(100_000)]
        began = time.perf_counter()
        for ref in refs:
            store.peek_uniques([(ref, ref)])
        print(f"peek_uniques, writer idle: {(time.perf_counter() - began) / len(refs) * 1e6:.1f} us a read")
        stop = False
        commits = 0

        def writer() -> None:
            nonlocal commits
            ref = rows + 1
            while not stop:
                store.write([(ref + i, b"work", uuid_like(3, ref + i), 1, 0.0, b"", b"x" * 64) for i in range(512)],
                            [])
                ref += 512
                commits += 1

        thread = threading.Thread(target=writer)
        thread.start()
        waits = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ref = random.randrange(1, rows + 1)
            began = time.perf_counter()
            store.peek_uniques([(ref, ref)])
            waits.append(time.perf_counter() - began)
            time.sleep(0.0005)
        stop = True
        thread.join()
        waits.sort()

        def at(q: float) -> float:
            return waits[int(q * (len(waits) - 1))] * 1e6

        print(f"peek_uniques while {commits} commits ran back to back: median {at(0.5):.0f} us, p99 {at(0.99):.0f} "
              f"us, max {at(1):.0f} us ({len(waits)} reads)")
    finally:
        store.close_engine()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    index_operations(args.keys, args.rounds)
    reads(args.rows, args.seconds)


if __name__ == "__main__":
    main()
