"""The JSON API: /api/status, /api/workers, /api/jobs (filters, paging), one job by handle or unique, cancel."""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import Any

from aiohttp import web

from ... import __version__
from ..broker import RUNNING, Function
from .security import request_subject
from .views import PRIORITY_NAMES, STATES, connection_kind, job_record, label, oldest_waiting, worker_record

log = logging.getLogger("geartrain.http")

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
SORTS = ("name", "waiting", "running", "workers", "oldest", "rate")


class Rates:
    """Throughput from successive samples of the finished counters, taken when the API is read (at most once a
    second), so nothing runs while nobody looks."""

    def __init__(self) -> None:
        self.previous: tuple[float, dict[bytes, int]] | None = None
        self.current: tuple[float, dict[bytes, int]] | None = None
        #: (time, jobs finished per second, jobs submitted per second) for the dashboard's history.
        self.history: deque[tuple[float, float, float]] = deque(maxlen=150)
        self._submitted = 0

    def sample(self, stats: Any, now: float) -> None:
        if stats is None or (self.current is not None and now - self.current[0] < 1.0):
            return
        totals = {name: fs.finished_total for name, fs in stats.functions.items()}
        submitted = sum(sum(fs.submitted) for fs in stats.functions.values())
        if self.current is not None:
            dt = now - self.current[0]
            finished = (sum(totals.values()) - sum(self.current[1].values())) / dt
            self.history.append((round(now, 3), round(finished, 2), round((submitted - self._submitted) / dt, 2)))
        self.previous, self.current, self._submitted = self.current, (now, totals), submitted

    def rate(self, name: bytes) -> float:
        if self.previous is None or self.current is None:
            return 0.0
        dt = self.current[0] - self.previous[0]
        return round((self.current[1].get(name, 0) - self.previous[1].get(name, 0)) / dt, 2)


def _int(request: web.Request, key: str, default: int, low: int = 0, high: int = 1 << 31) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{key}={raw[:20]!r} is not an integer\n") from None
    if not low <= value <= high:
        raise web.HTTPBadRequest(text=f"{key} must be between {low} and {high}\n")
    return value


