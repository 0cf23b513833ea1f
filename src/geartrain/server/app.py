"""Server: listeners, the flush pass, timers, start/stop in a loop or a thread, graceful shutdown."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import signal
import socket
import threading
import time
from typing import Any

from .admin import Admin
from .broker import Broker
from .config import ServerConfig
from .transport import GearmanProtocol

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
            store=self.store,
            acl=self.config.acl,
        )
        self.admin = Admin(self.broker, self)
        self.connections: set[GearmanProtocol] = set()
        #: The receive buffer every connection of this server reads into (see GearmanProtocol.get_buffer).
        self.read_view = memoryview(bytearray(256 * 1024))
        self.listeners: list[asyncio.base_events.Server] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def _open_store(self) -> Any:
        if self.config.queue_type == "memory":
            return None
        if self.config.queue_type in ("sqlite", "postgres"):
            from .store import open_store

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
        loop = self.loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self.broker.on_timer_change = self._timer_changed
        if self.store is not None:
            await self.store.start(self)
        config = self.config
        ssl_context = None
        if config.ssl_key and config.ssl_cert:
            from .tls import server_context

            ssl_context = server_context(config.ssl_key, config.ssl_cert, config.ssl_ca)
        plain = [(host, port, ssl_context if config.tls_on_main else None) for host, port in config.listen]
        secure = []
        if config.ssl_listen:
            if not (config.ssl_key and config.ssl_cert):
                raise ValueError("TLS listeners need ssl_key and ssl_cert")
            from .tls import server_context

            tls = server_context(config.ssl_key, config.ssl_cert, config.ssl_ca)
            secure = [(host, port, tls) for host, port in config.ssl_listen]
        for host, port, context in plain + secure:
            listener = await loop.create_server(
                lambda context=context: GearmanProtocol(self, context), host or None, port,
                reuse_address=True, backlog=1024,
                family=socket.AF_INET6 if ":" in host else socket.AF_UNSPEC,
            )
            self.listeners.append(listener)
            log.info("listening on %s port %d%s", host or "*", listener.sockets[0].getsockname()[1],
                     " (TLS)" if context is not None else "")
        self._timer_changed(self.broker.next_timer())

    async def wait_stopped(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    async def close(self) -> None:
        """Stop listening, close every connection, and close the store."""
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
        if self.store is not None:
            await self.store.close()
        if self._stopped is not None:
            self._stopped.set()

    def request_shutdown(self, graceful: bool = False) -> None:
        """Stop now, or (graceful) stop accepting, let running jobs finish, then stop."""
        loop = self.loop
        if loop is None:
            return
        if not graceful:
            loop.call_soon(lambda: asyncio.ensure_future(self.close()))
            return
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
            asyncio.ensure_future(self.close())

    def run(self, on_started: Any = None) -> None:
        """Serve until shutdown (blocking), with SIGTERM/SIGINT (stop), SIGUSR1 (graceful) and SIGHUP
        (reopen log files) handled; the `geard` entry point."""
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            # Handlers first: a signal that arrives as soon as the port is open must find them in place.
            self.loop = loop
            for signum, action in (
                (signal.SIGTERM, lambda: self.request_shutdown(False)),
                (signal.SIGINT, lambda: self.request_shutdown(False)),
                (signal.SIGUSR1, lambda: self.request_shutdown(True)),
                (signal.SIGHUP, reopen_log_files),
            ):
                loop.add_signal_handler(signum, action)
            loop.run_until_complete(self.start())
            if self._stopped is not None and self._stopped.is_set():
                loop.run_until_complete(self.close())  # stopped while starting: close what start() opened
            if on_started is not None:
                on_started(self)
            # A server process holds millions of long-lived, acyclic job objects: collect the young
            # generation less often, and leave start-up objects out of every collection.
            gc.freeze()
            gc.set_threshold(20_000, 50, 100)
            loop.run_until_complete(self.wait_stopped())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

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

    # ------------------------------------------------------------------ output and timers

    def schedule_flush(self) -> None:
        if not self._flush_scheduled and self.broker.dirty:
            self._flush_scheduled = True
            assert self.loop is not None
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every peer's collected output: one write per connection per loop pass."""
        self._flush_scheduled = False
        dirty = self.broker.dirty
        if not dirty:
            return
        store = self.store
        if store is not None and store.pending():
            store.commit_then(self.flush)
        self.broker.dirty = []
        for peer in dirty:
            if peer.out and not peer.closed and (store is None or not store.holds(peer)):
                peer.conn.write(peer.take_chunks())
            elif peer.out and not peer.closed:
                self.broker.dirty.append(peer)

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
        self.schedule_flush()
        following = self.broker.next_timer()
        if following is not None:
            self._timer_changed(following)
