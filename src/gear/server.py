"""gear.Server: geartrain's job server behind gear's constructor. geartrain.server is imported only when a
Server is built, so that `import gear` stays light."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

__all__ = ["Server"]


class Server:
    """A Gearman job server (geartrain's), serving in a background thread as soon as it is constructed.

    :arg int port: the TCP port; 0 picks a free one, read back from :py:attr:`port`.
    :arg str ssl_key: path to the TLS private key; with ssl_cert the server speaks TLS, and with ssl_ca too
        it requires and verifies client certificates (their Common Name is the ACL subject).
    :arg str ssl_cert: path to the TLS certificate.
    :arg str ssl_ca: path to the CA certificate.
    :arg str statsd_host: accepted for compatibility (statsd reporting is not built in).
    :arg int statsd_port: see statsd_host.
    :arg str statsd_prefix: see statsd_host.
    :arg str server_id: appended to the logger name (gear.Server.server_id).
    :arg ACL acl: an :py:class:`ACL`; with one, everything not granted is denied.
    :arg str host: the address to listen on; None listens on all interfaces.
    :arg bool keepalive: TCP keepalives (with tcp_keepidle, tcp_keepintvl, tcp_keepcnt).

    Call :py:meth:`shutdown` to stop it. ``jobs`` maps each job handle to the server's job record.
    """

    def __init__(
        self,
        port: int = 4730,
        ssl_key: str | None = None,
        ssl_cert: str | None = None,
        ssl_ca: str | None = None,
        statsd_host: str | None = None,
        statsd_port: int = 8125,
        statsd_prefix: str | None = None,
        server_id: Any = None,
        acl: Any = None,
        host: str | None = None,
        keepalive: bool = False,
        tcp_keepidle: int = 7200,
        tcp_keepintvl: int = 75,
        tcp_keepcnt: int = 9,
        use_epoll: bool = True,
    ) -> None:
        from geartrain.server import Server as GeartrainServer
        from geartrain.server import ServerConfig

        self.log = logging.getLogger(f"gear.Server.{server_id}" if server_id else "gear.Server")
        if host is None:
            # One address family for a picked port, so that .port names the only listener.
            host = "0.0.0.0" if port == 0 else ""
        self.host = host
        self.ssl_key = ssl_key
        self.ssl_cert = ssl_cert
        self.ssl_ca = ssl_ca
        self.acl = acl
        self.server_id = server_id
        self.use_ssl = bool(ssl_key and ssl_cert and ssl_ca)
        options: dict[str, Any] = dict(
            listen=[(host, port)],
            acl=acl,
            keepalive=keepalive,
            tcp_keepidle=tcp_keepidle,
            tcp_keepintvl=tcp_keepintvl,
            tcp_keepcnt=tcp_keepcnt,
        )
        if ssl_key and ssl_cert:
            options.update(ssl_key=ssl_key, ssl_cert=ssl_cert, ssl_ca=ssl_ca)
        known = {f.name for f in dataclasses.fields(ServerConfig)}
        if statsd_host:
            statsd = dict(statsd_host=statsd_host, statsd_port=statsd_port, statsd_prefix=statsd_prefix)
            if {"statsd_host", "statsd_port", "statsd_prefix"} <= known:
                options.update(statsd)
            else:
                self.log.warning("statsd reporting is not available; statsd_host is ignored")
        self.config = ServerConfig(**options)
        self.server = GeartrainServer(self.config)
        self.server.start_in_thread()
        self.port: int = self.server.port
        self.running = True

    @property
    def jobs(self) -> dict:
        """{handle: job record} of every job the server holds (queued or running)."""
        return self.server.broker.jobs

    def _queue(self, priority: int) -> list:
        from geartrain.server.broker import QUEUED

        for _ in range(10):  # the server thread may change the queues while we copy them
            try:
                jobs: dict[int, Any] = {}
                for function in list(self.server.broker.functions.values()):
                    for job in list(function.queues[priority]):
                        # The deques may hold stale entries of jobs that moved on.
                        if job.state == QUEUED and job.priority == priority:
                            jobs.setdefault(id(job), job)
                return list(jobs.values())
            except RuntimeError:
                continue
        return []

    @property
    def high_queue(self) -> list:
        """Queued (not running) high-precedence jobs of every function, oldest first (a copy)."""
        return self._queue(0)

    @property
    def normal_queue(self) -> list:
        """Queued normal-precedence jobs (a copy)."""
        return self._queue(1)

    @property
    def low_queue(self) -> list:
        """Queued low-precedence jobs (a copy)."""
        return self._queue(2)

    def getQueue(self) -> list:
        """Every queued job, high precedence first (a copy)."""
        return self.high_queue + self.normal_queue + self.low_queue

    def shutdown(self) -> None:
        """Stop serving: close the listener and every connection. Idempotent."""
        if self.running:
            self.running = False
            self.server.stop()

    def __repr__(self) -> str:
        return f"<gear.Server 0x{id(self):x} port: {self.port}>"
