"""gear: the API of OpenStack's gear 0.16 (an event-driven Gearman client, worker, admin protocol and server),
built on geartrain's protocol core and job server.

Example::

    import gear
    client = gear.Client()
    client.addServer('gearman.example.com')
    client.waitForServer()
    job = gear.Job("reverse", "test string")
    client.submitJob(job)
    job.waitForCompletion()

Differences from the original that code can notice, all additions or fixes: str is accepted wherever bytes
were required (UTF-8); sockets use TCP_NODELAY and connect/send timeouts; Client.getStatus() and
Job.waitForCompletion() exist; a timed-out admin request no longer shifts later answers; Connection.echo()
returns on success; registerFunction(name, timeout) works; Worker(worker_id=...) works.
"""

from __future__ import annotations

from typing import Any

from . import constants
from .base import BaseClient, BaseClientServer, OptionReqTask, SubmitJobTask, Task
from .client import PRECEDENCE_HIGH, PRECEDENCE_LOW, PRECEDENCE_NORMAL, Client
from .connection import Connection
from .errors import (
    ConfigurationError,
    ConnectionError,
    DisconnectError,
    GearmanError,
    InterruptedError,
    InvalidDataError,
    NoConnectedServersError,
    RetryIOError,
    TimeoutError,
    UnknownJobError,
)
from .job import (
    BaseBinaryJob,
    BaseJob,
    BinaryJob,
    BinaryWorkerJob,
    FunctionRecord,
    Job,
    TextJob,
    TextJobArguments,
    TextJobUnique,
    TextList,
    TextWorkerJob,
    WorkerJob,
)
from .lifecycle_admin import (
    AdminCommandRequest,
    PolicyListAdminRequest,
    PolicySetAdminRequest,
    PurgeFailedAdminRequest,
    RetryFailedAdminRequest,
    ScheduleAddAdminRequest,
    ScheduleCancelAdminRequest,
    ScheduleListAdminRequest,
    SettingsAdminRequest,
    ShowFailedAdminRequest,
    ShowJobAdminRequest,
    ShowJobUniqueAdminRequest,
)
from .packet import (
    AdminRequest,
    CancelJobAdminRequest,
    Packet,
    ShowJobsAdminRequest,
    ShowUniqueJobsAdminRequest,
    StatusAdminRequest,
    VersionAdminRequest,
    WorkersAdminRequest,
)
from .server import Server
from .server_records import ServerAdminRequest, ServerConnection, ServerJob
from .worker import TextWorker, Worker

__all__ = [
    "AdminCommandRequest",
    "PolicyListAdminRequest",
    "PolicySetAdminRequest",
    "PurgeFailedAdminRequest",
    "RetryFailedAdminRequest",
    "ScheduleAddAdminRequest",
    "ScheduleCancelAdminRequest",
    "ScheduleListAdminRequest",
    "SettingsAdminRequest",
    "ShowFailedAdminRequest",
    "ShowJobAdminRequest",
    "ShowJobUniqueAdminRequest",
    "ACL",
    "ACLEntry",
    "ACLError",
    "AdminRequest",
    "BaseBinaryJob",
    "BaseClient",
    "BaseClientServer",
    "BaseJob",
    "BinaryJob",
    "BinaryWorkerJob",
    "CancelJobAdminRequest",
    "Client",
    "ConfigurationError",
    "Connection",
    "ConnectionError",
    "DisconnectError",
    "FunctionRecord",
    "GearmanError",
    "InterruptedError",
    "InvalidDataError",
    "Job",
    "NoConnectedServersError",
    "OptionReqTask",
    "PRECEDENCE_HIGH",
    "PRECEDENCE_LOW",
    "PRECEDENCE_NORMAL",
    "Packet",
    "RetryIOError",
    "Server",
    "ServerAdminRequest",
    "ServerConnection",
    "ServerJob",
    "ShowJobsAdminRequest",
    "ShowUniqueJobsAdminRequest",
    "StatusAdminRequest",
    "SubmitJobTask",
    "Task",
    "TextJob",
    "TextJobArguments",
    "TextJobUnique",
    "TextList",
    "TextWorker",
    "TextWorkerJob",
    "TimeoutError",
    "UnknownJobError",
    "VersionAdminRequest",
    "Worker",
    "WorkerJob",
    "WorkersAdminRequest",
    "constants",
]

_ACL_NAMES = ("ACL", "ACLEntry", "ACLError")


def __getattr__(name: str) -> Any:
    # ACL, ACLEntry and ACLError live with the server (geartrain.server.acl); load them on first use.
    if name in _ACL_NAMES:
        from geartrain.server import acl

        value = getattr(acl, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gear' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ACL_NAMES))
