"""What the counters behind /metrics cost the broker per job, in-process and without sockets.

    python benchmarks/stats_cost.py [JOBS] [--pollute KIB]

The broker's own CPU per job (a background submit, then a grab and a WORK_COMPLETE) with Broker.stats on and
off, in interleaved rounds, the fastest of 15 (the round least disturbed by
the rest of the machine, as timeit reports). run.py --metrics measures the same thing on whole servers, where
the difference is a few percent of a figure that moves by more than that on a busy machine; this is the
precise part of the answer.

--pollute KIB copies KIB KiB between any two broker calls (outside the timing), as the other processes of a shared
machine and the server's own system calls do between two packets: the caches the counters' objects were in are
then cold, and what the counters cost grows with what they touch, not with their instructions (at 4096 KiB the
broker's path runs ~15x slower with and without counters, and their share stays about the same).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable

from geartrain.protocol import constants as C
from geartrain.server.broker import Broker

ROUNDS = 15


def run(counting: bool, jobs: int, pollute: Callable[[], float]) -> tuple[float, float]:
    """(ns per submit, ns per grab + complete) of one round; pollute() runs between calls and returns its own
    seconds, which are taken out."""
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
        aside = 0.0
        began = time.perf_counter()
        for _ in range(jobs):
            aside += pollute()
            submit(client, (b"f", b"", b"data"))
        submitted = time.perf_counter()
        submitting, aside = submitted - began - aside, 0.0
        client.out.clear()
        broker.dirty.clear()
        for _ in range(jobs):
            aside += pollute()
            grab(worker, ())
            aside += pollute()
            complete(worker, (next(iter(worker.running)), b"result"))
            worker.out.clear()
        ended = time.perf_counter()
    finally:
        gc.enable()
    return submitting / jobs * 1e9, (ended - submitted - aside) / jobs * 1e9


def polluter(kib: int) -> Callable[[], float]:
    """A function that copies kib KiB and returns the seconds it took (nothing and 0.0 for 0 KiB)."""
    if not kib:
        return lambda: 0.0
    target, source = bytearray(kib * 1024), bytes(kib * 1024)
    clock = time.perf_counter

    def pollute() -> float:
        began = clock()
        target[:] = source
        return clock() - began

    return pollute


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jobs", type=int, nargs="?", default=30_000)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"rounds on and off (default {ROUNDS})")
    parser.add_argument("--pollute", type=int, default=0, metavar="KIB",
                        help="KiB copied between any two broker calls, outside the timing (default 0)")
    args = parser.parse_args(argv)
    pollute = polluter(args.pollute)
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for counting in (False, True):
            results[counting].append(run(counting, args.jobs, pollute))
    best = {counting: (min(r[0] for r in rows), min(r[1] for r in rows)) for counting, rows in results.items()}
    on, off = best[True], best[False]
    print(f"broker ns/job, fastest of {args.rounds} rounds of {args.jobs} jobs, "
          f"{args.pollute} KiB copied between calls:")
    for what, a, b in (("submit (background)", on[0], off[0]), ("grab + WORK_COMPLETE", on[1], off[1]),
                       ("whole job", sum(on), sum(off))):
        print(f"  {what:<21} on {a:7.0f}   off {b:7.0f}   counters {a - b:+5.0f} ({100 * (a - b) / b:+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
