"""Constants of the python-gearman 2.0.2 API: priorities, job request states and defaults."""

from __future__ import annotations

DEFAULT_GEARMAN_PORT = 4730

PRIORITY_NONE = None
PRIORITY_LOW = "LOW"
PRIORITY_HIGH = "HIGH"

JOB_UNKNOWN = "UNKNOWN"  # not yet sent, or its connection was lost before it finished
JOB_PENDING = "PENDING"  # sent, waiting for JOB_CREATED
JOB_CREATED = "CREATED"  # the server holds it (a background request is complete here)
JOB_FAILED = "FAILED"  # WORK_FAIL, WORK_EXCEPTION, or an ERROR answered to its submit
JOB_COMPLETE = "COMPLETE"  # WORK_COMPLETE received

#: Seconds allowed for a TCP (and TLS) connect before the server counts as unreachable.
DEFAULT_CONNECT_TIMEOUT = 10.0
