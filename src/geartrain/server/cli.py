"""geard: gear's command line, and gearmand's (1.1.20 and 2.0), over geartrain's server.

Options that set one ServerConfig field are rows of CONFIG_OPTIONS and take their defaults from ServerConfig.
The others shape the process (daemon, pid file, logs, user, limits) or build several fields (addresses, queue,
TLS, HTTP) in config_from_args. gearmand's options that mean nothing here are IGNORED_OPTIONS: accepted, with a
warning. gearmand's `--config-file FILE` and `@FILE` read options from a file, whitespace-separated as gearmand
does (one option per line reads naturally); the command line wins over the file.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import logging.handlers
import os
import resource
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .. import __version__
from ..compiled import describe_build
from ..protocol.constants import DEFAULT_PORT
from .config import GEARD_QUEUE_TYPE, ServerConfig

log = logging.getLogger("geartrain.server")

VERBOSE_LEVELS = {
    "FATAL": logging.CRITICAL, "ALERT": logging.CRITICAL, "CRITICAL": logging.CRITICAL, "ERROR": logging.ERROR,
    "WARNING": logging.WARNING, "NOTICE": logging.INFO, "INFO": logging.INFO, "DEBUG": logging.DEBUG,
}

#: gearmand's queue names for ours.
QUEUE_ALIASES = {"builtin": "memory", "libsqlite3": "sqlite", "Postgres": "postgres"}
#: gearmand's HTTP port when `-r http` comes without --http-port.
GEARMAND_HTTP_PORT = 8080
#: Where --syslog sends records (the local syslog daemon's socket).
SYSLOG_ADDRESS = "/dev/log"
#: gearmand's --keepalive-idle/-interval/-count -1 means the system's value: these sysctls hold it.
KEEPALIVE_SYSCTLS = {"tcp_keepidle": "tcp_keepalive_time", "tcp_keepintvl": "tcp_keepalive_intvl",
                     "tcp_keepcnt": "tcp_keepalive_probes"}

#: Options that set one ServerConfig field: (flags, field, argparse keywords). The default is the field's; a help
#: text shows it with "%(default)s". To add an option: add the field (and its default) to ServerConfig, then a row.
CONFIG_OPTIONS: list[tuple[tuple[str, ...], str, dict[str, Any]]] = [
    (("--keepalive",), "keepalive", {"action": "store_true", "help": "enable TCP keepalive on connections"}),
    (("--keepalive-idle",), "tcp_keepidle", {"type": int, "help": "TCP_KEEPIDLE seconds (%(default)s)"}),
    (("--keepalive-interval",), "tcp_keepintvl", {"type": int, "help": "TCP_KEEPINTVL seconds (%(default)s)"}),
    (("--keepalive-count",), "tcp_keepcnt", {"type": int, "help": "TCP_KEEPCNT probes (%(default)s)"}),
    (("-j", "--job-retries"), "job_retries", {
        "type": int, "help": "fail a job requeued more than N times (worker lost or timed out); 0: no limit"}),
    (("--job-handle-prefix",), "job_handle_prefix", {
        "metavar": "PREFIX", "help": 'job handle prefix (default "H:<hostname>")'}),
    (("-w", "--worker-wakeup"), "worker_wakeup", {
        "type": int, "help": "sleeping workers woken per new job (0: one, chained while work remains)"}),
    (("-b", "--backlog"), "backlog", {"type": int, "help": "listen() backlog (%(default)s)"}),
    (("--exceptions",), "exceptions", {
        "action": "store_true", "help": "send WORK_EXCEPTION to every client, not only those that asked "
        "with OPTION_REQ exceptions (gearmand's --exceptions)"}),
    (("--max-packet-size",), "max_packet_size", {
        "type": int, "help": "largest packet body accepted, in bytes (%(default)s)"}),
    (("--max-line-length",), "max_line_length", {
        "type": int, "help": "longest admin text line, in bytes (%(default)s)"}),
    (("--max-unique-length",), "max_unique_length", {
        "type": int, "help": "longest unique, in bytes (%(default)s, as gearmand)"}),
    (("--max-function-length",), "max_function_length", {
        "type": int, "help": "longest function name, in bytes (%(default)s)"}),
    (("--socket-buffer",), "socket_buffer", {
        "type": int, "help": "SO_SNDBUF and SO_RCVBUF of each connection, in bytes (%(default)s; 0: the kernel's "
        "autotuning)"}),
    (("--output-high-water",), "output_high_water", {
        "type": int, "help": "unsent bytes to a peer past which its requests are no longer read (%(default)s)"}),
    (("--output-limit",), "output_limit", {
        "type": int, "help": "unsent bytes to a peer past which it is cut off; its jobs are kept "
        "(%(default)s; 0: none)"}),
    (("--max-connections",), "max_connections", {"type": int, "help": "connection limit (0: none)"}),
    (("--idle-timeout",), "idle_timeout", {
        "type": float, "help": "close connections silent this many seconds that hold no job or registration "
        "(0: off)"}),
    (("--handshake-timeout",), "handshake_timeout", {
        "type": float, "help": "TLS handshake timeout, seconds (%(default)s)"}),
    (("--libsqlite3-table",), "libsqlite3_table", {
        "metavar": "TABLE",
        "help": "gearmand's libsqlite3 table in the queue file: its jobs are taken over at start (gearman_queue)"}),
    (("--queue-sync",), "queue_sync", {
        "choices": ["full", "normal"], "help": "acknowledge a durable job after its commit is fsync'd (full: "
        "survives a power cut) or once the commit reached the OS (normal: survives a killed server) (%(default)s)"}),
    (("--max-queued-bytes",), "max_queued_bytes", {
        "type": int, "help": "total queued job data; submits past it get QUEUE_ERROR (%(default)s; 0: no limit)"}),
    (("--max-queued-jobs",), "max_queued_jobs", {
        "type": int, "help": "jobs held at most (queued, spilled, scheduled, running); submits past it get "
        "QUEUE_ERROR (0: no limit)"}),
    (("--memory-jobs",), "memory_jobs", {
        "type": int, "help": "with a durable queue, queued background jobs kept in memory per "
        "function and priority; the rest wait in the store (%(default)s; 0: all in memory)"}),
    (("--http-port",), "http_port", {
        "type": int, "help": "serve metrics, health, the JSON API, the dashboard and HTTP job submission on this "
        "port"}),
    (("--http-listen",), "http_listen", {"metavar": "ADDRESS", "help": "address of the HTTP listener (all)"}),
    (("--http-submit-only",), "http_submit_only", {
        "action": "store_true", "help": "the HTTP port serves gearmand's job submission alone: every path submits"}),
    (("--http-token-file",), "http_token_file", {
        "metavar": "FILE", "help": "require Authorization: Bearer <the token in this file> over HTTP"}),
    (("--http-token-all",), "http_token_all", {
        "action": "store_true", "help": "require the token on /healthz, /readyz and /metrics too"}),
    (("--metrics-max-functions",), "metrics_max_functions", {
        "type": int, "help": "per-function series in /metrics; the rest are summed as function=\"__other__\" "
        "(%(default)s)"}),
    (("--no-stats",), "stats", {
        "action": "store_false", "help": "keep no job counters (metrics keep only queue gauges); to measure what "
        "counting costs"}),
    (("--max-idle-functions",), "max_idle_functions", {
        "type": int, "help": "functions with no worker and no job kept listed; past it the longest idle go "
        "(%(default)s; 0: all)"}),
    (("--statsd-host",), "statsd_host", {
        "metavar": "HOST", "help": "send gear's statsd metrics to this host (default: $STATSD_HOST; none: off)"}),
    (("--statsd-port",), "statsd_port", {"type": int, "help": "statsd UDP port ($STATSD_PORT, else %(default)s)"}),
    (("--statsd-prefix",), "statsd_prefix", {
        "metavar": "PREFIX", "help": "prefix of every statsd key (default: $STATSD_PREFIX)"}),
    (("--policy-file",), "policy_file", {
        "metavar": "FILE", "help": "TOML file of retry policies and schedules (reread on SIGHUP)"}),
    (("--result-ttl",), "result_ttl", {
        "type": float, "help": "seconds finished jobs stay visible to show job (%(default)s)"}),
    (("--result-max-bytes",), "result_max_bytes", {"type": int, "help": "largest kept result data (%(default)s)"}),
    (("--result-max-jobs",), "result_max_jobs", {"type": int, "help": "finished jobs kept at most (%(default)s)"}),
    (("--dead-letter-max",), "dead_letter_max", {
        "type": int, "help": "dead letters kept at most (%(default)s; 0: no limit)"}),
    (("--dead-letter-max-bytes",), "dead_letter_max_bytes", {
        "type": int, "help": "payload bytes of all dead letters together (%(default)s; 0: no limit)"}),
    (("--dead-letter-max-age",), "dead_letter_max_age", {
        "type": float, "help": "seconds dead letters are kept (0: ever)"}),
    (("--postgres-dsn", "--libpq-conninfo"), "postgres_dsn", {
        "metavar": "DSN", "help": "PostgreSQL DSN of the queue (--queue-type postgres)"}),
    (("--libpq-table",), "postgres_table", {"help": "gearmand's queue table, imported once (%(default)s)"}),
    (("--postgres-writers",), "postgres_writers", {
        "type": int, "help": "group commits in flight together, each on a connection of its own "
        "(%(default)s; more for a database far away)"}),
    (("--cluster-node",), "cluster_node", {
        "metavar": "NAME", "help": "this node's name in a PostgreSQL cluster (default host:port)"}),
    (("--lease-interval",), "lease_interval", {"type": float, "help": "seconds between lease renewals (%(default)s)"}),
    (("--takeover-after",), "takeover_after", {
        "type": float, "help": "seconds a node's lease must be expired before live nodes take its jobs over "
        "(%(default)s)"}),
]

#: Fields whose default a variable of the environment overrides, as gear's geard reads them.
ENVIRONMENT_DEFAULTS = {"statsd_host": "STATSD_HOST", "statsd_port": "STATSD_PORT", "statsd_prefix": "STATSD_PREFIX"}

#: gearmand options that have no meaning in geard: (flags, takes a value, why). Accepted, with a warning.
_OTHER_QUEUE = "that queue type is not available in geard (use sqlite or memory)"
IGNORED_OPTIONS: list[tuple[tuple[str, ...], bool, str]] = [
    (("-t", "--threads"), True, "geard serves every connection from one event loop"),
    (("-R", "--round-robin"), False, "geard hands out jobs in queue order per function"),
    (("--hashtable-buckets",), True, "geard's tables grow by themselves"),
    (("--store-queue-on-shutdown",), False, "geard stores each background job as it arrives"),
    (("--libmemcached-servers", "--libmemcached-prefix", "--redis-server", "--redis-port", "--redis-password",
      "--redis-prefix", "--mysql-host", "--mysql-port", "--mysql-user", "--mysql-password", "--mysql-db",
      "--mysql-table", "--libdrizzle-host", "--libdrizzle-port", "--libdrizzle-uds", "--libdrizzle-user",
      "--libdrizzle-password", "--libdrizzle-db", "--libdrizzle-table", "--libtokyocabinet-file"), True,
     _OTHER_QUEUE),
    (("--libdrizzle-mysql", "--libtokyocabinet-optimize"), False, _OTHER_QUEUE),
]


def _config_defaults() -> dict[str, Any]:
    """ServerConfig's defaults for the CONFIG_OPTIONS fields, or the environment's (ENVIRONMENT_DEFAULTS)."""
    defaults = ServerConfig()
    values = {}
    for _, field, kwargs in CONFIG_OPTIONS:
        value = os.environ.get(ENVIRONMENT_DEFAULTS.get(field, ""))
        values[field] = getattr(defaults, field) if value is None else kwargs.get("type", str)(value)
    return values


class _Ignored(argparse.Action):
    """Records a gearmand option that has no meaning here, for a warning once logging is set up."""

    def __init__(self, option_strings: Sequence[str], dest: str, reason: str = "", **kwargs: Any) -> None:
        self.reason = reason
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        warning = f"{option_string} is accepted for gearmand's command lines and ignored: {self.reason}"
        namespace.ignored = [*getattr(namespace, "ignored", []), warning]  # never the shared default list


def config_file_words(line: str) -> list[str]:
    """@FILE and --config-file: gearmand splits a file at whitespace; lines starting with # are comments."""
    return [] if line.lstrip().startswith("#") else line.split()


