"""The exceptions raised by geartrain's asyncio Client and Worker."""

from __future__ import annotations

from typing import Any


class GearmanError(Exception):
    """Base of every error the client and worker raise."""


class ServerError(GearmanError):
    """The server answered a request with an ERROR packet (code and text as sent)."""

    def __init__(self, code: bytes, text: bytes, server: str = "") -> None:
        self.code = code
        self.text = text
        self.server = server
        where = f" from {server}" if server else ""
        super().__init__(f"ERROR {code.decode('utf-8', 'replace')}{where}: {text.decode('utf-8', 'replace')}")


class ConnectionLost(GearmanError):
    """The connection a request was waiting on closed before its answer came."""


class NoServerAvailable(GearmanError, ConnectionError):
    """None of the configured servers could be reached."""


class JobError(GearmanError):
    """A submitted job ended without a result; ``job`` is the Job handle object."""

    def __init__(self, message: str, job: Any = None) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(JobError):
    """The job ended with WORK_FAIL (the worker failed it, or the server gave up on it)."""


class JobException(JobError):
    """The job ended with WORK_EXCEPTION; ``data`` holds the bytes the worker sent."""

    def __init__(self, data: bytes, job: Any = None) -> None:
        handle = getattr(job, "handle", None)
        super().__init__(f"job {handle!r} raised: {data.decode('utf-8', 'replace')}", job)
        self.data = data


class JobLost(JobError):
    """The connection carrying an acknowledged foreground job was lost: its result will never arrive here."""
