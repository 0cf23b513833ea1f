"""The parameters of the SQLite store's multi-row inserts, built on its writer thread for every stored job.

Compiled (geartrain.compiled.MODULES): the writer thread holds the GIL while it builds them, so their cost is taken
from the event loop's core; sqlite.py prepares the statements they are bound to (SQLiteStore._statement).
"""

from __future__ import annotations

from . import Row


def insert_params(rows: list[Row]) -> tuple[str, list[object]]:
    """The kind of multi-row insert for these rows ("insert", or "uniform": see SQLiteStore._statement) and its
    parameters, in one pass over the rows.

    Blobs are bound as bytearray: the sqlite3 module binds bytearray directly but passes every bytes object
    through its adapter registry first (Python 3.11, callgrind, a batch of 512 rows: 4.3k instructions more a row
    with the uniques and data bound as bytes). `bytearray(value[:])` is how mypyc copies bytes into a bytearray
    without calling the type (1.0k instructions a row for the whole batch against 3.2k interpreted; interpreted
    it costs a slice more). Rows submitted back to back share their function, priority, time and reducer and
    have consecutive refs: those are bound once per statement ("uniform"), the rest once per row (function names
    and reducers as one bytearray per distinct value)."""
    ref, name, _, priority, when, reducer, _ = rows[0]
    count = len(rows)
    uniform = rows[count - 1][0] - ref == count - 1  # refs ascend: consecutive
    if uniform:
        for row in rows:
            if row[1] != name or row[3] != priority or row[4] != when or row[5] != reducer:
                uniform = False
                break
    params: list[object]
    if uniform:
        params = [bytearray(name[:]), priority, when, bytearray(reducer[:]), ref]
        for row in rows:
            params.append(bytearray(row[2][:]))
            params.append(bytearray(row[6][:]))
        return "uniform", params
    copies: dict[bytes, bytearray] = {}
    params = []
    for row in rows:
        params.append(row[0])
        params.append(_copy(copies, row[1]))
        params.append(bytearray(row[2][:]))
        params.append(row[3])
        params.append(row[4])
        params.append(_copy(copies, row[5]))
        params.append(bytearray(row[6][:]))
    return "insert", params


def _copy(copies: dict[bytes, bytearray], value: bytes) -> bytearray:
    """value as a bytearray, one copy per distinct value (function names and reducers repeat within a batch)."""
    copy = copies.get(value)
    if copy is None:
        copy = copies[value] = bytearray(value[:])
    return copy


def split_large(rows: list[Row], size: int) -> tuple[list[Row], list[Row]]:
    """The rows whose data is shorter than `size` (rows itself when all are), and the others."""
    for row in rows:
        if len(row[6]) >= size:
            break
    else:
        return rows, []
    return [row for row in rows if len(row[6]) < size], [row for row in rows if len(row[6]) >= size]
