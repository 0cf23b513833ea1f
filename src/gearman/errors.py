"""The exception hierarchy of python-gearman 2.0.2."""

from __future__ import annotations


class GearmanError(Exception):
    """Base class of every error this package raises."""


class ConnectionError(GearmanError):  # noqa: A001 - the original's public name
    """A connection to a server could not be made or was lost."""


class ServerUnavailable(GearmanError):
    """No server of the host list could be reached."""


class ProtocolError(GearmanError):
    """The server sent something this side cannot accept."""


class UnknownCommandError(GearmanError):
    """A packet type this side does not know."""


class ExceededConnectionAttempts(GearmanError):
    """A job request was sent max_retries + 1 times and its connection was lost each time."""


class InvalidClientState(GearmanError):
    """A client-side request is in a state where the server's packet makes no sense."""


class InvalidWorkerState(GearmanError):
    """A worker-side job is in a state where the call makes no sense."""


class InvalidAdminClientState(GearmanError):
    """The admin client got no (or no usable) answer in time."""


class AdminCommandError(ProtocolError):
    """The server answered an admin command with ERR (an addition: the original had no name for it)."""
