"""gear's exceptions: plain Exception subclasses that shadow the builtins of the same name, as in gear."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ConnectionError",
    "DisconnectError",
    "GearmanError",
    "InterruptedError",
    "InvalidDataError",
    "NoConnectedServersError",
    "RetryIOError",
    "TimeoutError",
    "UnknownJobError",
]


class ConnectionError(Exception):  # noqa: A001 - gear's name
    """A connection to a server could not be opened, or was lost while an answer was awaited."""


class InvalidDataError(Exception):
    """Data that cannot be put on the wire (a bad magic code, a NUL inside a name)."""


class ConfigurationError(Exception):
    """A bad argument: a duplicate server, an unknown precedence, a missing client id."""


class NoConnectedServersError(Exception):
    """No server is connected at the moment."""


class UnknownJobError(Exception):
    """A packet names a job handle this connection does not know."""


class InterruptedError(Exception):  # noqa: A001 - gear's name
    """Worker.getJob() was interrupted by stopWaitingForJobs() or shutdown()."""


class TimeoutError(Exception):  # noqa: A001 - gear's name
    """An answer did not arrive in time."""


class GearmanError(Exception):
    """The server refused a request, or answered out of turn."""


class DisconnectError(Exception):
    """A connection was closed by its peer."""


class RetryIOError(Exception):
    """A non-blocking read or write would have blocked (kept for gear compatibility)."""
