"""ServerConfig: the one place every server setting lives (command line, gear.Server and tests build it).

Every default is written here once: `geard`'s options take theirs from these fields (see cli.CONFIG_OPTIONS).
A plain `geard` differs from an embedded `ServerConfig()` in one setting only, the queue: `ServerConfig()` keeps
jobs in memory, while `geard` keeps background jobs in SQLite, in a file named after its port
(`default_sqlite_path(port)`, `queue-4730.sqlite3`), and in memory with `-p 0` (GEARD_QUEUE_TYPE below).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from ..protocol.constants import DEFAULT_MAX_LINE_LENGTH, DEFAULT_MAX_PACKET_SIZE, DEFAULT_PORT

#: The queue of a plain `geard` (ServerConfig's own default is memory): SQLite in a file named after the port.
GEARD_QUEUE_TYPE = "sqlite"


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
    #: The file `acl` was read from; SIGHUP reads it again (Server.reload).
    acl_file: str | None = None
    #: listen() backlog of every listener (gearmand's -b).
    backlog: int = 1024
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
    #: SO_SNDBUF and SO_RCVBUF of each accepted TCP connection, in bytes (Linux doubles them); 0 leaves both to
    #: the kernel's autotuning. With autotuned buffers the loopback TCP work of large payloads falls to geard's
    #: own context: 512 KiB cut a 1 MiB job's server CPU by a quarter (benchmarks/README.md).
    socket_buffer: int = 512 * 1024
    #: Bytes of unsent output per connection before we stop reading from it (flow control).
    output_high_water: int = 4 * 1024 * 1024
    #: Bytes per connection of unsent output past which it is cut off (its jobs are kept).
    output_limit: int = 256 * 1024 * 1024
    #: Total bytes of queued job data; submits past it get QUEUE_ERROR. 0 means no limit.
    max_queued_bytes: int = 2 * 1024 * 1024 * 1024
    #: Jobs the server holds at most (queued in memory or in the store, scheduled, running); submits past it get
    #: QUEUE_ERROR. 0 means no limit.
    max_queued_jobs: int = 0
    #: With a durable queue that can spill (sqlite): queued background jobs kept in memory per function and
    #: priority; the rest wait only in the store and are read back in order as the queue drains (spill.py).
    #: 0 keeps every job in memory.
    memory_jobs: int = 100_000
    #: Functions with no worker and no job stay listed (as gearmand keeps them) up to this many, about 3 KB
    #: each; past it the longest idle are forgotten. `drop function NAME` removes one. 0 means no limit.
    max_idle_functions: int = 10_000
    #: WORK_EXCEPTION reaches every client, not only those that sent OPTION_REQ exceptions (gearmand's
    #: --exceptions; gear's Server always does so).
    exceptions: bool = False
    #: statsd: where gear's metrics go (packet counters and timers, queue gauges); None sends nothing.
    statsd_host: str | None = None
    statsd_port: int = 8125
    statsd_prefix: str | None = None
    #: "memory", "sqlite" or "postgres". An embedded server keeps jobs in memory; a plain `geard` uses GEARD_QUEUE_TYPE.
    queue_type: str = "memory"
    #: The SQLite file; None: default_sqlite_path() (geard passes the per-port file).
    sqlite_db: str | None = None
    #: When a durable background job is acknowledged (see store/sqlite.py): "full", after its commit is fsync'd
    #: (survives a power cut), or "normal", after its commit reached the operating system (survives a killed
    #: server, not a power cut or a kernel crash).
    queue_sync: str = "full"
    #: gearmand's libsqlite3 table in that file whose jobs are taken over at start; None: gearman_queue.
    libsqlite3_table: str | None = None
    #: TOML file of retry policies and repeating schedules (see policy.py); reread on SIGHUP.
    policy_file: str | None = None
    #: Seconds finished jobs stay visible to `show job`; 0 keeps none.
    result_ttl: float = 0.0
    #: Largest WORK_COMPLETE data of a background job kept with its result.
    result_max_bytes: int = 64 * 1024
    #: Finished jobs kept at most (the oldest go first); 0 means no limit.
    result_max_jobs: int = 1_000_000
    #: Dead letters kept at most (oldest dropped first; 0: no limit), and for how many seconds (0: no limit).
    dead_letter_max: int = 10_000
    dead_letter_max_age: float = 0.0
    #: Payload bytes of all dead letters together (the oldest go first); 0 means no limit.
    dead_letter_max_bytes: int = 256 * 1024 * 1024
    #: The HTTP listener (metrics, health, JSON API, dashboard, gearmand's HTTP submission): None is off.
    http_port: int | None = None
    #: Address the HTTP listener binds ("" is every address).
    http_listen: str = ""
    #: A file holding the bearer token HTTP requests must carry (health and metrics are exempt unless
    #: http_token_all).
    http_token_file: str | None = None
    http_token_all: bool = False
    #: Serve gearmand's HTTP job submission alone: any path, GET, POST or PUT submits (as gearmand's -r http).
    http_submit_only: bool = False
    #: Per-function series in /metrics; the rest are summed under function="__other__".
    metrics_max_functions: int = 1000
    #: Keep the counters behind metrics and the dashboard (turned off only to measure what they cost).
    stats: bool = True
    #: PostgreSQL queue: libpq DSN; gearmand's queue table imported once at start.
    postgres_dsn: str | None = None
    postgres_table: str = "queue"
    #: PostgreSQL queue: group commits in flight together, each on a connection of its own.
    postgres_writers: int = 2
    #: Cluster on one PostgreSQL: this node's name (default host:port), lease renewal and take-over delays.
    cluster_node: str | None = None
    lease_interval: float = 2.0
    takeover_after: float = 10.0

    def node_name(self) -> str:
        return self.cluster_node or f"{socket.gethostname()}:{self.listen[0][1] if self.listen else 0}"

    def handle_prefix(self) -> bytes:
        prefix = self.job_handle_prefix or f"H:{socket.gethostname()}"
        return prefix.encode("utf-8")
