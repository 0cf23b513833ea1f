"""GearmanAdminClient: the admin text commands and ECHO, blocking with a poll_timeout, as python-gearman."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from geartrain.protocol import AdminResponse, Packet
from geartrain.protocol import constants as P

from .connection import GearmanConnection
from .connection_manager import GearmanConnectionManager
from .encoding import from_wire, to_wire
from .errors import AdminCommandError, ConnectionError, InvalidAdminClientState, ServerUnavailable
from .lifecycle_admin import LifecycleAdminMixin

ECHO_STRING = b"ping? pong!"
DEFAULT_ADMIN_CLIENT_TIMEOUT = 10.0


class GearmanAdminClient(LifecycleAdminMixin, GearmanConnectionManager):
    """Talks to the first reachable server of its list; every call waits at most poll_timeout seconds."""

    def __init__(self, host_list: Iterable[Any] | None = None, poll_timeout: float = DEFAULT_ADMIN_CLIENT_TIMEOUT):
        super().__init__(host_list)
        self.poll_timeout = poll_timeout
        self.current_connection: GearmanConnection | None = None
        self._answers: list[Any] = []

    def establish_admin_connection(self) -> GearmanConnection:
        if self.current_connection is not None and self.current_connection.connected:
            return self.current_connection
        for connection in self.connection_list:
            try:
                self.current_connection = self.establish_connection(connection)
                return self.current_connection
            except ConnectionError:
                continue
        raise ServerUnavailable(f"Found no valid connections: {self.connection_list!r}")

    def on_connect(self, connection: GearmanConnection) -> None:
        self._answers.clear()

    def handle_event(self, connection: GearmanConnection, event: Any) -> None:
        self._answers.append(event)

    def _wait_for(self, wanted: type, ptype: int | None = None) -> Any:
        connection = self.current_connection
        assert connection is not None
        deadline = time.monotonic() + self.poll_timeout
        while True:
            for index, event in enumerate(self._answers):
                if isinstance(event, wanted) and (ptype is None or event.ptype == ptype):
                    del self._answers[: index + 1]
                    return event
            if not connection.connected:
                raise ConnectionError(f"{connection.address} closed the admin connection")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise InvalidAdminClientState(f"Admin client timed out after {self.poll_timeout} second(s)")
            self.poll_connections_once([connection], remaining)

    def _command(self, command: str) -> AdminResponse:
        connection = self.establish_admin_connection()
        connection.send_admin(command)
        response = self._wait_for(AdminResponse)
        if not response.ok:
            raise AdminCommandError(f"{command!r}: {from_wire(response.lines[0])}")
        return response

    def _table(self, command: str, width: int) -> list[list[str]]:
        """The tab-separated lines of a listing, each with at least `width` fields."""
        rows = []
        for line in self._command(command).lines:
            fields = from_wire(line).split("\t")
            if len(fields) < width:
                raise AdminCommandError(f"{command}: bad line {line!r}")
            rows.append(fields)
        return rows

    def _ok(self, command: str) -> str:
        line = from_wire(self._command(command).lines[0])
        if not line.startswith("OK"):
            raise AdminCommandError(f"{command!r}: unexpected answer {line!r}")
        return line

    # -- the API ---------------------------------------------------------------------------------------
    def ping_server(self) -> float:
        """Seconds for an ECHO round trip."""
        connection = self.establish_admin_connection()
        start = time.monotonic()
        connection.send_command(P.ECHO_REQ, ECHO_STRING)
        answer: Packet = self._wait_for(Packet, P.ECHO_RES)
        if answer.args[0] != ECHO_STRING:
            raise InvalidAdminClientState(f"ECHO answered {answer.args[0]!r}")
        return time.monotonic() - start

    def send_maxqueue(self, task: str | bytes, max_size: int) -> str:
        """Limit the queue of task to max_size jobs (0 or less: no limit); returns 'OK'."""
        self._ok(f"maxqueue {_word(task)} {int(max_size)}")
        return "OK"

    def send_shutdown(self, graceful: bool = True) -> str:
        """Ask the server to shut down; returns 'OK'."""
        self._ok("shutdown graceful" if graceful else "shutdown")
        return "OK"

    def get_status(self) -> tuple[dict, ...]:
        """Per task: {'task', 'queued' (queued + running), 'running', 'workers'}."""
        return tuple(
            {"task": f[0], "queued": int(f[1]), "running": int(f[2]), "workers": int(f[3])}
            for f in self._table("status", 4)
        )

    def get_version(self) -> str:
        line = from_wire(self._command("version").lines[0])
        return line[3:] if line.startswith("OK ") else line

    def get_workers(self) -> tuple[dict, ...]:
        """Per connection: {'file_descriptor', 'ip', 'client_id', 'tasks'}."""
        rows = []
        for line in self._command("workers").lines:
            head, _, tasks = from_wire(line).partition(" :")
            parts = head.split()
            if len(parts) < 3:
                raise AdminCommandError(f"workers: bad line {line!r}")
            rows.append(
                {
                    "file_descriptor": parts[0],
                    "ip": parts[1],
                    "client_id": parts[2],
                    "tasks": tuple(tasks.split()),
                }
            )
        return tuple(rows)

    def get_pid(self) -> str:
        """The server's process id, as text."""
        line = self._ok("getpid")
        return line[3:].strip()

    def cancel_job(self, handle: str | bytes) -> str:
        """Cancel a queued job; returns 'OK', raises AdminCommandError for an unknown handle."""
        self._ok(f"cancel job {_word(handle)}")
        return "OK"

    def get_jobs(self) -> tuple[dict, ...]:
        """Per job: {'handle', 'retries', 'ignore_job', 'job_queued'}."""
        return tuple(
            {"handle": f[0], "retries": int(f[1]), "ignore_job": f[2] not in ("0", ""),
             "job_queued": f[3] not in ("0", "")}
            for f in self._table("show jobs", 4)
        )

    def get_unique_jobs(self) -> tuple[str, ...]:
        return tuple(from_wire(line) for line in self._command("show unique jobs").lines)


def _word(value: str | bytes) -> str:
    text = from_wire(to_wire(value))
    if not text or any(ch.isspace() for ch in text):
        raise ValueError(f"{value!r} cannot be sent in an admin command (empty or holds whitespace)")
    return text
