"""python-gearman 2.0.2's API on Python 3, built on geartrain's protocol core."""

from . import constants, errors, job
from .admin_client import GearmanAdminClient
from .client import GearmanClient
from .connection_manager import DataEncoder
from .constants import (
    JOB_COMPLETE,
    JOB_CREATED,
    JOB_FAILED,
    JOB_PENDING,
    JOB_UNKNOWN,
    PRIORITY_HIGH,
    PRIORITY_LOW,
    PRIORITY_NONE,
)
from .worker import GearmanWorker

__version__ = "2.0.2"

__all__ = [
    "JOB_COMPLETE",
    "JOB_CREATED",
    "JOB_FAILED",
    "JOB_PENDING",
    "JOB_UNKNOWN",
    "PRIORITY_HIGH",
    "PRIORITY_LOW",
    "PRIORITY_NONE",
    "DataEncoder",
    "GearmanAdminClient",
    "GearmanClient",
    "GearmanWorker",
    "constants",
    "errors",
    "job",
]
