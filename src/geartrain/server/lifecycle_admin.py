"""The admin commands of lifecycle.py: show job, show failed, retry/purge failed, policy, schedule, settings.

Answers follow gearmand's style: tab-separated fields, a listing closed by a line holding ".", "OK" or "OK N" for
a change, and "ERR CODE reason" for bad input.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from ..protocol.constants import PRIORITY_NAMES
from .admin import Admin, err, listing, printable
from .broker import QUEUED, RUNNING, SCHEDULED, SPILLED, Job, Peer
from .cron import CronError, CronSpec
from .deadletter import DeadLetter
from .lifecycle import Lifecycle
from .policy import PolicyError, ScheduleSpec
from .results import JobRecord

log = logging.getLogger("geartrain.admin")

__all__ = ["LifecycleCommands"]

_STATES = {QUEUED: "queued", RUNNING: "running", SCHEDULED: "scheduled", SPILLED: "queued"}


def _time(value: float) -> bytes:
    return b"%.3f" % value if value else b"-"


def _text(value: Any) -> bytes:
    if isinstance(value, bytes):
        return printable(value)
    if isinstance(value, float):
        return f"{value:g}".encode()
    return printable(str(value).encode("utf-8", "replace"))


def _fields(pairs: list[tuple[str, Any]]) -> bytes:
    return listing([name.encode() + b"\t" + _text(value) for name, value in pairs])


class LifecycleCommands:
    """The admin commands over one Lifecycle; `acl` checks come from the broker's ACL when one is set."""

    def __init__(self, lifecycle: Lifecycle, server: Any = None) -> None:
        self.lifecycle = lifecycle
        self.broker = lifecycle.broker
        self.server = server

    def install(self, admin: Admin) -> None:
        """Add these commands to an Admin (show job and show failed through its `show`)."""
        commands: dict[bytes, Callable[[Peer, list[bytes]], bytes]] = {
            b"retry": self.retry, b"purge": self.purge, b"policy": self.policy, b"schedule": self.schedule,
            b"settings": self.settings,
        }
        admin.commands.update(commands)
        admin.show_commands.update({b"job": self.show_job, b"failed": self.show_failed})

    def _may_invoke(self, peer: Peer, function: bytes) -> bool:
        acl = self.broker.acl
        return acl is None or acl.canInvoke(peer.subject, function)

    # ------------------------------------------------------------------ show job

    def show_job(self, peer: Peer, words: list[bytes]) -> bytes:
        """show job HANDLE | show job unique FUNCTION UNIQUE: a queued, running or finished job, field by field."""
        now = self.broker.clock()
        results = self.lifecycle.results
        if len(words) == 1:
            job = self.broker.find(words[0])  # a job queued only in the store too (spill.py)
            record = None if job is not None else results.get(words[0], now) if results.ttl else None
        elif len(words) == 3 and words[0].lower() == b"unique":
            function = self.broker.functions.get(words[1])
            job = function.uniques.get(words[2]) if function is not None else None
            if job is None and function is not None and function.spill is not None:
                job = self.broker.spill.join(function, words[2], peer)
            record = None if job is not None else results.get_unique(words[1], words[2], now) if results.ttl \
                else None
        else:
            return err("INVALID_ARGUMENTS", "use show job HANDLE or show job unique FUNCTION UNIQUE")
        if job is not None:
            return _fields(self._live(job))
        if record is not None:
            return _fields(self._finished(record))
        return err("UNKNOWN_JOB", "no such job is queued, running or kept (see --result-ttl)")

    def _live(self, job: Job) -> list[tuple[str, Any]]:
        info = self.lifecycle.attempts.get(job.handle)
        fields: list[tuple[str, Any]] = [
            ("handle", job.handle), ("function", job.function.name), ("unique", job.unique),
            ("state", _STATES.get(job.state, "finished")), ("background", int(job.background)),
            ("priority", PRIORITY_NAMES[job.priority].lower()),
            ("attempts", (info.runs if info is not None else 0) + (1 if job.state == RUNNING else 0)),
            ("when", _time(job.when)), ("numerator", job.numerator), ("denominator", job.denominator),
            ("clients", len(job.clients)), ("data_bytes", len(job.data)),
        ]
        if info is not None:
            fields += [("first_time", _time(info.first_time)), ("last_time", _time(info.last_time)),
                       ("exception", info.last_exception)]
        return fields

    @staticmethod
    def _finished(record: JobRecord) -> list[tuple[str, Any]]:
        fields: list[tuple[str, Any]] = [
            ("handle", record.handle), ("function", record.function), ("unique", record.unique),
            ("state", record.state), ("background", int(record.background)),
            ("priority", PRIORITY_NAMES[record.priority].lower()), ("attempts", record.attempts),
            ("first_time", _time(record.first_time)), ("finished", _time(record.finished)),
            ("exception", record.exception), ("result_bytes", record.result_size),
        ]
        if record.result is not None:
            fields.append(("result", record.result))
        return fields

    # ------------------------------------------------------------------ dead letters

    def show_failed(self, peer: Peer, words: list[bytes]) -> bytes:
        """show failed [FUNCTION] [offset=N] [limit=N]: dead letters, oldest first, 100 per page by default."""
        function, paging, problem = None, {"offset": 0, "limit": 100}, None
        for word in words:
            key, eq, value = word.partition(b"=")
            if eq and key.decode("ascii", "replace") in paging:
                if not value.isdigit():
                    problem = f"{key.decode()} must be a number"
                paging[key.decode()] = int(value) if value.isdigit() else 0
            elif function is None:
                function = word
            else:
                problem = "use show failed [FUNCTION] [offset=N] [limit=N]"
        if problem:
            return err("INVALID_ARGUMENTS", problem)
        dead = self.lifecycle.dead
        for gone in dead.prune(self.broker.clock()):
            self.lifecycle.purge_dead(gone)
        letters = list(dead.select(function))[paging["offset"]:paging["offset"] + paging["limit"]]
        return listing([b"\t".join((
            letter.handle, printable(letter.function), printable(letter.unique), b"%d" % letter.attempts,
            _time(letter.first_time), _time(letter.last_time), b"%d" % len(letter.data),
            printable(letter.last_exception),
        )) for letter in letters])

    def _letters(self, peer: Peer, words: list[bytes], verb: str) -> list[DeadLetter] | bytes:
        if not words or words[0].lower() != b"failed" or len(words) not in (2, 3) or \
                (len(words) == 3 and words[1].lower() != b"all"):
            return err("INVALID_ARGUMENTS", f"use {verb} failed HANDLE or {verb} failed all [FUNCTION]")
        dead = self.lifecycle.dead
        if words[1].lower() == b"all":
            letters = list(dead.select(words[2] if len(words) == 3 else None))
        else:
            letter = dead.letters.get(words[1])
            if letter is None:
                return err("UNKNOWN_JOB", f"no dead letter {words[1].decode('utf-8', 'replace')}")
            letters = [letter]
        refused = [letter for letter in letters if not self._may_invoke(peer, letter.function)]
        if refused:
            return err("PERMISSION_DENIED", f"{peer.subject} may not invoke {refused[0].function!r}")
        return letters

    def retry(self, peer: Peer, words: list[bytes]) -> bytes:
        """retry failed HANDLE|all [FUNCTION]: submit dead letters again, with fresh attempts."""
        letters = self._letters(peer, words, "retry")
        if isinstance(letters, bytes):
            return letters
        for letter in letters:
            self.lifecycle.dead.take(letter.handle)
            job = self.lifecycle.requeue_dead(letter)
            log.info("dead letter %r requeued as job %r", letter.handle, job.handle if job else None)
        return b"OK %d\r\n" % len(letters)

    def purge(self, peer: Peer, words: list[bytes]) -> bytes:
        """purge failed HANDLE|all [FUNCTION]: forget dead letters."""
        letters = self._letters(peer, words, "purge")
        if isinstance(letters, bytes):
            return letters
        for letter in letters:
            self.lifecycle.dead.take(letter.handle)
            self.lifecycle.purge_dead(letter)
        log.info("purged %d dead letters", len(letters))
        return b"OK %d\r\n" % len(letters)

    # ------------------------------------------------------------------ policies

    def policy(self, peer: Peer, words: list[bytes]) -> bytes:
        """policy list | policy set PATTERN KEY=VALUE...: retry policies by function pattern."""
        verb = words[0].lower() if words else b""
        if verb == b"list" and len(words) == 1:
            return listing([printable(pattern.encode("utf-8", "surrogateescape")) + b"\t" + policy.describe().encode()
                             for pattern, policy in self.lifecycle.policies.policies.items()])
        if verb == b"set" and len(words) >= 3:
            acl = self.broker.acl
            if acl is not None and not acl.canGrant(peer.subject):
                return err("PERMISSION_DENIED", f"{peer.subject} may not change policies")
            values = {}
            for word in words[2:]:
                key, eq, value = word.decode("utf-8", "replace").partition("=")
                if not eq:
                    return err("INVALID_ARGUMENTS", f"{key} is not KEY=VALUE")
                values[key] = value
            pattern = words[1].decode("utf-8", "surrogateescape")
            try:
                policy = self.lifecycle.policies.set(pattern, values)
            except PolicyError as exc:
                return err("INVALID_ARGUMENTS", str(exc))
            log.info("policy %r set by %r: %s", pattern, peer, policy.describe())
            return b"OK\r\n"
        return err("INVALID_ARGUMENTS", "use policy list or policy set FUNCTION KEY=VALUE...")

    # ------------------------------------------------------------------ schedules

    def schedule(self, peer: Peer, words: list[bytes]) -> bytes:
        """schedule list | schedule add NAME FUNCTION "CRON" [DATA] | schedule cancel NAME."""
        verb = words[0].lower() if words else b""
        lifecycle = self.lifecycle
        if verb == b"list" and len(words) == 1:
            return listing([b"\t".join((
                printable(name.encode()), printable(s.spec.function), s.spec.cron.text.encode(), _time(s.next_run),
                s.source.encode(), printable(s.spec.unique), printable(s.spec.data),
            )) for name, s in lifecycle.schedules.items()])
        if verb == b"cancel" and len(words) == 2:
            name = words[1].decode("utf-8", "replace")
            schedule = lifecycle.schedules.get(name)
            if schedule is None:
                return err("UNKNOWN_SCHEDULE", f"no schedule {name}")
            if not self._may_invoke(peer, schedule.spec.function):
                return err("PERMISSION_DENIED", f"{peer.subject} may not invoke {schedule.spec.function!r}")
            lifecycle.cancel_schedule(name)
            log.info("schedule %s cancelled by %r", name, peer)
            return b"OK\r\n"
        if verb == b"add":
            return self._schedule_add(peer, words[1:])
        return err("INVALID_ARGUMENTS", 'use schedule list, schedule add NAME FUNCTION "CRON" [DATA] or '
                                         "schedule cancel NAME")

    def _schedule_add(self, peer: Peer, words: list[bytes]) -> bytes:
        usage = 'use schedule add NAME FUNCTION "MINUTE HOUR DAY MONTH WEEKDAY" [DATA]'
        if len(words) < 3 or not words[2].startswith(b'"'):
            return err("INVALID_ARGUMENTS", usage)
        rest = b" ".join(words[2:])
        end = rest.find(b'"', 1)
        if end < 0:
            return err("INVALID_ARGUMENTS", "the cron fields need a closing quote")
        cron_text, data = rest[1:end], rest[end + 1:].strip()
        if len(data) >= 2 and data[:1] == data[-1:] == b'"':
            data = data[1:-1]
        name, function = words[0].decode("utf-8", "replace"), words[1]
        problem = self.broker.name_problem(function) if function not in self.broker.functions else None
        if problem is not None:
            return err(problem[0].decode(), problem[1])
        if not self._may_invoke(peer, function):
            return err("PERMISSION_DENIED", f"{peer.subject} may not invoke {function!r}")
        try:
            cron = CronSpec.from_text(cron_text.decode("ascii", "replace"))
        except CronError as exc:
            return err("INVALID_SCHEDULE", str(exc))
        existing = self.lifecycle.schedules.get(name)
        if existing is not None and existing.source == "file":
            return err("SCHEDULE_EXISTS", f"schedule {name} comes from the policy file")
        schedule = self.lifecycle.add_schedule(ScheduleSpec(name, function, cron, data), "admin")
        log.info("schedule %s added by %r: %r at %s, next %.0f", name, peer, function, cron.text,
                 schedule.next_run)
        return b"OK\r\n"

    # ------------------------------------------------------------------ settings

    def settings(self, peer: Peer, words: list[bytes]) -> bytes:
        """Every limit and policy in effect: settings, then maxqueue and policy lines."""
        if words:
            return err("INVALID_ARGUMENTS", "settings takes no arguments")
        pairs: list[tuple[str, Any]] = []
        config = getattr(self.server, "config", None)
        if config is not None:
            for field in dataclasses.fields(config):
                value = getattr(config, field.name)
                if field.name == "acl":
                    value = "on" if value is not None else "off"
                elif field.name in ("listen", "ssl_listen"):
                    value = ",".join(f"{host or '*'}:{port}" for host, port in value) or "-"
                pairs.append((field.name, "-" if value is None else value))
        else:
            broker = self.broker
            pairs += [("job_retries", broker.job_retries), ("worker_wakeup", broker.worker_wakeup),
                      ("max_unique_length", broker.max_unique_length),
                      ("max_function_length", broker.max_function_length),
                      ("max_queued_bytes", broker.max_queued_bytes)]
            pairs += [(k, v) for k, v in self.lifecycle.settings().items() if k != "policy_file"]
        known = {name for name, _ in pairs}
        pairs += [(k, v) for k, v in self.lifecycle.settings().items() if k not in known]
        lines = [name.encode() + b"\t" + _text(value) for name, value in pairs]
        for function in self.broker.functions.values():
            if function.max_queue != [0, 0, 0]:
                lines.append(b"maxqueue\t%s\t%d\t%d\t%d" % (function.name, *function.max_queue))
        for pattern, policy in self.lifecycle.policies.policies.items():
            lines.append(b"policy\t" + printable(pattern.encode("utf-8", "surrogateescape")) + b"\t" +
                         policy.describe().encode())
        return listing(lines)

