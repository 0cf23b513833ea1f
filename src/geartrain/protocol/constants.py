"""Gearman packet types, magic codes and per-type argument counts (shared/reference/protocol.md)."""

from __future__ import annotations

REQ = b"\x00REQ"
RES = b"\x00RES"
HEADER_SIZE = 12
DEFAULT_PORT = 4730
DEFAULT_MAX_PACKET_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_LINE_LENGTH = 64 * 1024

CAN_DO = 1
CANT_DO = 2
RESET_ABILITIES = 3
PRE_SLEEP = 4
NOOP = 6
SUBMIT_JOB = 7
JOB_CREATED = 8
GRAB_JOB = 9
NO_JOB = 10
JOB_ASSIGN = 11
WORK_STATUS = 12
WORK_COMPLETE = 13
WORK_FAIL = 14
GET_STATUS = 15
ECHO_REQ = 16
ECHO_RES = 17
SUBMIT_JOB_BG = 18
ERROR = 19
STATUS_RES = 20
SUBMIT_JOB_HIGH = 21
SET_CLIENT_ID = 22
CAN_DO_TIMEOUT = 23
ALL_YOURS = 24
WORK_EXCEPTION = 25
OPTION_REQ = 26
OPTION_RES = 27
WORK_DATA = 28
WORK_WARNING = 29
GRAB_JOB_UNIQ = 30
JOB_ASSIGN_UNIQ = 31
SUBMIT_JOB_HIGH_BG = 32
SUBMIT_JOB_LOW = 33
SUBMIT_JOB_LOW_BG = 34
SUBMIT_JOB_SCHED = 35
SUBMIT_JOB_EPOCH = 36
SUBMIT_REDUCE_JOB = 37
SUBMIT_REDUCE_JOB_BACKGROUND = 38
GRAB_JOB_ALL = 39
JOB_ASSIGN_ALL = 40
GET_STATUS_UNIQUE = 41
STATUS_RES_UNIQUE = 42

#: Number of NUL-separated arguments per packet type; the last one may itself hold NULs.
ARG_COUNTS: dict[int, int] = {
    CAN_DO: 1,
    CANT_DO: 1,
    RESET_ABILITIES: 0,
    PRE_SLEEP: 0,
    NOOP: 0,
    SUBMIT_JOB: 3,
    JOB_CREATED: 1,
    GRAB_JOB: 0,
    NO_JOB: 0,
    JOB_ASSIGN: 3,
    WORK_STATUS: 3,
    WORK_COMPLETE: 2,
    WORK_FAIL: 1,
    GET_STATUS: 1,
    ECHO_REQ: 1,
    ECHO_RES: 1,
    SUBMIT_JOB_BG: 3,
    ERROR: 2,
    STATUS_RES: 5,
    SUBMIT_JOB_HIGH: 3,
    SET_CLIENT_ID: 1,
    CAN_DO_TIMEOUT: 2,
    ALL_YOURS: 0,
    WORK_EXCEPTION: 2,
    OPTION_REQ: 1,
    OPTION_RES: 1,
    WORK_DATA: 2,
    WORK_WARNING: 2,
    GRAB_JOB_UNIQ: 0,
    JOB_ASSIGN_UNIQ: 4,
    SUBMIT_JOB_HIGH_BG: 3,
    SUBMIT_JOB_LOW: 3,
    SUBMIT_JOB_LOW_BG: 3,
    SUBMIT_JOB_SCHED: 8,
    SUBMIT_JOB_EPOCH: 4,
    SUBMIT_REDUCE_JOB: 5,
    SUBMIT_REDUCE_JOB_BACKGROUND: 5,
    GRAB_JOB_ALL: 0,
    JOB_ASSIGN_ALL: 5,
    GET_STATUS_UNIQUE: 1,
    STATUS_RES_UNIQUE: 6,
}

#: {type number: name}, as gear.constants.types.
TYPE_NAMES: dict[int, str] = {
    value: name
    for name, value in globals().copy().items()
    if isinstance(value, int) and name.isupper() and value in ARG_COUNTS
}

#: Submit types: (background, priority) where priority is 0 high, 1 normal, 2 low.
PRIORITY_HIGH = 0
PRIORITY_NORMAL = 1
PRIORITY_LOW = 2
PRIORITY_NAMES = ("HIGH", "NORMAL", "LOW")

SUBMIT_TYPES: dict[int, tuple[bool, int]] = {
    SUBMIT_JOB: (False, PRIORITY_NORMAL),
    SUBMIT_JOB_BG: (True, PRIORITY_NORMAL),
    SUBMIT_JOB_HIGH: (False, PRIORITY_HIGH),
    SUBMIT_JOB_HIGH_BG: (True, PRIORITY_HIGH),
    SUBMIT_JOB_LOW: (False, PRIORITY_LOW),
    SUBMIT_JOB_LOW_BG: (True, PRIORITY_LOW),
    SUBMIT_JOB_EPOCH: (True, PRIORITY_NORMAL),
    SUBMIT_REDUCE_JOB: (False, PRIORITY_NORMAL),
    SUBMIT_REDUCE_JOB_BACKGROUND: (True, PRIORITY_NORMAL),
    SUBMIT_JOB_SCHED: (True, PRIORITY_NORMAL),
}


#: The one submit-type table every face uses: (background, priority) -> SUBMIT_JOB* type.
SUBMIT_BY_KIND: dict[tuple[bool, int], int] = {
    key: ptype for ptype, key in SUBMIT_TYPES.items() if ptype < SUBMIT_JOB_SCHED
}


def submit_type(background: bool, priority: int) -> int:
    """The SUBMIT_JOB* packet type for a (background, priority) pair."""
    try:
        return SUBMIT_BY_KIND[(bool(background), priority)]
    except (KeyError, TypeError):
        raise ValueError(f"no submit type for background={background!r} priority={priority!r}") from None


#: Admin commands whose successful answer is several lines closed by a line holding ".".
_MULTILINE_ADMIN = (
    (b"workers",),
    (b"status",),
    (b"prioritystatus",),
    (b"show", b"jobs"),
    (b"show", b"unique"),
    (b"acl", b"list"),
    (b"show", b"job"),
    (b"show", b"failed"),
    (b"policy", b"list"),
    (b"schedule", b"list"),
    (b"settings",),
)


def admin_answer_is_multiline(command: bytes) -> bool:
    """Whether the answer to an admin command line is a list closed by ".", unless it begins with ERR."""
    words = command.split()
    return any(tuple(words[: len(key)]) == key for key in _MULTILINE_ADMIN)