class _Parser(argparse.ArgumentParser):
    def convert_arg_line_to_args(self, arg_line: str) -> list[str]:
        return config_file_words(arg_line)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="geard", description="geartrain Gearman job server", fromfile_prefix_chars="@")
    p.set_defaults(ignored=[], **_config_defaults())
    p.add_argument("-d", dest="nodaemon", action="store_true",
                   help="run in the foreground (gear's geard meaning; gearmand's -d is --daemon)")
    p.add_argument("--daemon", action="store_true",
                   help="detach and run in the background (the default unless -d, or when running as PID 1)")
    p.add_argument("-p", "--port", dest="port", type=int, default=None,
                   help=f"port to listen on ({DEFAULT_PORT}, or $GEARMAND_PORT); 0 picks a free one and keeps "
                   "jobs in memory")
    p.add_argument("--listen-address", "-L", "--listen", dest="listen", action="append", default=None,
                   metavar="ADDRESS", help="address to listen on; repeat for several (default: all IPv4 and "
                   "IPv6 addresses)")
    p.add_argument("--ssl-port", type=int, default=None,
                   help="also listen with TLS on this port (the plain port stays plain)")
    p.add_argument("--ssl-ca", "--ssl-ca-file", dest="ssl_ca",
                   help="CA file: client certificates are required and verified against it")
    p.add_argument("--ssl-cert", "--ssl-certificate", dest="ssl_cert", help="server certificate file (TLS)")
    p.add_argument("--ssl-key", help="server private key file (TLS)")
    p.add_argument("--ssl", action="store_true", help="gearmand's switch for TLS: the files come from the "
                   "options above or $GEARMAND_SERVER_PEM, $GEARMAND_SERVER_KEY, $GEARMAND_CA_CERTIFICATE")
    p.add_argument("--acl", help="ACL file: sections named by certificate CN with register=, invoke=, grant= "
                   "(SIGHUP reads it again)")
    p.add_argument("--log-config", help="logging configuration file (logging.config.fileConfig format)")
    p.add_argument("-l", "--log-file", help="log to this file ('stderr': standard error, the default; 'none': "
                   "no log); SIGHUP reopens it")
    p.add_argument("--syslog", action="store_true", help="log to syslog (/dev/log) too")
    p.add_argument("--coredump", action="store_true", help="allow core dumps (raise the core size limit)")
    p.add_argument("--pidfile", "-P", "--pid-file", dest="pidfile", help="write the process id to this file")
    p.add_argument("-u", "--user", help="switch to this user (and its groups) once the ports are bound")
    p.add_argument("-f", "--file-descriptors", type=int, help="raise the open file limit to N")
    p.add_argument("--queue-type", "-q", choices=["memory", "sqlite", "postgres", *QUEUE_ALIASES], default=None,
                   help="where background jobs are kept: sqlite (durable, the default; gearmand: libsqlite3), "
                   "postgres (a database several geard can share; gearmand: Postgres) or memory (gearmand: builtin)")
    p.add_argument("--sqlite-db", "--libsqlite3-db", dest="sqlite_db",
                   help="SQLite file for the durable queue (default: queue-PORT.sqlite3 in $XDG_STATE_HOME/"
                   "geartrain, else ~/.local/state/geartrain; the directory is created)")
    p.add_argument("-r", "--protocol", action="append", choices=["http"], default=[],
                   help=f"gearmand's protocol module: -r http turns the HTTP listener on (port {GEARMAND_HTTP_PORT} "
                   "unless --http-port)")
    for flags, field, kwargs in CONFIG_OPTIONS:
        p.add_argument(*flags, dest=field, **({"metavar": "N"} if "type" in kwargs else {}), **kwargs)
    for flags, takes_value, reason in IGNORED_OPTIONS:
        p.add_argument(*flags, action=_Ignored, reason=reason, nargs=None if takes_value else 0,
                       help=argparse.SUPPRESS)
    p.add_argument("--config-file", metavar="FILE", help="read options from FILE (gearmand's format; also @FILE)")
    p.add_argument("--check-args", action="store_true", help="check the options and exit")
    p.add_argument("--verbose", "-v", nargs="?", const="INFO", default="WARNING", type=str.upper,
                   choices=list(VERBOSE_LEVELS), help="log level without --log-config (%(default)s)")
    p.add_argument("-V", "--version", action="version", version=f"geard (geartrain) {__version__}, {describe_build()}")
    return p


