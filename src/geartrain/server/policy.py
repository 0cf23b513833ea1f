"""Retry policies per function pattern, and the policy file (TOML) that declares them and repeating schedules.

    [functions."resize_*"]
    max_attempts = 5          # runs in all, the first included
    backoff_initial = 2.0     # seconds before the second run
    backoff_factor = 2.0      # each further wait is this many times the one before
    backoff_max = 300.0       # no wait is longer
    jitter = 0.1              # each wait is shortened by up to this fraction, at random
    retry_on = ["fail", "exception", "worker_lost", "timeout"]

    [[schedules]]
    name = "nightly-report"
    function = "report"
    cron = "0 3 * * *"
    data = "all"              # optional; unique and priority ("high", "normal", "low") too

A function no pattern matches keeps gearmand's behaviour: no retries, no dead letters. The exact name wins over
patterns; among patterns the first one declared that matches wins.
"""

from __future__ import annotations

import fnmatch
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from ..protocol.constants import PRIORITY_NAMES
from .cron import CronError, CronSpec

__all__ = ["OUTCOMES", "PolicyError", "PolicyFile", "PolicySet", "RetryPolicy", "ScheduleSpec",
           "load_policy_file"]

#: The endings a policy may count as failures.
OUTCOMES = ("fail", "exception", "worker_lost", "timeout")
PRIORITY_WORDS = {name.lower(): i for i, name in enumerate(PRIORITY_NAMES)}


