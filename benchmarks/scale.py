"""Loads beyond the four basic ones: a durable SQLite queue, many functions, many idle connections.

Each is registered in SCALE_LOADS and runs through the same load generator and checks as the basic loads.
"""

from __future__ import annotations

import loadgen
from loads import LoadDef, Row, Settings, background_rows, foreground_row, make_plan
from servers import RunningServer


def load_durable(server: RunningServer, s: Settings) -> list[Row]:
    """Background jobs into a SQLite queue (gearmand: -q libsqlite3; geartrain: --queue-type sqlite)."""
    plan = make_plan(server, "du", s, mode="background", clients=4, workers=4, inflight=0, payload=64,
                     jobs=s.durable_jobs, window=1000)
    return background_rows(server, plan, "durable",
                           f"{plan.jobs} SUBMIT_JOB_BG into the SQLite queue over 4 conns", crash=True)


def load_functions(server: RunningServer, s: Settings) -> list[Row]:
    """The foreground load spread round-robin over many functions, every worker registered for all of them."""
    plan = make_plan(server, "fn", s, mode="foreground", clients=4, workers=4, inflight=16, payload=64,
                     jobs=s.jobs, functions=s.functions)
    return [foreground_row(server, "functions", plan,
                           f"foreground over {s.functions} functions, workers CAN_DO all")]


def load_idle(server: RunningServer, s: Settings) -> list[Row]:
    """The foreground load while many other connections sit idle; RSS per idle connection."""
    plan = make_plan(server, "id", s, mode="foreground", clients=4, workers=4, inflight=16, payload=64,
                     jobs=s.jobs)
    rss0 = server.rss_kib()
    with loadgen.idle_connections(server.port, s.idle) as socks:
        rss1 = server.rss_kib()
        row = foreground_row(server, "idle-conns", plan, f"foreground with {len(socks)} idle conns open")
    if rss0 is not None and rss1 is not None and s.idle:
        per_conn = (rss1 - rss0) * 1024 / s.idle
        row.extra["bytes_per_idle_conn"] = per_conn
        row.note += f"; RSS +{per_conn:.0f} B/conn"
    return [row]


SCALE_LOADS: list[LoadDef] = [
    LoadDef("functions", load_functions, doc="foreground load over many functions"),
    LoadDef("idle", load_idle, doc="foreground load with many idle connections open"),
    LoadDef("durable", load_durable, queue="sqlite", doc="background submit and drain through SQLite"),
]
