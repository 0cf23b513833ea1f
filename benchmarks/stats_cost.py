"""What the counters behind /metrics cost the broker per job, in-process and without sockets.

    python benchmarks/stats_cost.py [JOBS]

The broker's own CPU per job (a background submit, then a grab and a WORK_COMPLETE) with Broker.stats on and
off, in interleaved rounds, the fastest of 15 (the round least disturbed by
the rest of the machine, as timeit reports). run.py --metrics measures the same thing on whole servers, where
the difference is a few percent of a figure that moves by more than that on a busy machine; this is the
precise part of the answer.
"""

from __future__ import annotations

import gc
import sys
import time

from geartrain.protocol import constants as C
from geartrain.server.broker import Broker

ROUNDS = 15


def run(counting: bool, jobs: int) -> tuple[float, float]:
    """(ns per submit, ns per grab + complete) of one round."""
    broker = Broker(b"H:bench")
    if not counting:
        broker.stats = None
    client, worker = broker.connect(1), broker.connect(2)
    broker.handle(worker, C.CAN_DO, (b"f",))
    submit = broker.handlers[C.SUBMIT_JOB_BG]
    grab = broker.handlers[C.GRAB_JOB]
    complete = broker.handlers[C.WORK_COMPLETE]
    gc.collect()
    gc.disable()
    try:
        began = time.perf_counter()
        for _ in range(jobs):
            submit(client, (b"f", b"", b"data"))
        submitted = time.perf_counter()
        client.out.clear()
        broker.dirty.clear()
        for _ in range(jobs):
            grab(worker, ())
            complete(worker, (next(iter(worker.running)), b"result"))
            worker.out.clear()
        ended = time.perf_counter()
    finally:
        gc.enable()
    return (submitted - began) / jobs * 1e9, (ended - submitted) / jobs * 1e9


def main(argv: list[str]) -> int:
    jobs = int(argv[1]) if len(argv) > 1 else 30_000
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(ROUNDS):
        for counting in (False, True):
            results[counting].append(run(counting, jobs))
    best = {counting: (min(r[0] for r in rows), min(r[1] for r in rows)) for counting, rows in results.items()}
    on, off = best[True], best[False]
    print(f"broker ns/job, fastest of {ROUNDS} rounds of {jobs} jobs:")
    print(f"  submit (background)   on {on[0]:7.0f}   off {off[0]:7.0f}   counters {on[0] - off[0]:+5.0f}")
    print(f"  grab + WORK_COMPLETE  on {on[1]:7.0f}   off {off[1]:7.0f}   counters {on[1] - off[1]:+5.0f}")
    print(f"  whole job             counters cost {sum(on) - sum(off):+.0f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
