"""GearmanAdminClient methods for geartrain's retries, dead letters, kept results, schedules and settings.

A mixin over the admin client's `_command` (one command, its AdminResponse, AdminCommandError on ERR).
"""

from __future__ import annotations

from typing import Any

from .encoding import from_wire
from .errors import AdminCommandError

__all__ = ["LifecycleAdminMixin"]

def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else from_wire(value)


_FAILED_FIELDS = ("handle", "task", "unique", "attempts", "first_time", "last_time", "data_bytes",
                  "last_exception")
_SCHEDULE_FIELDS = ("name", "task", "cron", "next_run", "source", "unique", "data")


class LifecycleAdminMixin:
    """Geartrain's admin commands as python-gearman style methods returning dicts and tuples of dicts."""

    _command: Any  # GearmanAdminClient._command

    def send_command(self, command: str) -> tuple[str, ...]:
        """Any admin command; its answer's lines (without a listing's "."); AdminCommandError on ERR."""
        return tuple(from_wire(line) for line in self._command(command).lines)

    def _rows(self, command: str, names: tuple[str, ...]) -> tuple[dict, ...]:
        rows = []
        for line in self.send_command(command):
            values = line.split("\t")
            if len(values) != len(names):
                raise AdminCommandError(f"{command}: bad line {line!r}")
            rows.append(dict(zip(names, values, strict=True)))
        return tuple(rows)

    def _count(self, command: str) -> int:
        (line,) = self.send_command(command)
        if not line.startswith("OK"):
            raise AdminCommandError(f"{command!r}: unexpected answer {line!r}")
        return int(line[3:] or 0)

    def get_job(self, handle: str | bytes) -> dict:
        """A queued, running or kept finished job: {'handle', 'function', 'unique', 'state', 'attempts', ...}."""
        return dict(line.split("\t", 1) for line in self.send_command(f"show job {_text(handle)}"))

    def get_job_by_unique(self, task: str | bytes, unique: str | bytes) -> dict:
        return dict(line.split("\t", 1) for line in
                    self.send_command(f"show job unique {_text(task)} {_text(unique)}"))

    def get_failed(self, task: str | bytes | None = None, offset: int = 0, limit: int = 100) -> tuple[dict, ...]:
        """Dead letters, oldest first: {'handle', 'task', 'unique', 'attempts', 'first_time', 'last_time',
        'data_bytes', 'last_exception'}."""
        words = ["show failed"] + ([_text(task)] if task is not None else []) + [f"offset={int(offset)}",
                                                                                  f"limit={int(limit)}"]
        return self._rows(" ".join(words), _FAILED_FIELDS)

    def retry_failed(self, handle: str | bytes = "all", task: str | bytes | None = None) -> int:
        """Submit dead letters again (one handle, or all of them or of a task); returns how many."""
        return self._count(" ".join(["retry failed", _text(handle)] + ([_text(task)] if task else [])))

    def purge_failed(self, handle: str | bytes = "all", task: str | bytes | None = None) -> int:
        return self._count(" ".join(["purge failed", _text(handle)] + ([_text(task)] if task else [])))

    def get_policies(self) -> dict[str, dict[str, str]]:
        """{pattern: {'max_attempts': '3', ...}}."""
        policies = {}
        for line in self.send_command("policy list"):
            pattern, *pairs = line.split("\t")
            policies[pattern] = dict(pair.split("=", 1) for pair in pairs)
        return policies

    def set_policy(self, task: str | bytes, **values: Any) -> str:
        """e.g. set_policy("resize_*", max_attempts=5, retry_on="fail,exception"); returns 'OK'."""
        pairs = " ".join(f"{key}={value}" for key, value in values.items())
        self._count(f"policy set {_text(task)} {pairs}")
        return "OK"

    def get_schedules(self) -> tuple[dict, ...]:
        """{'name', 'task', 'cron', 'next_run', 'source', 'unique', 'data'} per schedule."""
        return self._rows("schedule list", _SCHEDULE_FIELDS)

    def add_schedule(self, name: str, task: str | bytes, cron: str, data: str | bytes | None = None) -> str:
        tail = f" {_text(data)}" if data is not None else ""
        self._count(f'schedule add {name} {_text(task)} "{cron}"{tail}')
        return "OK"

    def cancel_schedule(self, name: str) -> str:
        self._count(f"schedule cancel {name}")
        return "OK"

    def get_settings(self) -> dict[str, Any]:
        """Every setting in effect; 'maxqueue' is {task: (high, normal, low)}, 'policy' as get_policies()."""
        settings: dict[str, Any] = {"maxqueue": {}, "policy": {}}
        for line in self.send_command("settings"):
            key, *values = line.split("\t")
            if key == "maxqueue":
                settings["maxqueue"][values[0]] = tuple(int(v) for v in values[1:])
            elif key == "policy":
                settings["policy"][values[0]] = dict(pair.split("=", 1) for pair in values[1:])
            else:
                settings[key] = values[0] if values else ""
        return settings
