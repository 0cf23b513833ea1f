"""Admin requests for geartrain's retries, dead letters, kept results, schedules and settings (not in gear).

Send them like gear's own: ``client.getConnection().sendAdminRequest(request)``; the answer is in
``request.response`` (a listing includes its closing ``.`` line).
"""

from __future__ import annotations

from typing import Any

from .packet import AdminRequest, _SingleLineAdminRequest
from .text import to_bytes

__all__ = [
    "AdminCommandRequest", "PolicyListAdminRequest", "PolicySetAdminRequest", "PurgeFailedAdminRequest",
    "RetryFailedAdminRequest", "ScheduleAddAdminRequest", "ScheduleCancelAdminRequest", "ScheduleListAdminRequest",
    "SettingsAdminRequest", "ShowFailedAdminRequest", "ShowJobAdminRequest", "ShowJobUniqueAdminRequest",
]


class AdminCommandRequest(AdminRequest):
    """Any admin command line, e.g. ``AdminCommandRequest("schedule list")``."""

    def __init__(self, command: Any) -> None:
        super().__init__()
        self.command = to_bytes(command)


class ShowJobAdminRequest(AdminRequest):
    """ "show job HANDLE": a queued, running or kept finished job, one ``field<TAB>value`` line per field."""

    command = b"show job"

    def __init__(self, handle: Any) -> None:
        super().__init__(handle)


class ShowJobUniqueAdminRequest(AdminRequest):
    """ "show job unique FUNCTION UNIQUE"."""

    command = b"show job unique"

    def __init__(self, function: Any, unique: Any) -> None:
        super().__init__(function, unique)


class ShowFailedAdminRequest(AdminRequest):
    """ "show failed [FUNCTION] [offset=N] [limit=N]": dead letters, oldest first."""

    command = b"show failed"

    def __init__(self, function: Any = None, offset: int | None = None, limit: int | None = None) -> None:
        arguments = [] if function is None else [function]
        arguments += [f"{key}={int(value)}" for key, value in (("offset", offset), ("limit", limit))
                      if value is not None]
        super().__init__(*arguments)


class RetryFailedAdminRequest(_SingleLineAdminRequest):
    """ "retry failed HANDLE|all [FUNCTION]": answered "OK N"."""

    command = b"retry failed"

    def __init__(self, handle: Any = "all", function: Any = None) -> None:
        super().__init__(handle, *([] if function is None else [function]))


class PurgeFailedAdminRequest(_SingleLineAdminRequest):
    """ "purge failed HANDLE|all [FUNCTION]": answered "OK N"."""

    command = b"purge failed"

    def __init__(self, handle: Any = "all", function: Any = None) -> None:
        super().__init__(handle, *([] if function is None else [function]))


class PolicyListAdminRequest(AdminRequest):
    """ "policy list"."""

    command = b"policy list"

    def __init__(self) -> None:
        super().__init__()


class PolicySetAdminRequest(_SingleLineAdminRequest):
    """ "policy set FUNCTION KEY=VALUE...", e.g. ``PolicySetAdminRequest("resize_*", max_attempts=5)``."""

    command = b"policy set"

    def __init__(self, function: Any, **values: Any) -> None:
        super().__init__(function, *(f"{key}={','.join(value) if isinstance(value, list | tuple) else value}"
                                     for key, value in values.items()))


class ScheduleListAdminRequest(AdminRequest):
    """ "schedule list"."""

    command = b"schedule list"

    def __init__(self) -> None:
        super().__init__()


class ScheduleAddAdminRequest(_SingleLineAdminRequest):
    """ 'schedule add NAME FUNCTION "CRON" [DATA]'."""

    command = b"schedule add"

    def __init__(self, name: Any, function: Any, cron: Any, data: Any = None) -> None:
        super().__init__(name, function, b'"' + to_bytes(cron) + b'"', *([] if data is None else [data]))


class ScheduleCancelAdminRequest(_SingleLineAdminRequest):
    """ "schedule cancel NAME"."""

    command = b"schedule cancel"

    def __init__(self, name: Any) -> None:
        super().__init__(name)


class SettingsAdminRequest(AdminRequest):
    """ "settings": every limit and policy in effect."""

    command = b"settings"

    def __init__(self) -> None:
        super().__init__()
