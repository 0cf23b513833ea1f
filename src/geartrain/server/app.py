"""Server: listeners, lifecycle (start/stop in a loop or a thread, graceful shutdown), signals and timers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import socket
import threading
import time
from typing import Any

from .admin import Admin, restore_max_queues
from .broker import Broker
from .collector import tune_collector
from .config import ServerConfig
from .lifecycle import Lifecycle
from .lifecycle_admin import LifecycleCommands
from .memory import return_large_buffers, trim_every
from .transport import GearmanProtocol, ServerState

log = logging.getLogger("geartrain.server")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (it halves the per-packet cost), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def reopen_log_files() -> None:
    """SIGHUP: close every logging file handler's stream so that the next record reopens the file."""
    for ref in list(logging._handlerList):  # type: ignore[attr-defined]
        handler = ref()
        if isinstance(handler, logging.FileHandler):
            with handler.lock:  # type: ignore[union-attr]
                if handler.stream is not None:
                    handler.stream.close()
                    handler.stream = None  # type: ignore[assignment]
    log.info("reopened log files")


class Server:
    """A geartrain job server: build it from a ServerConfig, then start() in a loop or start_in_thread()."""

    def __init__(self, config: ServerConfig | None = None, **options: Any) -> None:
        self.config = config or ServerConfig(**options)
        self.store = self._open_store()
        self.broker = Broker(
            self.config.handle_prefix(),
            job_retries=self.config.job_retries,
            worker_wakeup=self.config.worker_wakeup,
            max_unique_length=self.config.max_unique_length,
            max_function_length=self.config.max_function_length,
            max_queued_bytes=self.config.max_queued_bytes,
            max_queued_jobs=self.config.max_queued_jobs,
            max_idle_functions=self.config.max_idle_functions,
            exceptions=self.config.exceptions,
            store=self.store,
            acl=self.config.acl,
        )
        self.lifecycle = Lifecycle(
            self.broker, policy_file=self.config.policy_file, result_ttl=self.config.result_ttl,
            result_max_bytes=self.config.result_max_bytes, result_max_jobs=self.config.result_max_jobs,
            dead_letter_max=self.config.dead_letter_max, dead_letter_max_age=self.config.dead_letter_max_age,
            dead_letter_max_bytes=self.config.dead_letter_max_bytes,
        )
        if not self.config.stats:
            self.broker.stats = None
        if self.store is not None and self.store.can_spill and self.config.memory_jobs > 0:
            from .spill import Spill

            Spill(self.broker, self.store, self.config.memory_jobs)
        self.admin = Admin(self.broker, self)
        LifecycleCommands(self.lifecycle, self).install(self.admin)
        self.statsd = self._statsd_reporter()
        #: True once every listener is up and the durable queue is replayed, until shutdown begins (/readyz).
        self.ready = False
        #: The HTTP listener (geartrain.server.http.HttpService) when config.http_port is set.
        self.http: Any = None
        #: What the connections see (transport.py): config, broker, admin, store, connections; the flush pass.
        self.state = ServerState(self.config, self.broker, self.admin, self.store)
        self.connections: set[GearmanProtocol] = self.state.connections
        self.listeners: list[asyncio.base_events.Server] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        #: The TLS context new connections get (SIGHUP replaces it: see reload()).
        self.ssl_context: Any = None
        #: Called once when shutdown begins (geard tells systemd STOPPING=1).
        self.on_stopping: Any = None
        self._close_requested = False

    def _statsd_reporter(self) -> Any:
        if not self.config.statsd_host:
            return None
        try:
            from .statsd_reporter import StatsdReporter, broker_gauges
        except ImportError as exc:
            raise ValueError(f"statsd reporting needs the statsd package ({exc}): pip install 'geartrain[statsd]'")

        reporter = StatsdReporter(self.config.statsd_host, self.config.statsd_port, self.config.statsd_prefix,
                                  gauges=broker_gauges(self.broker))
        reporter.instrument(self.broker.handlers)
        return reporter

    def _open_store(self) -> Any:
        if self.config.queue_type == "memory":
            return None
        if self.config.queue_type in ("sqlite", "postgres"):
            from .store.engines import open_store

            return open_store(self.config)
        raise ValueError(f"unknown queue type {self.config.queue_type!r}: use memory, sqlite or postgres")

    # ------------------------------------------------------------------ addresses

    @property
    def ports(self) -> list[int]:
        """The ports actually listened on, in the order of config.listen then config.ssl_listen."""
        ports = []
        for listener in self.listeners:
            for sock in listener.sockets:
                port = sock.getsockname()[1]
                if port not in ports:
                    ports.append(port)
        return ports

    @property
    def port(self) -> int:
        return self.ports[0]

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Listen on every configured address (call inside the loop that will run the server)."""
        loop = self.loop = self.state.loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self.broker.on_timer_change = self._timer_changed
        if self.config.http_port is not None:  # first, so that /readyz answers 503 while the queue replays
            from .http import HttpService

            self.http = HttpService(self)
            await self.http.start()
        if self.store is not None:
            await self.store.start(self.state)
        stored_state = self.store.stored_state() if self.store is not None else {}
        restore_max_queues(self.broker, stored_state)
        self.lifecycle.start(stored_state)
        config = self.config
        if config.ssl_key and config.ssl_cert:
            from .tls import server_context

            self.ssl_context = server_context(config.ssl_key, config.ssl_cert, config.ssl_ca)
        elif config.ssl_listen:
            raise ValueError("TLS listeners need ssl_key and ssl_cert")
        main_tls = self.ssl_context is not None and config.tls_on_main
        addresses = [(host, port, main_tls) for host, port in config.listen]
        addresses += [(host, port, True) for host, port in config.ssl_listen]
        for host, port, tls in addresses:
            # The context is looked up per connection, so that a reloaded certificate serves new connections.
            listener = await loop.create_server(
                lambda tls=tls: GearmanProtocol(self.state, self.ssl_context if tls else None), host or None, port,
                reuse_address=True, backlog=config.backlog,
                family=socket.AF_INET6 if ":" in host else socket.AF_UNSPEC,
            )
            self.listeners.append(listener)
            log.info("listening on %s port %d%s", host or "*", listener.sockets[0].getsockname()[1],
                     " (TLS)" if tls else "")
        self._timer_changed(self.broker.next_timer())
        if self.statsd is not None:
            self.statsd.start(loop)
        self.ready = True

    async def wait_stopped(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    async def close(self) -> None:
        """Stop listening, close every connection, and close the store."""
        self.ready = False
        if self.http is not None:
            await self.http.close()
            self.http = None
        for listener in self.listeners:
            listener.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for listener in self.listeners:
            await listener.wait_closed()
        self.listeners.clear()
        if self._timer is not None:
            self._timer.cancel()
        if self.statsd is not None:
            self.statsd.close()
            self.statsd = None
        if self.store is not None:
            await self.store.close()
        if self._stopped is not None:
            self._stopped.set()

    def request_shutdown(self, graceful: bool = False) -> None:
        """Stop now, or (graceful) stop accepting, let running jobs finish, then stop."""
        loop = self.loop
        if loop is None:
            return
        if self.on_stopping is not None:
            on_stopping, self.on_stopping = self.on_stopping, None
            on_stopping()
        if not graceful:
            loop.call_soon(self._close_once)
            return
        self.ready = False
        for listener in self.listeners:
            listener.close()
        leaving = getattr(self.store, "leaving", None)
        if leaving is not None:  # a cluster node: its queued jobs go to the live nodes now, not after the drain
            leaving()
        self._check_drained()

    def _check_drained(self) -> None:
        if any(f.running for f in self.broker.functions.values()):
            assert self.loop is not None
            self.loop.call_later(0.05, self._check_drained)
        else:
            self._close_once()

    def _close_once(self) -> None:
        """Shutdown closes once: a second SIGTERM (or Ctrl-C) while closing must not start a second close()."""
        if not self._close_requested:
            self._close_requested = True
            asyncio.ensure_future(self.close())

    def run(self, on_started: Any = None) -> None:
        """Serve until shutdown (blocking), with SIGTERM/SIGINT (stop), SIGUSR1 (graceful) and SIGHUP
        (reload()) handled; the `geard` entry point."""
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            # Handlers first: a signal that arrives as soon as the port is open must find them in place.
            self.loop = loop
            for signum, action in (
                (signal.SIGTERM, lambda: self.request_shutdown(False)),
                (signal.SIGINT, lambda: self.request_shutdown(False)),
                (signal.SIGUSR1, lambda: self.request_shutdown(True)),
                (signal.SIGHUP, self.reload),
            ):
                loop.add_signal_handler(signum, action)
            # One run of the loop from start to stop: uvloop drops a signal that arrives between two runs.
            loop.run_until_complete(self._serve(on_started))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self, on_started: Any) -> None:
        await self.start()
        assert self._stopped is not None
        if self._stopped.is_set():
            await self.close()  # stopped while starting: close what start() opened
            return
        if on_started is not None:
            on_started(self)
        tune_collector()
        return_large_buffers()
        trimming = asyncio.get_running_loop().create_task(trim_every())
        try:
            await self.wait_stopped()
        finally:
            trimming.cancel()

    def reload(self) -> None:
        """SIGHUP: reopen log files, and reread the policy file, the ACL file and the TLS files; new connections
        use the new certificate. A file that fails to load keeps the current setting, with a log line saying why."""
        from .reload import reread_acl, reread_tls

        reopen_log_files()
        try:
            self.lifecycle.reload()
        except ValueError as exc:
            log.error("policy file not reloaded: %s", exc)
        acl = reread_acl(self.config)
        if acl is not None:
            self.config.acl = self.broker.acl = acl
        context = reread_tls(self.config)
        if context is not None:
            self.ssl_context = context
        self.state.schedule_flush()

    def start_in_thread(self, timeout: float = 30.0) -> None:
        """Serve from a background thread; returns once listening (for tests and embedding)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_until_complete(self.wait_stopped())
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="geartrain-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("the server did not start listening in time")
        if failure:
            raise failure[0]

    def stop(self, timeout: float = 30.0) -> None:
        """Stop a server started with start_in_thread() and wait for its thread."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive() and not loop.is_closed():
            try:
                future = asyncio.run_coroutine_threadsafe(self.close(), loop)
            except RuntimeError:
                future = None  # the loop closed meanwhile
            deadline = time.monotonic() + timeout
            # The loop may stop by itself (shutdown was requested): then the future never runs.
            while future is not None and thread.is_alive() and time.monotonic() < deadline:
                try:
                    future.result(0.05)
                    break
                except concurrent.futures.TimeoutError:
                    continue
        thread.join(timeout)
        self._thread = None

    # ------------------------------------------------------------------ timers

    def _timer_changed(self, when: float | None) -> None:
        if when is None or self.loop is None:
            return
        if self._timer is not None and self._timer_when <= when and not self._timer.cancelled():
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = when
        delay = max(0.0, when - time.time())
        self._timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.broker.run_timers()
        self.state.schedule_flush()
        following = self.broker.next_timer()
        if following is not None:
            self._timer_changed(following)
