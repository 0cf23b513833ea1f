"""The cyclic garbage collector's settings for a server process (geard; benchmarks/floor_server.py uses them too).

A server holds up to millions of long-lived, acyclic job objects, and the collector's cost is in how many objects
each of its passes examines:
- start-up objects (modules, classes, the configuration) are frozen out of every pass;
- the young generation is collected every 20,000 net allocations instead of 700, so a burst of submits costs few
  passes;
- the middle generation is collected after 5 young passes, so it examines at most about 100,000 survivors at a
  time. With Python's 10, or the 50 used before, a queue growing by a million jobs stopped the event loop for
  0.2-0.4 s each time the survivors of 50 young passes (about a million objects) were examined at once; now such a
  pass takes 20-40 ms, and the work over the whole backlog is the same;
- a full pass is considered after 1,000 middle passes: the same 5,000 young passes between two as before.
"""

from __future__ import annotations

import gc
from typing import Final

#: gc.set_threshold() of a server: young, middle and old generation (see above).
THRESHOLDS: Final = (20_000, 5, 1_000)


def tune_collector() -> None:
    """Freeze what exists now (start-up objects) out of every collection and set THRESHOLDS."""
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