class PolicyError(ValueError):
    """A bad policy file or policy setting; the message names the file, table or key to fix."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often a background job of the matching functions runs and how long it waits between runs."""

    max_attempts: int = 3
    backoff_initial: float = 1.0
    backoff_factor: float = 2.0
    backoff_max: float = 300.0
    jitter: float = 0.0
    retry_on: tuple[str, ...] = ("fail", "exception", "worker_lost", "timeout")

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise PolicyError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.backoff_initial < 0 or self.backoff_max < 0:
            raise PolicyError("backoff_initial and backoff_max must not be negative")
        if self.backoff_factor < 1:
            raise PolicyError(f"backoff_factor must be at least 1, not {self.backoff_factor}")
        if not 0 <= self.jitter <= 1:
            raise PolicyError(f"jitter must be between 0 and 1, not {self.jitter}")
        unknown = [word for word in self.retry_on if word not in OUTCOMES]
        if unknown:
            raise PolicyError(f"retry_on: unknown ending {unknown[0]!r} (use {', '.join(OUTCOMES)})")

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before the next run after `failures` counted failures (1 for the first)."""
        base = min(self.backoff_max, self.backoff_initial * self.backoff_factor ** max(0, failures - 1))
        return base * (1.0 - self.jitter * rand())

    def describe(self) -> str:
        return "\t".join(f"{f.name}={_format(getattr(self, f.name))}" for f in fields(self))

    @classmethod
    def from_mapping(cls, values: dict[str, Any], base: RetryPolicy | None = None, where: str = "") -> RetryPolicy:
        """A policy from TOML values or admin KEY=VALUE texts (strings are converted), over `base`."""
        changes: dict[str, Any] = {}
        known = {f.name: f.type for f in fields(cls)}
        for key, value in values.items():
            if key not in known:
                raise PolicyError(f"{where}unknown key {key!r} (use {', '.join(known)})")
            try:
                changes[key] = _convert(key, value)
            except (TypeError, ValueError) as exc:
                raise PolicyError(f"{where}{key}: {exc}") from None
        try:
            return replace(base or cls(), **changes)
        except PolicyError as exc:
            raise PolicyError(f"{where}{exc}") from None


def _convert(key: str, value: Any) -> Any:
    if key == "retry_on":
        if isinstance(value, str):
            value = [word for word in value.split(",") if word]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise TypeError("must be a list of endings")
        return tuple(value)
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is not a number")
    if key == "max_attempts":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value!r} is not a whole number")
        return int(value)
    return float(value)


def _format(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class PolicySet:
    """Policies by function pattern; for_function() is a dict lookup after the first call per name."""

    def __init__(self, policies: dict[str, RetryPolicy] | None = None) -> None:
        self.policies: dict[str, RetryPolicy] = dict(policies or {})
        self._cache: dict[bytes, RetryPolicy | None] = {}

    def for_function(self, name: bytes) -> RetryPolicy | None:
        try:
            return self._cache[name]
        except KeyError:
            pass
        text = name.decode("utf-8", "surrogateescape")
        policy = self.policies.get(text)
        if policy is None:
            for pattern, candidate in self.policies.items():
                if fnmatch.fnmatchcase(text, pattern):
                    policy = candidate
                    break
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[name] = policy
        return policy

    def set(self, pattern: str, values: dict[str, Any]) -> RetryPolicy:
        policy = RetryPolicy.from_mapping(values, self.policies.get(pattern), f"policy {pattern!r}: ")
        self.policies[pattern] = policy
        self._cache.clear()
        return policy


@dataclass(frozen=True)
class ScheduleSpec:
    """A repeating schedule: each time `cron` matches, one background job of `function` is submitted."""

    name: str
    function: bytes
    cron: CronSpec
    data: bytes = b""
    unique: bytes = b""
    priority: int = 1


@dataclass
class PolicyFile:
    policies: PolicySet = field(default_factory=PolicySet)
    schedules: list[ScheduleSpec] = field(default_factory=list)


def _schedule(entry: Any, index: int) -> ScheduleSpec:
    where = f"[[schedules]] entry {index + 1}: "
    if not isinstance(entry, dict):
        raise PolicyError(f"{where}is not a table")
    unknown = set(entry) - {"name", "function", "cron", "data", "unique", "priority"}
    if unknown:
        raise PolicyError(f"{where}unknown key {sorted(unknown)[0]!r}")
    for key in ("name", "function", "cron"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise PolicyError(f"{where}{key} is missing or not a string")
    name = entry["name"]
    if any(c.isspace() for c in name):
        raise PolicyError(f"{where}name {name!r} holds whitespace")
    try:
        cron = CronSpec.from_text(entry["cron"])
    except CronError as exc:
        raise PolicyError(f"{where}cron: {exc}") from None
    priority = entry.get("priority", "normal")
    if priority not in PRIORITY_WORDS:
        raise PolicyError(f"{where}priority {priority!r} is not high, normal or low")
    data, unique = entry.get("data", ""), entry.get("unique", "")
    if not isinstance(data, str) or not isinstance(unique, str):
        raise PolicyError(f"{where}data and unique must be strings")
    return ScheduleSpec(name, entry["function"].encode(), cron, data.encode(), unique.encode(),
                        PRIORITY_WORDS[priority])


def parse_policy_text(text: str, where: str = "policy file") -> PolicyFile:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{where}: {exc}") from None
    unknown = set(document) - {"functions", "schedules"}
    if unknown:
        raise PolicyError(f"{where}: unknown table {sorted(unknown)[0]!r} (use [functions.\"PATTERN\"] and "
                          "[[schedules]])")
    result = PolicyFile()
    functions = document.get("functions", {})
    if not isinstance(functions, dict):
        raise PolicyError(f"{where}: functions must be tables, as [functions.\"resize_*\"]")
    for pattern, values in functions.items():
        if not isinstance(values, dict):
            raise PolicyError(f"{where}: [functions.{pattern!r}] is not a table")
        result.policies.policies[pattern] = RetryPolicy.from_mapping(
            values, where=f"{where}: [functions.{pattern!r}] ")
    schedules = document.get("schedules", [])
    if not isinstance(schedules, list):
        raise PolicyError(f"{where}: schedules must be written as [[schedules]] entries")
    result.schedules = [_schedule(entry, i) for i, entry in enumerate(schedules)]
    names = [s.name for s in result.schedules]
    if len(set(names)) != len(names):
        raise PolicyError(f"{where}: two schedules are named {next(n for n in names if names.count(n) > 1)!r}")
    return result


def load_policy_file(path: str | Path) -> PolicyFile:
    """Read and check a policy file; PolicyError says what to fix."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read the policy file {path}: {exc}") from None
    return parse_policy_text(text, f"policy file {path}")
