"""The SQLite store's writer thread in-process: SQLiteStore.write of batches shaped as benchmarks/durable.py's
(one function, priority and time, consecutive refs, a distinct unique and 64 bytes of data per row), no server.

    python benchmarks/store_write.py [BATCHES] [ROWS] [--mode write|params|none]
    PYTHONHASHSEED=0 valgrind --tool=callgrind python benchmarks/store_write.py 60 512      # instructions
    STORE_WRITE_SRC=/tmp/build python benchmarks/store_write.py                              # another folder's code

The statements are prepared by a first batch before the measured ones. Prints us per row (CPU time). Under
callgrind, the instructions per row are (run with --mode write) - (run with --mode none), divided by BATCHES x
ROWS: `none` builds the same rows and writes nothing; `params` only builds the statements' parameters
(sqlite_rows.insert_params). benchmarks/README.md ("The writer thread's parameters") has the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

#: The code measured: this checkout's sources, or the folder STORE_WRITE_SRC names (a compiled build).
sys.path.insert(0, os.environ.get("STORE_WRITE_SRC") or str(Path(__file__).resolve().parent.parent / "src"))

from geartrain.server.store.sqlite import SQLiteStore  # noqa: E402
from geartrain.server.store.sqlite_rows import insert_params  # noqa: E402

DATA = b"x" * 64


def batch(first: int, rows: int) -> list:
    return [(first + i, b"bench", b"%d-0-%d" % (os.getpid(), first + i), 1, 0.0, b"", DATA) for i in range(rows)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("batches", type=int, nargs="?", default=200)
    p.add_argument("rows", type=int, nargs="?", default=512)
    p.add_argument("--mode", choices=("write", "params", "none"), default="write")
    opts = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteStore(Path(folder) / "q.sqlite3", sync="normal")
        store.open_engine()
        try:
            store.write(batch(1, opts.rows), [])  # prepares the statements; later refs append (SQLite's fast path)
            batches = [batch(1 + opts.rows * (n + 1), opts.rows) for n in range(opts.batches)]
            began = time.process_time()
            for rows in batches:
                if opts.mode == "write":
                    store.write(rows, [])
                elif opts.mode == "params":
                    insert_params(rows)
            spent = time.process_time() - began
        finally:
            store.close_engine()
    print(f"{opts.mode}: {opts.batches} batches of {opts.rows} rows: {spent / (opts.batches * opts.rows) * 1e6:.3f} us "
          "per row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