def expand_config_file(argv: Sequence[str]) -> list[str]:
    """gearmand's --config-file FILE: its options go first, so that the command line wins over them."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config-file" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config-file="):
            path = arg.split("=", 1)[1]
        else:
            continue
        try:
            with open(path, encoding="utf-8") as f:
                from_file = [word for line in f for word in config_file_words(line)]
        except OSError as exc:
            raise SystemExit(f"geard: cannot read the configuration file {path}: {exc.strerror}") from None
        return from_file + argv
    return argv


def _queue(args: argparse.Namespace, port: int) -> tuple[str, str | None]:
    """(queue_type, sqlite_db): a plain geard keeps jobs in GEARD_QUEUE_TYPE, in a file named after its port."""
    explicit = QUEUE_ALIASES.get(args.queue_type, args.queue_type)
    queue_type = explicit or (GEARD_QUEUE_TYPE if port or args.sqlite_db else "memory")
    if queue_type != "sqlite":
        return queue_type, None
    if args.sqlite_db:
        return "sqlite", os.path.abspath(args.sqlite_db)  # absolute: daemonizing changes the directory
    if not port:
        raise ValueError("-q sqlite with -p 0 needs --sqlite-db FILE (there is no port to name the file after)")
    from .store.engines import default_sqlite_path

    return "sqlite", str(default_sqlite_path(port))


def _tls_files(args: argparse.Namespace) -> tuple[str | None, str | None, str | None]:
    key, cert, ca = args.ssl_key, args.ssl_cert, args.ssl_ca
    if args.ssl:  # gearmand: files from the options, else from its environment variables
        key = key or os.environ.get("GEARMAND_SERVER_KEY")
        cert = cert or os.environ.get("GEARMAND_SERVER_PEM")
        ca = ca or os.environ.get("GEARMAND_CA_CERTIFICATE")
        if not (key and cert):
            raise ValueError("--ssl needs --ssl-key and --ssl-certificate (or $GEARMAND_SERVER_KEY and "
                             "$GEARMAND_SERVER_PEM)")
    return (os.path.abspath(key) if key else None, os.path.abspath(cert) if cert else None,
            os.path.abspath(ca) if ca else None)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig of a command line: CONFIG_OPTIONS fields as given (a few checked or completed), and the
    fields built from several options (addresses, queue, TLS, ACL)."""
    values = {field: getattr(args, field) for _, field, _ in CONFIG_OPTIONS}
    values["policy_file"] = checked_policy_file(values["policy_file"])
    values["http_token_file"] = checked_token_file(values["http_token_file"])
    if args.protocol and values["http_port"] is None:
        values["http_port"] = GEARMAND_HTTP_PORT  # gearmand's -r http
    for field, sysctl in KEEPALIVE_SYSCTLS.items():
        if values[field] < 0:
            values[field] = system_keepalive(field, sysctl)
    if args.listen and not values["http_listen"]:
        values["http_listen"] = args.listen[0]  # as gearmand: HTTP listens where the server was told to (-L)
    port = args.port
    if port is None:
        port = int(os.environ.get("GEARMAND_PORT") or DEFAULT_PORT)  # gearmand reads $GEARMAND_PORT too
    hosts = args.listen or [""]
    queue_type, sqlite_db = _queue(args, port)
    acl = acl_file = None
    if args.acl:
        from .acl import load_acl_file

        acl_file = os.path.abspath(args.acl)
        acl = load_acl_file(acl_file)
    ssl_key, ssl_cert, ssl_ca = _tls_files(args)
    return ServerConfig(
        listen=[(host, port) for host in hosts],
        ssl_key=ssl_key, ssl_cert=ssl_cert, ssl_ca=ssl_ca,
        ssl_listen=[(host, args.ssl_port) for host in hosts] if args.ssl_port else [],
        tls_on_main=args.ssl_port is None, acl=acl, acl_file=acl_file,
        queue_type=queue_type, sqlite_db=sqlite_db, **values,
    )


