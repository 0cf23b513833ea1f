"""geartrain's own asyncio Gearman client and worker, built on the sans-I/O geartrain.protocol.ClientConnection.

- Client (client.py): submits jobs over one or more servers (a stable hash of the unique picks the server, with
  failover), follows them to their result, asks for status, echoes and admin commands.
- Job, JobStatus, UniqueStatus (job.py): a submitted job's handle object and the status answers.
- Worker, WorkerJob (worker.py): registers handlers, grabs and runs jobs with bounded concurrency.
- Link (link.py): the reconnecting connection (exponential backoff with jitter) under both.
- The exceptions (errors.py): GearmanError and its subclasses.
"""

from ..protocol.address import parse_address as parse_server
from .client import Client
from .errors import (
    ConnectionLost,
    GearmanError,
    JobError,
    JobException,
    JobFailed,
    JobLost,
    NoServerAvailable,
    ServerError,
)
from .job import Job, JobStatus, UniqueStatus
from .link import Link
from .worker import Worker, WorkerJob

__all__ = [
    "Client",
    "ConnectionLost",
    "GearmanError",
    "Job",
    "JobError",
    "JobException",
    "JobFailed",
    "JobLost",
    "JobStatus",
    "Link",
    "NoServerAvailable",
    "ServerError",
    "UniqueStatus",
    "Worker",
    "WorkerJob",
    "parse_server",
]
