"""Gearman packet types, magic codes and per-type argument counts (shared/reference/protocol.md)."""

from __future__ import annotations

from typing import Final

REQ: Final = b"\x00REQ"
RES: Final = b"\x00RES"
HEADER_SIZE: Final = 12
DEFAULT_PORT: Final = 4730
DEFAULT_MAX_PACKET_SIZE: Final = 64 * 1024 * 1024
DEFAULT_MAX_LINE_LENGTH: Final = 64 * 1024

CAN_DO: Final = 1
CANT_DO: Final = 2
RESET_ABILITIES: Final = 3
PRE_SLEEP: Final = 4
NOOP: Final = 6
SUBMIT_JOB: Final = 7
JOB_CREATED: Final = 8
GRAB_JOB: Final = 9
NO_JOB: Final = 10
JOB_ASSIGN: Final = 11
WORK_STATUS: Final = 12
WORK_COMPLETE: Final = 13
WORK_FAIL: Final = 14
GET_STATUS: Final = 15
ECHO_REQ: Final = 16
ECHO_RES: Final = 17
SUBMIT_JOB_BG: Final = 18
ERROR: Final = 19
STATUS_RES: Final = 20
SUBMIT_JOB_HIGH: Final = 21
SET_CLIENT_ID: Final = 22
CAN_DO_TIMEOUT: Final = 23
ALL_YOURS: Final = 24
WORK_EXCEPTION: Final = 25
OPTION_REQ: Final = 26
OPTION_RES: Final = 27
WORK_DATA: Final = 28
WORK_WARNING: Final = 29
GRAB_JOB_UNIQ: Final = 30
JOB_ASSIGN_UNIQ: Final = 31
SUBMIT_JOB_HIGH_BG: Final = 32
SUBMIT_JOB_LOW: Final = 33
SUBMIT_JOB_LOW_BG: Final = 34
SUBMIT_JOB_SCHED: Final = 35
SUBMIT_JOB_EPOCH: Final = 36
SUBMIT_REDUCE_JOB: Final = 37
SUBMIT_REDUCE_JOB_BACKGROUND: Final = 38
GRAB_JOB_ALL: Final = 39
JOB_ASSIGN_ALL: Final = 40
GET_STATUS_UNIQUE: Final = 41
STATUS_RES_UNIQUE: Final = 42

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
PRIORITY_HIGH: Final = 0
PRIORITY_NORMAL: Final = 1
PRIORITY_LOW: Final = 2
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