def system_keepalive(field: str, sysctl: str) -> int:
    """The kernel's keepalive setting (gearmand's -1), else ServerConfig's default (Linux's own)."""
    try:
        with open(f"/proc/sys/net/ipv4/{sysctl}") as f:
            return int(f.read())
    except (OSError, ValueError):
        return int(getattr(ServerConfig(), field))


def checked_token_file(path: str | None) -> str | None:
    """The HTTP token file as an absolute path (daemonizing changes directory), read once: a missing or empty
    token file stops geard before it starts."""
    if not path:
        return None
    from .http.security import load_token

    load_token(path)
    return os.path.abspath(path)


def checked_policy_file(path: str | None) -> str | None:
    """The policy file as an absolute path, read once so that a bad one stops geard with the reason."""
    if not path:
        return None
    from .policy import load_policy_file

    load_policy_file(path)
    return os.path.abspath(path)


def setup_logging(args: argparse.Namespace) -> None:
    if args.log_config:
        if not os.path.exists(args.log_config):
            raise SystemExit(f"geard: unable to read logging config file at {args.log_config}")
        logging.config.fileConfig(args.log_config, disable_existing_loggers=False)
        ours, gears = logging.getLogger("geartrain"), logging.getLogger("gear")
        if not ours.handlers and gears.handlers:
            # Configuration files written for gear's geard name the "gear" logger: log through it.
            ours.parent = gears
        return
    handlers: list[logging.Handler] = []
    if args.log_file in (None, "stderr"):
        handlers.append(logging.StreamHandler())
    elif args.log_file != "none":
        handlers.append(logging.FileHandler(args.log_file))  # SIGHUP reopens it (Server.reload)
    if args.syslog:
        try:
            syslog = logging.handlers.SysLogHandler(SYSLOG_ADDRESS)
        except OSError as exc:
            print(f"geard: --syslog: cannot reach {SYSLOG_ADDRESS} ({exc.strerror}); not logging to syslog",
                  file=sys.stderr)
        else:
            syslog.ident = "geard: "
            handlers.append(syslog)
    if not handlers:
        handlers.append(logging.NullHandler())
    logging.basicConfig(level=VERBOSE_LEVELS[args.verbose], handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def set_limits(args: argparse.Namespace) -> None:
    """gearmand's -f (open files) and --coredump (core size): raise the soft limit, and the hard one if root."""
    for wanted, limit, name in ((args.file_descriptors, resource.RLIMIT_NOFILE, "--file-descriptors"),
                                (resource.RLIM_INFINITY if args.coredump else None, resource.RLIMIT_CORE,
                                 "--coredump")):
        if wanted is None:
            continue
        soft, hard = resource.getrlimit(limit)
        if limit == resource.RLIMIT_CORE and os.geteuid() != 0:
            wanted = hard  # as far as an unprivileged process may go
        new_hard = hard if hard == resource.RLIM_INFINITY or (wanted != resource.RLIM_INFINITY and
                                                              wanted <= hard) else wanted
        try:
            resource.setrlimit(limit, (wanted, new_hard))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"geard: {name}: cannot raise the limit to {wanted} (hard limit {hard}): {exc}; "
                             "run as root or raise the hard limit") from None


