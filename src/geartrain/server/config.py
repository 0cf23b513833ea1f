"""ServerConfig: the one place every server setting lives (command line, gear.Server and tests build it)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from ..protocol.constants import DEFAULT_MAX_LINE_LENGTH, DEFAULT_MAX_PACKET_SIZE, DEFAULT_PORT


@dataclass
class ServerConfig:
    """Every setting of a geartrain job server, with the safe defaults a plain `geard` runs with."""

    #: (host, port) pairs to listen on; host "" is every address; port 0 picks a free port (Server.ports).
    listen: list[tuple[str, int]] = field(default_factory=lambda: [("", DEFAULT_PORT)])
    #: TLS: key, certificate and CA files. With all of key and cert the listeners speak TLS; with a CA too,
    #: client certificates are required and verified.
    ssl_key: str | None = None
    ssl_cert: str | None = None
    ssl_ca: str | None = None
    #: Extra TLS listeners beside the plain ones (host, port), used with --ssl-port.
    ssl_listen: list[tuple[str, int]] = field(default_factory=list)
    #: With key and cert set: whether the `listen` addresses speak TLS too (False: only ssl_listen does).
    tls_on_main: bool = True
    #: An ACL object (geartrain.server.acl.ACL); None allows everything.
    acl: Any = None
    keepalive: bool = False
    tcp_keepidle: int = 7200
    tcp_keepintvl: int = 75
    tcp_keepcnt: int = 9
    #: A job requeued more than this many times (worker lost, CAN_DO_TIMEOUT) fails; 0 means no limit.
    job_retries: int = 0
    #: Handles are "<prefix>:<n>"; default "H:<hostname>".
    job_handle_prefix: str | None = None
    #: Sleeping workers woken per queued job; 0 wakes one per job and chains wake-ups while work remains.
    worker_wakeup: int = 0
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    max_unique_length: int = 64
    max_function_length: int = 512
    #: Concurrent connections; further ones are closed at once with a log line. 0 means no limit.
    max_connections: int = 0
    #: Seconds a connection holding no job and no registration may stay silent; 0 disables.
    idle_timeout: float = 0.0
    #: Seconds a TLS handshake may take.
    handshake_timeout: float = 10.0
    #: Bytes of unsent output per connection before we stop reading from it (flow control).
    output_high_water: int = 4 * 1024 * 1024
    #: Bytes per connection of unsent output past which it is cut off (its jobs are kept).
    output_limit: int = 256 * 1024 * 1024
    #: Total bytes of queued job data; submits past it get QUEUE_ERROR. 0 means no limit.
    max_queued_bytes: int = 2 * 1024 * 1024 * 1024
    #: "memory", "sqlite" or "postgres".
    queue_type: str = "memory"
    sqlite_db: str | None = None
    #: PostgreSQL queue: libpq DSN; gearmand's queue table imported once at start.
    postgres_dsn: str | None = None
    postgres_table: str = "queue"
    #: Cluster on one PostgreSQL: this node's name (default host:port), lease renewal and take-over delays.
    cluster_node: str | None = None
    lease_interval: float = 2.0
    takeover_after: float = 10.0

    def node_name(self) -> str:
        return self.cluster_node or f"{socket.gethostname()}:{self.listen[0][1] if self.listen else 0}"

    def handle_prefix(self) -> bytes:
        prefix = self.job_handle_prefix or f"H:{socket.gethostname()}"
        return prefix.encode("utf-8")
