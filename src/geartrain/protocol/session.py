"""The client and worker state machines of one Gearman connection, written once, sans-I/O (in the style of h11).

Every face (gear's threads, gearman's select loop, the asyncio client) owns its socket and drives these objects:
methods return the bytes to send, ``receive_data()`` / ``receive()`` turn what the server sent into small
immutable events. No sockets, no asyncio, no ssl here.

The rules kept in this one place:

- **A reply only ever answers a request of its own kind.** Requests wait in one queue in the order they were
  sent. JOB_CREATED answers the oldest submit, STATUS_RES the oldest GET_STATUS, STATUS_RES_UNIQUE the oldest
  GET_STATUS_UNIQUE, ECHO_RES the oldest ECHO_REQ, OPTION_RES the oldest OPTION_REQ. Servers answer in order,
  so requests of another kind queued ahead of the one answered were passed over by the server (gear 0.16.0's
  geard ignores OPTION_REQ, older servers ignore GET_STATUS_UNIQUE): they end as ``Unanswered``.
- **ERROR answers the oldest request**, whatever its kind. The one ambiguity (an ERROR after an OPTION_REQ the
  server ignored would look like the option's refusal and shift every later answer) is removed by construction:
  every OPTION_REQ is followed by a probe, a GET_STATUS for a handle no server gives out, which every server
  answers (gear 0.16.0's geard ignores OPTION_REQ and ECHO_REQ, but answers GET_STATUS). An OPTION_RES or ERROR
  that arrives before the probe's STATUS_RES answers the option; the probe's STATUS_RES with the option still
  open means the server ignored it.
- **A handle names every job on it.** A server coalesces submits of one unique into one handle (even on one
  connection); WORK_* packets for that handle reach each of those jobs, and WORK_COMPLETE, WORK_FAIL and
  WORK_EXCEPTION end them all. gearmand sends a connection one copy of every WORK_* packet per submit, back to
  back; other servers send one. So a packet equal to the one just before it, for a handle with n jobs, is a copy
  for the next job when it falls within that run's n (those jobs already have it): n identical consecutive
  packets count as one. (A server that sends one copy and a worker that sends identical consecutive WORK_DATA
  chunks to coalesced jobs on one connection are the one case this folds together.) WORK_EXCEPTION ends a job
  whether or not the "exceptions" option was granted (gear's own server sends it regardless; gearmand sends
  WORK_FAIL instead when the option is off).
- **On loss**, submits never acknowledged may be sent elsewhere (no server has them); foreground jobs that were
  acknowledged are lost (their result would have come on this connection only).
- **CAN_DO_TIMEOUT** carries milliseconds: seconds are rounded to the nearest millisecond, at least 1.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final, NamedTuple

from . import constants as C
from .codec import Packet, join_body, pack
from .connection import JOB_ASSIGNMENTS, Assignment, ClientConnection, assignment
from .constants import REQ, RES

__all__ = [
    "Assigned",
    "ClientSession",
    "Loss",
    "NoJob",
    "Reply",
    "StillGrabbing",
    "Unanswered",
    "Unsolicited",
    "Wake",
    "Work",
    "WorkerSession",
    "timeout_ms",
]

#: Which request kind each typed reply answers (ERROR answers any).
_ANSWERS: Final[dict[int, int]] = {
    C.STATUS_RES: C.GET_STATUS,
    C.STATUS_RES_UNIQUE: C.GET_STATUS_UNIQUE,
    C.ECHO_RES: C.ECHO_REQ,
    C.OPTION_RES: C.OPTION_REQ,
}
_SUBMITS: Final = frozenset(C.SUBMIT_TYPES)
_BACKGROUND: Final = frozenset(ptype for ptype, (background, _) in C.SUBMIT_TYPES.items() if background)
_WORK: Final = frozenset((C.WORK_DATA, C.WORK_WARNING, C.WORK_STATUS, C.WORK_COMPLETE, C.WORK_FAIL, C.WORK_EXCEPTION))
_ENDING: Final = frozenset((C.WORK_COMPLETE, C.WORK_FAIL, C.WORK_EXCEPTION))
_FOREGROUND: Final = _SUBMITS - _BACKGROUND
_JOB_CREATED: Final = C.JOB_CREATED
_ERROR: Final = C.ERROR
_PROBE: Final = object()  # the token of the GET_STATUS that follows every OPTION_REQ
PROBE_HANDLE = b"geartrain-option-probe"
#: Events are built on the hot path with tuple.__new__ (a C call), not the NamedTuple's Python-level __new__.
_new: Final = tuple.__new__


# ---------------------------------------------------------------------------------------------------- events


class Reply(NamedTuple):
    """The server's answer to one request: ``packet`` is the typed answer (JOB_CREATED, STATUS_RES, ...) or ERROR.

    ``request`` is the token the face gave with the request, ``kind`` the request's packet type. For a submit
    answered with JOB_CREATED the job now waits on ``packet.args[0]`` (foreground jobs only).
    """

    request: Any
    kind: int
    packet: Packet


class Unanswered(NamedTuple):
    """A request the server passed over (e.g. an OPTION_REQ ignored by gear's geard): no answer will come."""

    request: Any
    kind: int


class Work(NamedTuple):
    """A WORK_* packet for a handle, with every job waiting on that handle (coalesced submits share one).

    ``final`` (WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION): those jobs have ended and are no longer tracked.
    ``jobs`` is the session's own list (no copy per packet): read it, do not change or keep it.
    """

    jobs: list[Any]
    packet: Packet
    final: bool


class Unsolicited(NamedTuple):
    """A packet nothing waits for: a reply with no request pending, WORK_* for an unknown handle, NOOP, ..."""

    packet: Packet


class Loss(NamedTuple):
    """What a lost connection leaves behind.

    ``unacknowledged``: submits the server never answered (never created there: safe to send elsewhere);
    ``acknowledged``: foreground jobs the server created whose result can no longer arrive (lost);
    ``requests``: (token, kind) of the other requests still waiting (status, echo, option), to fail.
    """

    unacknowledged: list[Any]
    acknowledged: list[Any]
    requests: list[tuple[Any, int]]


# ---------------------------------------------------------------------------------------------------- client


class ClientSession:
    """The client side of one connection: requests out, replies matched, WORK_* routed to every job of a handle.

    Tokens are the face's own objects (its job or request records); the session never looks inside them.
    Call :py:meth:`connect` when a socket is (re)opened and :py:meth:`lost` when it breaks. ``accept`` is the
    magic taken from the server (b"": either, as gear's Connection reads).
    """

    __slots__ = ("_conn", "_pending", "_handles", "_copy", "_copies", "client_id", "want_exceptions", "exceptions",
                 "options")

    def __init__(self, client_id: bytes | None = None, exceptions: bool = True, accept: bytes = RES) -> None:
        self._conn = ClientConnection(accept=accept)
        #: [kind, token] of every request sent and not yet answered, in the order sent.
        self._pending: deque[tuple[int, Any]] = deque()
        #: handle -> the tokens of the foreground jobs waiting on it (more than one when submits coalesced).
        self._handles: dict[bytes, list[Any]] = {}
        #: The last WORK_* packet delivered for a handle with several jobs, and how many copies of it may follow.
        self._copy: Packet | None = None
        self._copies = 0  # while 0, _copy means nothing
        self.client_id = client_id
        self.want_exceptions = exceptions
        #: Whether the server granted the "exceptions" option on this connection.
        self.exceptions = False
        #: Options the server granted on this connection.
        self.options: set[bytes] = set()

    # -- connection lifecycle -------------------------------------------------------------------------------

    def connect(self) -> bytes:
        """Forget the previous connection's state; the greeting to send first (SET_CLIENT_ID, OPTION_REQ)."""
        self._reset()
        out = b""
        if self.client_id is not None:
            out += pack(REQ, C.SET_CLIENT_ID, self.client_id)
        if self.want_exceptions:
            out += self.option(b"exceptions", None)
        return out

    def lost(self) -> Loss:
        """The connection broke: what was waiting on it (see Loss); the session is then empty."""
        unacknowledged: list[Any] = []
        requests: list[tuple[Any, int]] = []
        for kind, token in list(self._pending):  # a copy: a thread-based face may be adding a request now
            if kind in _SUBMITS:
                unacknowledged.append(token)
            elif token is not None and token is not _PROBE:
                requests.append((token, kind))
        acknowledged = [job for jobs in list(self._handles.values()) for job in jobs]
        self._reset()
        return Loss(unacknowledged, acknowledged, requests)

    def _reset(self) -> None:
        self._conn.reset()
        self._pending.clear()
        self._handles.clear()
        self._copy = None
        self._copies = 0
        self.exceptions = False
        self.options = set()

    @property
    def pending(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    @property
    def admin_pending(self) -> int:
        """Admin commands sent whose answer has not fully arrived."""
        return self._conn.admin_pending

    @property
    def handles(self) -> dict[bytes, list[Any]]:
        """handle -> the foreground jobs waiting on it (read only)."""
        return self._handles

    # -- requests -------------------------------------------------------------------------------------------

    def submit(self, ptype: int, args: tuple[bytes, ...], job: Any) -> bytes:
        """Bytes of a SUBMIT_JOB* packet (any variant) for ``job``, whose JOB_CREATED or ERROR comes as a Reply."""
        if ptype not in _SUBMITS:
            raise ValueError(f"{C.TYPE_NAMES.get(ptype, ptype)} is not a submit")
        data = pack(REQ, ptype, join_body(ptype, *args))
        self._pending.append((ptype, job))
        return data

    def track(self, ptype: int, token: Any) -> None:
        """Record a request whose bytes the face encoded itself (it must send them next, in this order)."""
        self._pending.append((ptype, token))

    def get_status(self, handle: bytes, token: Any) -> bytes:
        """GET_STATUS; its STATUS_RES comes back as a Reply."""
        self._pending.append((C.GET_STATUS, token))
        return pack(REQ, C.GET_STATUS, handle)

    def get_status_unique(self, unique: bytes, token: Any) -> bytes:
        """GET_STATUS_UNIQUE; its STATUS_RES_UNIQUE comes back as a Reply."""
        self._pending.append((C.GET_STATUS_UNIQUE, token))
        return pack(REQ, C.GET_STATUS_UNIQUE, unique)

    def echo(self, data: bytes, token: Any) -> bytes:
        """ECHO_REQ; its ECHO_RES comes back as a Reply."""
        self._pending.append((C.ECHO_REQ, token))
        return pack(REQ, C.ECHO_REQ, data)

    def option(self, name: bytes, token: Any) -> bytes:
        """OPTION_REQ and its probe (see the module docstring); the outcome is a Reply (OPTION_RES or ERROR) or
        Unanswered. A token of None keeps the outcome inside the session (only ``exceptions`` records it)."""
        self._pending.append((C.OPTION_REQ, token))
        self._pending.append((C.GET_STATUS, _PROBE))
        return pack(REQ, C.OPTION_REQ, name) + pack(REQ, C.GET_STATUS, PROBE_HANDLE)

    def send_admin(self, command: bytes | str) -> bytes:
        """Bytes of one admin text command; its answer arrives as an AdminResponse, in order."""
        return self._conn.send_admin(command)

    # -- replies --------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Any]:
        """Feed the server's bytes; the events they complete (Reply, Unanswered, Work, Unsolicited,
        AdminResponse, AdminLine, PacketError). Raises codec.ProtocolError on an undecodable stream."""
        out: list[Any] = []
        conn = self._conn
        for event in conn._decoder.feed(data):
            if type(event) is Packet:
                self.receive(event, out)
            else:
                conn.collect(event, out)
        return out

    def receive(self, packet: Packet, out: list[Any]) -> None:
        """Match one decoded packet; append its events to ``out`` (a face that decodes itself calls this)."""
        ptype = packet[1]
        if ptype in _WORK:
            if self._copies:
                if packet == self._copy:
                    self._copies -= 1  # a copy for another job of the handle (see the module docstring)
                    return
                self._copies = 0
            handle = packet[2][0]
            handles = self._handles
            jobs = handles.get(handle)
            if jobs is None:
                out.append(_new(Unsolicited, (packet,)))
            elif ptype in _ENDING:
                if len(jobs) > 1:
                    self._copy = packet
                    self._copies = len(jobs) - 1
                del handles[handle]
                out.append(_new(Work, (jobs, packet, True)))
            else:
                if len(jobs) > 1:
                    self._copy = packet
                    self._copies = len(jobs) - 1
                out.append(_new(Work, (jobs, packet, False)))
            return
        if self._copies:
            self._copies = 0
        if ptype == _JOB_CREATED:
            pending = self._pending
            if pending:
                kind, token = pending[0]
                if kind in _FOREGROUND:  # the common case, in line
                    pending.popleft()
                    handle = packet[2][0]
                    jobs = self._handles.get(handle)
                    if jobs is None:
                        self._handles[handle] = [token]
                    else:
                        jobs.append(token)
                    out.append(_new(Reply, (token, kind, packet)))
                    return
            self._answer(packet, _SUBMITS, out)
        elif ptype == _ERROR:
            self._error(packet, out)
        elif ptype in _ANSWERS:
            self._answer(packet, (_ANSWERS[ptype],), out)
        else:
            out.append(_new(Unsolicited, (packet,)))

    def _answer(self, packet: Packet, kinds: Any, out: list[Any]) -> None:
        pending = self._pending
        while pending:
            kind, token = pending[0]
            if kind in kinds:
                pending.popleft()
                self._answered(kind, token, packet, out)
                return
            if not any(k in kinds for k, _ in list(pending)):
                break  # nothing of this kind waits: leave the queue alone
            pending.popleft()  # the server passed this request over
            self._passed_over(kind, token, out)
        out.append(Unsolicited(packet))

    def _error(self, packet: Packet, out: list[Any]) -> None:
        pending = self._pending
        if not pending:
            out.append(Unsolicited(packet))
            return
        kind, token = pending.popleft()
        if token is _PROBE:  # an ERROR for the probe: the option ahead of it was answered or passed over
            return
        if kind == C.OPTION_REQ:
            if token is not None:
                out.append(Reply(token, kind, packet))
            return
        out.append(Reply(token, kind, packet))

    def _answered(self, kind: int, token: Any, packet: Packet, out: list[Any]) -> None:
        if kind in _SUBMITS:
            if kind not in _BACKGROUND:
                jobs = self._handles.get(packet.args[0])
                if jobs is None:
                    self._handles[packet.args[0]] = [token]
                else:
                    jobs.append(token)
            out.append(Reply(token, kind, packet))
        elif token is _PROBE:
            pass  # the option ahead of it, if still open, was ended as Unanswered on the way here
        elif kind == C.OPTION_REQ:
            name = packet.args[0]
            self.options.add(name)
            if name == b"exceptions":
                self.exceptions = True
            if token is not None:
                out.append(Reply(token, kind, packet))
        else:
            out.append(Reply(token, kind, packet))

    def _passed_over(self, kind: int, token: Any, out: list[Any]) -> None:
        if kind in _SUBMITS:
            # A server never passes over a submit: treat it as refused rather than leave its job waiting.
            out.append(Unanswered(token, kind))
        elif token is not None and token is not _PROBE:
            out.append(Unanswered(token, kind))

    def forget(self, job: Any) -> None:
        """Stop routing WORK_* packets to ``job`` (its caller gave up on it); other jobs on its handle stay."""
        for handle, jobs in list(self._handles.items()):
            if job in jobs:
                jobs.remove(job)
                if not jobs:
                    del self._handles[handle]


# ---------------------------------------------------------------------------------------------------- worker


def timeout_ms(seconds: float | int | str | bytes) -> bytes:
    """CAN_DO_TIMEOUT's argument: seconds (as users give them) rounded to milliseconds (as servers read them),
    at least 1."""
    if isinstance(seconds, bytes):
        seconds = seconds.decode("ascii")
    value = float(seconds)
    if not value > 0:
        raise ValueError(f"a function timeout must be a positive number of seconds, got {seconds!r}")
    return str(max(int(round(value * 1000)), 1)).encode("ascii")


class Assigned(NamedTuple):
    """The server handed this worker a job (whichever JOB_ASSIGN variant carried it)."""

    job: Assignment
    packet: Packet


class NoJob(NamedTuple):
    """The server has no job for this worker: send :py:meth:`WorkerSession.pre_sleep` and wait for a NOOP."""


class StillGrabbing(NamedTuple):
    """NO_JOB answered one grab while another grab of this connection still waits for its answer (a worker
    that prefetches): do nothing, that answer decides (a job, or NoJob and then PRE_SLEEP)."""


class Wake(NamedTuple):
    """NOOP: a job may be waiting; send :py:meth:`WorkerSession.grab`."""


#: The worker's per-connection states, named as gear names them.
INIT: Final = "INIT"
IDLE: Final = "IDLE"
GRAB_WAIT: Final = "GRAB_WAIT"
SLEEP: Final = "SLEEP"

_GRABS: Final = {C.GRAB_JOB: C.JOB_ASSIGN, C.GRAB_JOB_UNIQ: C.JOB_ASSIGN_UNIQ, C.GRAB_JOB_ALL: C.JOB_ASSIGN_ALL}
#: The body-less requests of the grab machine, framed once.
_GRAB_FRAMES: Final = {grab: pack(REQ, grab, b"") for grab in _GRABS}
_PRE_SLEEP: Final = pack(REQ, C.PRE_SLEEP, b"")
_NO_JOB: Final = NoJob()
_STILL_GRABBING: Final = StillGrabbing()
_WAKE: Final = Wake()


class WorkerSession:
    """The worker side of one connection: abilities, the grab / NO_JOB / PRE_SLEEP / NOOP machine, WORK_* out.

    ``grab_type`` is GRAB_JOB_UNIQ (default), GRAB_JOB or GRAB_JOB_ALL; the server answers with the matching
    JOB_ASSIGN variant, and any of them becomes an Assigned event.

    A worker that prefetches (asks for its next job while one runs) may have more than one grab waiting for its
    answer: ``grab(limit)`` sends one while fewer than ``limit`` wait, ``grabs`` counts them (for a face that
    feeds every packet to :py:meth:`receive`). The server answers grabs in order; a NO_JOB while another grab
    still waits becomes StillGrabbing, so PRE_SLEEP goes out only once no grab waits (a sleeping worker with a
    grab out would be woken for nothing, or miss the NOOP meant for it); NOOP wakes only a sleeping connection.
    The face decides the limit: a job it could not start (no slot free, the worker stopping, the function no
    longer registered) must not be grabbed.
    """

    __slots__ = ("_conn", "abilities", "client_id", "grab_type", "state", "grabs")

    def __init__(self, client_id: bytes | None = None, grab_type: int = C.GRAB_JOB_UNIQ) -> None:
        if grab_type not in _GRABS:
            raise ValueError(f"{C.TYPE_NAMES.get(grab_type, grab_type)} is not a GRAB_JOB variant")
        self._conn = ClientConnection()
        self.client_id = client_id
        self.grab_type = grab_type
        #: function name -> timeout in seconds (None: plain CAN_DO), as registered.
        self.abilities: dict[bytes, float | None] = {}
        self.state = INIT
        #: Grabs sent and not yet answered (JOB_ASSIGN* or NO_JOB); more than one only with grab(limit > 1).
        self.grabs = 0

    @property
    def assign_type(self) -> int:
        """The JOB_ASSIGN variant the grab type asks for."""
        return _GRABS[self.grab_type]

    def connect(self) -> bytes:
        """A socket was (re)opened: SET_CLIENT_ID and every ability; the state becomes IDLE (grab next)."""
        self._conn.reset()
        self.state = IDLE
        self.grabs = 0
        out = pack(REQ, C.SET_CLIENT_ID, self.client_id) if self.client_id is not None else b""
        return out + b"".join(self._ability(name, timeout) for name, timeout in self.abilities.items())

    def lost(self) -> None:
        self._conn.reset()
        self.state = INIT
        self.grabs = 0

    @staticmethod
    def _ability(name: bytes, timeout: float | None) -> bytes:
        if timeout:
            return pack(REQ, C.CAN_DO_TIMEOUT, join_body(C.CAN_DO_TIMEOUT, name, timeout_ms(timeout)))
        return pack(REQ, C.CAN_DO, name)

    def can_do(self, name: bytes, timeout: float | None = None) -> bytes:
        """Register a function (CAN_DO, or CAN_DO_TIMEOUT when a timeout in seconds is given)."""
        data = self._ability(name, timeout)
        self.abilities[name] = timeout
        return data

    def cant_do(self, name: bytes) -> bytes:
        self.abilities.pop(name, None)
        return pack(REQ, C.CANT_DO, name)

    def reset_abilities(self) -> bytes:
        self.abilities.clear()
        return pack(REQ, C.RESET_ABILITIES, b"")

    def set_abilities(self, abilities: dict[bytes, float | None]) -> bytes:
        """Replace every ability: RESET_ABILITIES, then one CAN_DO / CAN_DO_TIMEOUT each."""
        out = self.reset_abilities()
        return out + b"".join(self.can_do(name, timeout) for name, timeout in abilities.items())

    def set_client_id(self, client_id: bytes) -> bytes:
        self.client_id = client_id
        return pack(REQ, C.SET_CLIENT_ID, client_id)

    def grab(self, limit: int = 1) -> bytes:
        """The grab to send now, or b"" while ``limit`` grabs already wait for their answer (one by default)."""
        if self.state == GRAB_WAIT:
            if self.grabs >= limit:
                return b""
            self.grabs += 1
        else:  # a face that sets ``state`` itself (gear's) may not have fed every answer to receive()
            self.state = GRAB_WAIT
            self.grabs = 1
        return _GRAB_FRAMES[self.grab_type]

    def pre_sleep(self) -> bytes:
        """PRE_SLEEP, after a NO_JOB: the server will send NOOP when a job arrives."""
        self.state = SLEEP
        return _PRE_SLEEP

    def work(self, ptype: int, handle: bytes, *args: bytes) -> bytes:
        """A job's WORK_* packet (WORK_DATA, WORK_WARNING, WORK_STATUS, WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION)."""
        if ptype not in _WORK:
            raise ValueError(f"{C.TYPE_NAMES.get(ptype, ptype)} is not a WORK_* packet")
        return pack(REQ, ptype, join_body(ptype, handle, *args))

    def complete(self, handle: bytes, data: bytes) -> bytes:
        """WORK_COMPLETE for a handle the server assigned (received between NULs: it holds none), unchecked."""
        return pack(REQ, C.WORK_COMPLETE, handle + b"\0" + data)

    def receive_data(self, data: bytes) -> list[Any]:
        """Feed the server's bytes; events: Assigned, NoJob, Wake, Unsolicited (ERROR, ECHO_RES, ...),
        AdminResponse, AdminLine, PacketError."""
        out: list[Any] = []
        conn = self._conn
        for event in conn._decoder.feed(data):
            if type(event) is Packet:
                out.append(self.receive(event))
            else:
                conn.collect(event, out)
        return out

    def send_admin(self, command: bytes | str) -> bytes:
        return self._conn.send_admin(command)

    def receive(self, packet: Packet) -> Any:
        """The event for one decoded packet, moving the grab machine along."""
        ptype = packet.ptype
        if ptype == C.JOB_ASSIGN_UNIQ:  # the default grab's answer, in line
            self._answered()
            return _new(Assigned, (_new(Assignment, packet.args), packet))
        if ptype in JOB_ASSIGNMENTS:
            self._answered()
            return _new(Assigned, (assignment(packet), packet))
        if ptype == C.NO_JOB:
            return _STILL_GRABBING if self._answered() else _NO_JOB
        if ptype == C.NOOP:
            if self.state != GRAB_WAIT:
                self.state = IDLE
            return _WAKE
        return _new(Unsolicited, (packet,))

    def _answered(self) -> int:
        """One grab was answered: the grabs still waiting (the state stays GRAB_WAIT while there are any)."""
        left = self.grabs - 1 if self.grabs > 1 else 0
        self.grabs = left
        if not left:
            self.state = IDLE
        return left
