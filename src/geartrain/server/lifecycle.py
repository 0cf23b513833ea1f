"""What happens to jobs around their runs: retries with backoff, dead letters, kept results, schedules, and the
`require_worker` option. The broker calls the hooks below where jobs end or fail; nothing here awaits.

Durable state (dead letters, schedules, attempt counts of retried jobs) goes through the store's
``save_state(kind, key, value)``; a store without it, or no store, keeps that state in memory only.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .broker import Broker, Job, Peer, Timer
from .cron import CronSpec
from .deadletter import DeadLetter, DeadLetters
from .policy import PolicySet, ScheduleSpec, load_policy_file
from .results import JobRecord, Results

log = logging.getLogger("geartrain.lifecycle")

__all__ = ["DEAD", "RETRY", "REQUIRE_WORKER", "Lifecycle", "Schedule"]

#: The answers of Lifecycle.retry().
RETRY = "retry"
DEAD = "dead"
#: OPTION_REQ name: from then on a submit for a function no worker has registered gets ERROR NO_WORKER.
REQUIRE_WORKER = b"require_worker"

#: Kinds of durable state.
ATTEMPTS, DEAD_LETTERS, SCHEDULES = "attempts", "dead", "schedule"


@dataclass
class Attempts:
    """The runs of a retried job so far (kept while the job lives)."""

    runs: int
    first_time: float
    last_time: float
    last_exception: bytes = b""
    #: Whether the run that is ending was counted already (by retry()).
    counted: bool = False

    def encode(self) -> bytes:
        return json.dumps({"runs": self.runs, "first": self.first_time, "last": self.last_time,
                           "exception": self.last_exception.decode("latin-1")}).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Attempts:
        values = json.loads(raw)
        return cls(values["runs"], values["first"], values["last"], values["exception"].encode("latin-1"))


@dataclass
class Schedule:
    """A repeating schedule and its next firing; source is "file" (the policy file) or "admin"."""

    spec: ScheduleSpec
    source: str
    next_run: float
    timer: Timer | None = None
    fired: int = 0

    def encode(self) -> bytes:
        spec = self.spec
        return json.dumps({
            "function": spec.function.decode("latin-1"), "cron": spec.cron.text,
            "data": spec.data.decode("latin-1"), "unique": spec.unique.decode("latin-1"),
            "priority": spec.priority, "source": self.source, "next": self.next_run,
        }).encode()

    @classmethod
    def decode(cls, name: str, raw: bytes) -> Schedule:
        values = json.loads(raw)
        spec = ScheduleSpec(name, values["function"].encode("latin-1"), CronSpec.from_text(values["cron"]),
                            values["data"].encode("latin-1"), values["unique"].encode("latin-1"),
                            values["priority"])
        return cls(spec, values["source"], values["next"])


class Lifecycle:
    """Retry policies, dead letters, kept results and schedules over one broker (sets broker.lifecycle)."""

    def __init__(
        self, broker: Broker, *, policy_file: str | None = None, result_ttl: float = 0.0,
        result_max_bytes: int = 64 * 1024, result_max_jobs: int = 1_000_000, dead_letter_max: int = 10_000,
        dead_letter_max_age: float = 0.0, dead_letter_max_bytes: int = 256 * 1024 * 1024,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.broker = broker
        broker.lifecycle = self
        self.policy_file = policy_file
        self.policies = PolicySet()
        self.dead = DeadLetters(dead_letter_max, dead_letter_max_age, dead_letter_max_bytes)
        self.results = Results(result_ttl, result_max_bytes, result_max_jobs)
        self.attempts: dict[bytes, Attempts] = {}
        broker.lifecycle_ends = self.results.enabled
        self.schedules: dict[str, Schedule] = {}
        self.rand = rand
        self.started = False
        #: Counters for metrics: runs rescheduled by a policy, jobs that became dead letters.
        self.retried = 0
        self.dead_lettered = 0
        self._file_schedules: list[ScheduleSpec] = []
        if policy_file:
            self.reload()

    @property
    def clock(self) -> Callable[[], float]:
        return self.broker.clock

    def _save(self, kind: str, key: str, value: bytes | None) -> None:
        store = self.broker.store
        if store is not None and hasattr(store, "save_state"):
            store.save_state(kind, key, value)

    # ------------------------------------------------------------------ policies

    def reload(self) -> None:
        """(Re)read the policy file: its policies replace the current ones, its schedules are synchronised."""
        if not self.policy_file:
            return
        loaded = load_policy_file(self.policy_file)
        self.policies = loaded.policies
        self._file_schedules = loaded.schedules
        if self.started:
            self._sync_file_schedules({})
        log.info("policy file %s: %d policies, %d schedules", self.policy_file, len(loaded.policies.policies),
                 len(loaded.schedules))

    # ------------------------------------------------------------------ options

    def set_option(self, peer: Peer, name: bytes) -> bool:
        if name == REQUIRE_WORKER:
            peer.require_worker = True
            return True
        return False

    # ------------------------------------------------------------------ retries and endings

    def retry(self, job: Job, outcome: str, exception: bytes | None = None, exhausted: bool = False) -> str | None:
        """A run of `job` ended in `outcome` (fail, exception, worker_lost, timeout): RETRY when it was rescheduled
        after its backoff, DEAD when it went to the dead letters, None when no policy counts it."""
        if not job.background:
            return None
        policy = self.policies.for_function(job.function.name)
        if policy is None or (outcome not in policy.retry_on and not exhausted):
            return None
        now = self.clock()
        info = self.attempts.get(job.handle)
        if info is None:
            info = self._count_attempts(job, Attempts(0, now, now))
        info.runs += 1
        info.last_time = now
        info.counted = True
        if exception is not None:
            info.last_exception = exception
        if info.runs < policy.max_attempts and not exhausted:
            old_ref = job.store_ref
            self.broker.retry_later(job, now + policy.delay(info.runs, self.rand))
            info.counted = False
            self.retried += 1
            if old_ref is not None:
                self._save(ATTEMPTS, str(old_ref), None)
            if job.store_ref is not None:
                self._save(ATTEMPTS, str(job.store_ref), info.encode())
            log.info("job %r of %r: %s on run %d of %d, runs again in %.3gs", job.handle, job.function.name,
                     outcome, info.runs, policy.max_attempts, job.when - now)
            return RETRY
        letter = DeadLetter(job.handle, job.function.name, job.unique, job.data, job.priority, info.runs,
                            info.first_time, now, info.last_exception, job.reducer)
        log.warning("job %r of %r: %s on run %d: no attempts left, kept as a dead letter", job.handle,
                    job.function.name, outcome, info.runs)
        self.dead_lettered += 1
        self._save(DEAD_LETTERS, job.handle.hex(), letter.encode())
        for gone in self.dead.add(letter, now):
            self._save(DEAD_LETTERS, gone.handle.hex(), None)
        return DEAD

    def _count_attempts(self, job: Job, info: Attempts) -> Attempts:
        """Keep the runs of a retried job: from now on every job that ends reaches ended() (Broker.lifecycle_ends),
        which forgets them."""
        self.attempts[job.handle] = info
        self.broker.lifecycle_ends = True
        return info

    def ended(self, job: Job, state: str, data: bytes = b"", exception: bytes | None = None) -> None:
        """A job ended for good (complete, failed, exception, cancelled): forget its attempts, keep its result."""
        if not self.attempts and not self.results.ttl:
            return  # the common case, kept cheap
        info = self.attempts.pop(job.handle, None)
        if info is not None and job.store_ref is not None:
            self._save(ATTEMPTS, str(job.store_ref), None)
        results = self.results
        if not results.ttl:
            return
        runs = info.runs if info is not None else 0
        if state != "cancelled" and (info is None or not info.counted):
            runs += 1
        keep = job.background and state == "complete" and len(data) <= results.max_bytes
        now = self.clock()
        results.add(JobRecord(
            job.handle, job.function.name, job.unique, job.background, job.priority, state, runs, now,
            info.first_time if info is not None else 0.0,
            exception if exception is not None else (info.last_exception if info is not None else b""),
            data if keep else None, len(data)), now)

    # ------------------------------------------------------------------ dead letters

    def requeue_dead(self, letter: DeadLetter) -> Job | None:
        """Submit a dead letter again as a new background job with fresh attempts."""
        self._save(DEAD_LETTERS, letter.handle.hex(), None)
        return self.broker.submit(None, letter.function, letter.unique, letter.data, letter.priority, True,
                                  reducer=letter.reducer)

    def purge_dead(self, letter: DeadLetter) -> None:
        self._save(DEAD_LETTERS, letter.handle.hex(), None)

    # ------------------------------------------------------------------ schedules

    def add_schedule(self, spec: ScheduleSpec, source: str = "admin", next_run: float | None = None) -> Schedule:
        """Register (or replace) a repeating schedule and arm its next firing."""
        self.cancel_schedule(spec.name)
        now = self.clock()
        if next_run is None:
            next_run = spec.cron.next_after(now) or 0.0
        schedule = self.schedules[spec.name] = Schedule(spec, source, next_run)
        self._arm(schedule)
        return schedule

    def cancel_schedule(self, name: str) -> bool:
        schedule = self.schedules.pop(name, None)
        if schedule is None:
            return False
        if schedule.timer is not None:
            schedule.timer.cancel()
        self._save(SCHEDULES, name, None)
        return True

    def _arm(self, schedule: Schedule) -> None:
        self._save(SCHEDULES, schedule.spec.name, schedule.encode())
        if schedule.next_run:
            schedule.timer = self.broker.add_timer(schedule.next_run, lambda: self._fire(schedule))

    def _fire(self, schedule: Schedule) -> None:
        spec = schedule.spec
        if self.schedules.get(spec.name) is not schedule:
            return  # cancelled or replaced
        job = self.broker.submit(None, spec.function, spec.unique, spec.data, spec.priority, True)
        schedule.fired += 1
        log.info("schedule %s submitted job %r of %r", spec.name, job.handle if job else None, spec.function)
        now = self.clock()
        schedule.next_run = spec.cron.next_after(max(now, schedule.next_run)) or 0.0
        self._arm(schedule)

    def _sync_file_schedules(self, stored: dict[str, Schedule]) -> None:
        """Make the schedules from the policy file current: new ones added, changed ones replaced, removed ones
        dropped. A stored firing of an unchanged schedule is kept (so one missed while down runs at start)."""
        declared = {spec.name: spec for spec in self._file_schedules}
        for name, schedule in list(self.schedules.items()):
            if schedule.source == "file" and declared.get(name) != schedule.spec:
                self.cancel_schedule(name)
        for name, spec in declared.items():
            current = self.schedules.get(name)
            if current is not None and current.source == "file":
                continue
            previous = stored.get(name)
            if current is not None:
                log.warning("schedule %s from the policy file replaces the one added by an admin command", name)
            next_run = previous.next_run if previous is not None and previous.spec == spec else None
            self.add_schedule(spec, "file", next_run)

    # ------------------------------------------------------------------ start

    def start(self, state: dict[str, dict[str, bytes]] | None = None) -> None:
        """Take back the state a store kept (dead letters, attempts, schedules) and arm the schedules; a firing
        that was due while the server was down runs once, now."""
        state = state or {}
        now = self.clock()
        by_ref = {job.store_ref: job for job in self.broker.jobs.values() if job.store_ref is not None}
        for key, raw in state.get(ATTEMPTS, {}).items():
            job = by_ref.get(int(key)) if key.isdigit() else None
            if job is None:
                self._save(ATTEMPTS, key, None)
            else:
                self._count_attempts(job, Attempts.decode(raw))
        letters = sorted((DeadLetter.decode(raw) for raw in state.get(DEAD_LETTERS, {}).values()),
                         key=lambda letter: letter.last_time)
        for letter in letters:
            for gone in self.dead.add(letter, now):
                self._save(DEAD_LETTERS, gone.handle.hex(), None)
        stored: dict[str, Schedule] = {}
        for name, raw in state.get(SCHEDULES, {}).items():
            try:
                stored[name] = Schedule.decode(name, raw)
            except (ValueError, KeyError) as exc:
                log.error("stored schedule %s cannot be read (%s): dropped", name, exc)
                self._save(SCHEDULES, name, None)
        for schedule in stored.values():
            if schedule.source != "file":
                self.add_schedule(schedule.spec, schedule.source, schedule.next_run)
        self._sync_file_schedules(stored)
        for name, schedule in stored.items():
            if schedule.source == "file" and name not in self.schedules:
                self._save(SCHEDULES, name, None)
        missed = [s for s in self.schedules.values() if s.next_run and s.next_run <= now]
        if missed:
            log.info("%d schedules missed a firing while the server was down: each runs once now", len(missed))
        self.started = True

    # ------------------------------------------------------------------ reading

    def settings(self) -> dict[str, Any]:
        return {
            "policy_file": self.policy_file or "-",
            "result_ttl": self.results.ttl,
            "result_max_bytes": self.results.max_bytes,
            "result_max_jobs": self.results.max_jobs,
            "dead_letter_max": self.dead.max_count,
            "dead_letter_max_age": self.dead.max_age,
            "dead_letter_max_bytes": self.dead.max_bytes,
            "dead_letters": len(self.dead),
            "dead_letters_dropped": self.dead.dropped,
            "schedules": len(self.schedules),
        }