class Api:
    """Read-only views over the broker, and cancel."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.rates = Rates()
        self.started = time.time()

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/api/status", self.status),
            web.get("/api/workers", self.workers),
            web.get("/api/jobs", self.jobs),
            web.get("/api/jobs/{handle}", self.job),
            web.delete("/api/jobs/{handle}", self.cancel),
            web.get("/api/unique/{unique}", self.job),
            web.delete("/api/unique/{unique}", self.cancel),
            web.get("/api/failures", self.failures),
        ]

    # ------------------------------------------------------------------ status

    def _function_record(self, name: bytes, function: Function | None, now: float) -> dict[str, Any]:
        stats = self.server.broker.stats
        fstats = stats.functions.get(name) if stats is not None else None
        counts = [function.waiting(p) for p in range(3)] if function is not None else (0, 0, 0)
        return {
            "name": label(name),
            "waiting": dict(zip(PRIORITY_NAMES, counts, strict=True)),
            "queued": sum(counts),
            "running": function.running if function is not None else 0,
            "workers": len(function.workers) if function is not None else 0,
            "oldest": round(oldest_waiting(function, now), 3) if function is not None and stats is not None
            else 0.0,
            "submitted": {"foreground": fstats.submitted[0], "background": fstats.submitted[1]}
            if fstats is not None else None,
            "finished": dict(fstats.finished) if fstats is not None else None,
            "retries": fstats.retries if fstats is not None else 0,
            "rate": self.rates.rate(name),
        }

    async def status(self, request: web.Request) -> web.Response:
        """Server totals and one page of functions: ?q= (substring), sort=, offset=, limit=."""
        server = self.server
        broker = server.broker
        stats = broker.stats
        now = broker.clock()
        self.rates.sample(stats, now)
        query = request.query.get("q", "").lower()
        sort = request.query.get("sort", "name")
        if sort not in SORTS:
            raise web.HTTPBadRequest(text=f"sort must be one of {', '.join(SORTS)}\n")
        offset = _int(request, "offset", 0)
        limit = _int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        names = set(broker.functions)
        if stats is not None:
            names.update(stats.functions)
        if query:
            names = {name for name in names if query in label(name).lower()}
        functions = broker.functions
        if sort == "name":
            page = sorted(names)[offset:offset + limit]
            records = [self._function_record(name, functions.get(name), now) for name in page]
        else:
            records = [self._function_record(name, functions.get(name), now) for name in names]
            records.sort(key=lambda r: (-(r["queued"] if sort == "waiting" else r[sort]), r["name"]))
            records = records[offset:offset + limit]
        kinds: dict[str, int] = {"client": 0, "worker": 0, "admin": 0, "http": 0}
        for peer in list(broker.peers.values()):
            kinds[connection_kind(peer)] += 1
        totals: dict[str, Any] = {}
        if stats is not None:
            totals = {
                "submitted": sum(sum(fs.submitted) for fs in stats.functions.values()),
                "finished": {result: sum(fs.finished[result] for fs in stats.functions.values())
                             for result in ("complete", "fail", "exception")},
                "rejected": dict(stats.rejected),
            }
        body = {
            "server": {
                "version": __version__,
                "pid": os.getpid(),
                "uptime": round(time.time() - self.started, 1),
                "ready": bool(getattr(server, "ready", False)),
                "jobs": broker.job_count(),
                "queued": sum(f.queued for f in functions.values()),
                "running": sum(f.running for f in functions.values()),
                "connections": kinds,
                "counting": stats is not None,
                "totals": totals,
                "throughput": list(self.rates.history),
            },
            "functions": records,
            "total": len(names),
            "offset": offset,
            "limit": limit,
        }
        return web.json_response(body)

    async def workers(self, request: web.Request) -> web.Response:
        """Connections that registered functions: ?q= (function substring), offset=, limit=."""
        broker = self.server.broker
        query = request.query.get("q", "").lower()
        offset = _int(request, "offset", 0)
        limit = _int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        peers = [peer for peer in list(broker.peers.values()) if peer.abilities]
        if query:
            peers = [p for p in peers if any(query in label(f.name).lower() for f in p.abilities)]
        peers.sort(key=lambda p: p.id)
        return web.json_response({"workers": [worker_record(p) for p in peers[offset:offset + limit]],
                                  "total": len(peers), "offset": offset, "limit": limit})

    async def failures(self, request: web.Request) -> web.Response:
        stats = self.server.broker.stats
        failures = list(stats.failures) if stats is not None else []
        return web.json_response({"failures": [
            {"when": round(f.when, 3), "handle": label(f.handle), "function": label(f.function),
             "result": f.result, "detail": label(f.detail)} for f in reversed(failures)]})

    # ------------------------------------------------------------------ jobs

    async def jobs(self, request: web.Request) -> web.Response:
        """Jobs: ?function= (exact name), state=queued|running|scheduled, offset=, limit=. `more` says whether
        another page follows (counting every match would walk every job)."""
        broker = self.server.broker
        state_name = request.query.get("state")
        if state_name is not None and state_name not in STATES:
            raise web.HTTPBadRequest(text=f"state must be one of {', '.join(STATES)}\n")
        state = STATES.get(state_name) if state_name else None
        function = request.query.get("function")
        wanted = broker.functions.get(function.encode("utf-8", "surrogateescape")) if function else None
        offset = _int(request, "offset", 0)
        limit = _int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        page, skipped, more = [], 0, False
        if function is None or wanted is not None:
            for job in list(broker.jobs.values()):
                if (wanted is not None and job.function is not wanted) or (state is not None and job.state != state):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                if len(page) == limit:
                    more = True
                    break
                page.append(job)
        now = broker.clock()
        counting = broker.stats is not None
        return web.json_response({"jobs": [job_record(job, now, counting) for job in page], "offset": offset,
                                  "limit": limit, "more": more})

    def _find(self, request: web.Request) -> Any:
        broker = self.server.broker
        if "handle" in request.match_info:
            key = request.match_info["handle"]
            job = broker.find(key.encode("utf-8", "surrogateescape"))  # a job queued only in the store too
            what = f"job {key}"
        else:
            key = request.match_info["unique"]
            unique = key.encode("utf-8", "surrogateescape")
            job = broker.by_unique.get(unique)
            if job is None and broker.spill is not None:
                job = broker.spill.with_unique(unique)
            what = f"job with unique {key}"
        if job is None:
            raise web.HTTPNotFound(text=f"no {what}: it finished, was cancelled, or never existed\n")
        return job

    async def job(self, request: web.Request) -> web.Response:
        broker = self.server.broker
        return web.json_response(job_record(self._find(request), broker.clock(), broker.stats is not None))

    async def cancel(self, request: web.Request) -> web.Response:
        """Cancel a queued job, as `cancel job`; with an ACL the client certificate's subject needs grant."""
        server = self.server
        broker = server.broker
        job = self._find(request)
        acl = broker.acl
        subject = request_subject(request)
        if acl is not None and not acl.canGrant(subject):
            if broker.stats is not None:
                broker.stats.deny("cancel")
            log.info("HTTP cancel of %r by %s refused by the ACL", job.handle, subject)
            raise web.HTTPForbidden(text=f"{subject} may not cancel jobs (the ACL grants it no grant)\n")
        if job.state == RUNNING:
            raise web.HTTPConflict(text=f"job {label(job.handle)} is running: only queued jobs can be cancelled\n")
        broker.cancel(job.handle)
        server.state.schedule_flush()
        log.info("cancelled job %r over HTTP (subject %s)", job.handle, subject)
        return web.json_response({"cancelled": label(job.handle)})
