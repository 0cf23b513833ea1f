"""How broker objects look from outside: label text, job and function records, connection kinds, ages.

Shared by the metrics collector, the JSON API and the dashboard's data, so each rule is written once.
"""

from __future__ import annotations

from typing import Any

from ..broker import QUEUED, RUNNING, SCHEDULED, SPILLED, Function, Job, Peer

PRIORITY_NAMES = ("high", "normal", "low")
STATE_NAMES = {QUEUED: "queued", RUNNING: "running", SCHEDULED: "scheduled"}
STATES = {name: state for state, name in STATE_NAMES.items()}
#: A job record's state: a job queued only in the store (spill.py), looked up by handle or unique, is queued.
RECORD_STATES = {**STATE_NAMES, SPILLED: "queued"}


def label(name: bytes) -> str:
    """A function name or unique as text: UTF-8, with bad bytes escaped (\\xNN)."""
    return name.decode("utf-8", "backslashreplace")


def oldest_waiting(function: Function, now: float) -> float:
    """Seconds the oldest queued job of the function has waited (0 when none waits).

    Each priority's deque is in queueing order; cancelled entries at its head are skipped."""
    oldest = 0.0
    for priority, queue in enumerate(function.queues):
        if not function.counts[priority]:
            continue
        for job in queue:
            if job.state == QUEUED:
                oldest = max(oldest, now - job.stamp)
                break
    return oldest


def connection_kind(peer: Peer) -> str:
    """worker (registered a function), http (an HTTP submission), admin (sent admin commands), else client."""
    if peer.abilities:
        return "worker"
    if getattr(peer.conn, "kind", None) == "http":
        return "http"
    if peer.admin:
        return "admin"
    return "client"


def job_record(job: Job, now: float, with_stats: bool) -> dict[str, Any]:
    worker = job.worker
    record: dict[str, Any] = {
        "handle": label(job.handle),
        "function": label(job.function.name),
        "unique": label(job.unique),
        "state": RECORD_STATES.get(job.state, "done"),
        "priority": PRIORITY_NAMES[job.priority],
        "background": job.background,
        "size": len(job.data),
        "retries": job.retries,
        "progress": [int(job.numerator or 0), int(job.denominator or 0)] if _numeric(job) else [0, 0],
        "clients": len(job.clients),
        "worker": {"id": worker.id, "address": worker.address, "client_id": label(worker.client_id)}
        if worker is not None else None,
        "when": job.when or None,
    }
    if with_stats:
        record["age"] = round(now - job.stamp, 3)
    return record


def _numeric(job: Job) -> bool:
    return job.numerator.isdigit() and job.denominator.isdigit()


def worker_record(peer: Any) -> dict[str, Any]:
    return {
        "id": peer.id,
        "client_id": label(peer.client_id),
        "address": peer.address,
        "subject": peer.subject,
        "tls": getattr(peer.conn, "tls", None) is not None,
        "sleeping": peer.sleeping,
        "functions": sorted(label(function.name) for function in peer.abilities),
        "running": [{"handle": label(job.handle), "function": label(job.function.name)}
                    for job in peer.running.values()],
    }
