"""geard: gear's command line (and the gearmand options users reach for) over geartrain's server."""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..protocol.constants import DEFAULT_MAX_LINE_LENGTH, DEFAULT_MAX_PACKET_SIZE
from .config import ServerConfig

log = logging.getLogger("geartrain.server")

VERBOSE_LEVELS = {
    "FATAL": logging.CRITICAL, "ERROR": logging.ERROR, "WARNING": logging.WARNING, "NOTICE": logging.INFO,
    "INFO": logging.INFO, "DEBUG": logging.DEBUG,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geard", description="geartrain Gearman job server")
    p.add_argument("-d", dest="nodaemon", action="store_true", help="run in the foreground (do not daemonize)")
    p.add_argument("-p", "--port", dest="port", type=int, default=4730, help="port to listen on (4730)")
    p.add_argument("--listen-address", "-L", "--listen", dest="listen", action="append", default=None,
                   metavar="ADDRESS", help="address to listen on; repeat for several (default: all IPv4 and "
                   "IPv6 addresses)")
    p.add_argument("--ssl-port", type=int, default=None,
                   help="also listen with TLS on this port (the plain port stays plain)")
    p.add_argument("--ssl-ca", help="CA file: client certificates are required and verified against it")
    p.add_argument("--ssl-cert", help="server certificate file (TLS)")
    p.add_argument("--ssl-key", help="server private key file (TLS)")
    p.add_argument("--acl", help="ACL file: sections named by certificate CN with register=, invoke=, grant=")
    p.add_argument("--log-config", help="logging configuration file (logging.config.fileConfig format)")
    p.add_argument("--pidfile", "-P", "--pid-file", dest="pidfile", help="write the process id to this file")
    p.add_argument("--keepalive", action="store_true", help="enable TCP keepalive on connections")
    p.add_argument("--keepalive-idle", type=int, default=7200, help="TCP_KEEPIDLE seconds (7200)")
    p.add_argument("--keepalive-interval", type=int, default=75, help="TCP_KEEPINTVL seconds (75)")
    p.add_argument("--keepalive-count", type=int, default=9, help="TCP_KEEPCNT probes (9)")
    p.add_argument("--job-retries", "-j", type=int, default=0,
                   help="fail a job requeued more than N times (worker lost or timed out); 0: no limit")
    p.add_argument("--job-handle-prefix", help='job handle prefix (default "H:<hostname>")')
    p.add_argument("--max-packet-size", type=int, default=DEFAULT_MAX_PACKET_SIZE,
                   help=f"largest packet body accepted, in bytes ({DEFAULT_MAX_PACKET_SIZE})")
    p.add_argument("--worker-wakeup", type=int, default=0,
                   help="sleeping workers woken per new job (0: one, chained while work remains)")
    p.add_argument("--max-line-length", type=int, default=DEFAULT_MAX_LINE_LENGTH,
                   help=f"longest admin text line, in bytes ({DEFAULT_MAX_LINE_LENGTH})")
    p.add_argument("--max-unique-length", type=int, default=64, help="longest unique, in bytes (64, as gearmand)")
    p.add_argument("--max-function-length", type=int, default=512, help="longest function name, in bytes (512)")
    p.add_argument("--output-high-water", type=int, default=4 * 1024 ** 2,
                   help="unsent bytes to a peer past which its requests are no longer read (4 MiB)")
    p.add_argument("--output-limit", type=int, default=256 * 1024 ** 2,
                   help="unsent bytes to a peer past which it is cut off; its jobs are kept (256 MiB; 0: none)")
    p.add_argument("--max-connections", type=int, default=0, help="connection limit (0: none)")
    p.add_argument("--idle-timeout", type=float, default=0.0,
                   help="close connections silent this many seconds that hold no job or registration (0: off)")
    p.add_argument("--handshake-timeout", type=float, default=10.0, help="TLS handshake timeout, seconds (10)")
    p.add_argument("--max-queued-bytes", type=int, default=2 * 1024 ** 3,
                   help="total queued job data; submits past it get QUEUE_ERROR (2 GiB; 0: no limit)")
    p.add_argument("--queue-type", "-q", choices=["memory", "sqlite", "builtin", "libsqlite3", "postgres", "Postgres"],
                   default=None, help="where background jobs are kept: sqlite (durable, the default) or "
                   "memory (lost when the server stops)")
    p.add_argument("--sqlite-db", "--libsqlite3-db", dest="sqlite_db",
                   help="SQLite file for the durable queue (default: $XDG_STATE_HOME/geartrain/queue.sqlite3, "
                   "else ~/.local/state/geartrain/queue.sqlite3; the directory is created)")
    p.add_argument("--postgres-dsn", "--libpq-conninfo", dest="postgres_dsn", help="PostgreSQL DSN of the queue")
    p.add_argument("--libpq-table", default=ServerConfig.postgres_table,
                   help="gearmand's queue table, imported once (%(default)s)")
    p.add_argument("--cluster-node", help="this node's name in a PostgreSQL cluster (default host:port)")
    p.add_argument("--lease-interval", type=float, default=ServerConfig.lease_interval,
                   help="seconds between lease renewals (%(default)s)")
    p.add_argument("--takeover-after", type=float, default=ServerConfig.takeover_after,
                   help="seconds a node's lease must be expired before live nodes take its jobs over (%(default)s)")
    p.add_argument("--verbose", "-v", nargs="?", const="INFO", default="WARNING", type=str.upper,
                   choices=sorted(VERBOSE_LEVELS), help="log level without --log-config (WARNING)")
    p.add_argument("--version", action="version", version=f"geard (geartrain) {__version__}")
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    hosts = args.listen or [""]
    aliases = {"builtin": "memory", "libsqlite3": "sqlite", "Postgres": "postgres"}
    queue_type = aliases.get(args.queue_type, args.queue_type)
    if queue_type is None:
        queue_type = "sqlite"  # a plain geard keeps background jobs across restarts
    sqlite_db = None
    if queue_type == "sqlite":
        from .store import default_sqlite_path

        # Absolute: daemonizing changes the working directory.
        sqlite_db = os.path.abspath(args.sqlite_db) if args.sqlite_db else str(default_sqlite_path())
    acl = None
    if args.acl:
        from .acl import load_acl_file

        acl = load_acl_file(args.acl)
    ssl_listen = [(host, args.ssl_port) for host in hosts] if args.ssl_port else []
    plain_tls = args.ssl_port is None
    return ServerConfig(
        listen=[(host, args.port) for host in hosts],
        ssl_key=args.ssl_key, ssl_cert=args.ssl_cert, ssl_ca=args.ssl_ca,
        ssl_listen=ssl_listen, tls_on_main=plain_tls, acl=acl,
        keepalive=args.keepalive, tcp_keepidle=args.keepalive_idle, tcp_keepintvl=args.keepalive_interval,
        tcp_keepcnt=args.keepalive_count, job_retries=args.job_retries, job_handle_prefix=args.job_handle_prefix,
        worker_wakeup=args.worker_wakeup, max_packet_size=args.max_packet_size,
        max_line_length=args.max_line_length, max_unique_length=args.max_unique_length,
        max_function_length=args.max_function_length, output_high_water=args.output_high_water,
        output_limit=args.output_limit,
        max_connections=args.max_connections, idle_timeout=args.idle_timeout,
        handshake_timeout=args.handshake_timeout, max_queued_bytes=args.max_queued_bytes,
        queue_type=queue_type, sqlite_db=sqlite_db, postgres_dsn=args.postgres_dsn,
        postgres_table=args.libpq_table, cluster_node=args.cluster_node,
        lease_interval=args.lease_interval, takeover_after=args.takeover_after,
    )


def setup_logging(args: argparse.Namespace) -> None:
    if args.log_config:
        if not os.path.exists(args.log_config):
            raise SystemExit(f"geard: unable to read logging config file at {args.log_config}")
        logging.config.fileConfig(args.log_config, disable_existing_loggers=False)
        ours, gears = logging.getLogger("geartrain"), logging.getLogger("gear")
        if not ours.handlers and gears.handlers:
            # Configuration files written for gear's geard name the "gear" logger: log through it.
            ours.parent = gears
    else:
        logging.basicConfig(level=VERBOSE_LEVELS[args.verbose],
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def daemonize() -> None:
    """Detach as geard does: double fork, new session, stdio to /dev/null."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    with open(os.devnull, "rb") as devnull_in, open(os.devnull, "ab") as devnull_out:
        os.dup2(devnull_in.fileno(), 0)
        os.dup2(devnull_out.fileno(), 1)
        os.dup2(devnull_out.fileno(), 2)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except Exception as exc:  # a bad ACL file, for instance: say what to fix
        print(f"geard: {exc}", file=sys.stderr)
        return 2
    if args.pidfile:
        args.pidfile = os.path.abspath(args.pidfile)
    if args.log_config:
        args.log_config = os.path.abspath(args.log_config)
    if not args.nodaemon:
        daemonize()
    setup_logging(args)
    from .app import Server

    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    from .store import StoreError

    try:
        Server(config).run()
    except (OSError, StoreError) as exc:
        log.error("geard: %s", exc)
        print(f"geard: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