def user_to_become(user: str | None) -> Any:
    """gearmand's -u: the passwd entry to switch to once the ports are bound (None: stay). Checked before the
    server starts, so that a wrong name fails at once."""
    if not user:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SystemExit(f"geard: --user {user}: no such user") from None
    if os.geteuid() == entry.pw_uid:
        return None
    if os.geteuid() != 0:
        raise SystemExit(f"geard: --user {user}: only root can switch users (running as uid {os.geteuid()})")
    return entry


def switch_user(entry: Any) -> None:
    """Become the user of a passwd entry, with its group and supplementary groups."""
    os.initgroups(entry.pw_name, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def daemonize() -> Callable[[bool], None]:
    """Detach as geard and gearmand do (double fork, new session). The first process waits until the server is
    ready, so that a service manager finds the pid file and the port open, and exits 0, or 1 if the server fails
    to start. Returns what the server calls when it is ready (True) or has failed (False)."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as status:
            os._exit(0 if status.read(1) == b"1" else 1)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")

    reported = False

    def detached(ok: bool) -> None:
        nonlocal reported
        if reported:
            return
        reported = True
        if ok:
            with open(os.devnull, "rb") as devnull_in, open(os.devnull, "ab") as devnull_out:
                os.dup2(devnull_in.fileno(), 0)
                os.dup2(devnull_out.fileno(), 1)
                os.dup2(devnull_out.fileno(), 2)
            os.write(write_end, b"1")
        os.close(write_end)

    return detached


def startup_line(server: Any) -> str:
    """The one line geard prints when it is ready: where it listens and which queue it keeps."""
    addresses = []
    for listener in server.listeners:
        for sock in listener.sockets:
            host, port = sock.getsockname()[:2]
            addresses.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    store = server.store
    queue = "memory" if store is None else f"{store.location} ({store.replayed} jobs replayed)"
    return f"geard {__version__}: listening on {', '.join(addresses)}; queue: {queue}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(expand_config_file(sys.argv[1:] if argv is None else argv))
    try:
        config = config_from_args(args)
    except Exception as exc:  # a bad ACL file, for instance: say what to fix
        print(f"geard: {exc}", file=sys.stderr)
        return 2
    for name in ("pidfile", "log_config", "log_file"):
        value = getattr(args, name)
        if value and value not in ("stderr", "none"):
            setattr(args, name, os.path.abspath(value))
    setup_logging(args)
    for warning in args.ignored:
        log.warning("%s", warning)
    if args.check_args:
        return 0
    set_limits(args)
    become = user_to_become(args.user)
    detached: Callable[[bool], None] | None = None
    if (args.daemon or not args.nodaemon) and os.getpid() != 1:  # as PID 1 (a container) there is no one to leave
        detached = daemonize()
    from .app import Server
    from .store import StoreError
    from .systemd import Notifier

    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    notifier = Notifier()

    def started(server: Server) -> None:
        if become is not None:
            switch_user(become)
        line = startup_line(server)
        print(line, file=sys.stderr, flush=True)
        log.info("%s", line)
        if detached is not None:
            detached(True)
        server.on_stopping = notifier.stopping
        notifier.ready(line)
        assert server.loop is not None
        notifier.start_watchdog(server.loop)

    try:
        Server(config).run(on_started=started)
    except (OSError, StoreError, ValueError) as exc:
        if args.log_config or args.log_file not in (None, "stderr"):
            log.error("geard: %s", exc)  # the log is elsewhere: say it there too
        print(f"geard: {exc}", file=sys.stderr)
        return 1
    finally:
        if detached is not None:
            detached(False)
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
