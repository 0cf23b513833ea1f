"""The admin text protocol, with gearmand's answer formats so that gearadmin and existing scripts parse them."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from typing import Any

from .. import __version__
from ..protocol.constants import PRIORITY_NAMES
from .broker import Broker, Peer

log = logging.getLogger("geartrain.admin")

OK = b"OK\r\n"
#: The kind of server state (Store.save_state) that keeps maxqueue limits: key the function name in hex.
MAXQUEUE = "maxqueue"
LEVELS = ("FATAL", "ERROR", "WARNING", "INFO", "DEBUG")


def err(code: str, message: str = "") -> bytes:
    """gearmand's ERR line: the message with spaces written as '+'."""
    text = message.replace(" ", "+")
    return f"ERR {code} {text}\r\n".encode() if text else f"ERR {code}\r\n".encode()


_UNSAFE = re.compile(rb"[\x00-\x1f\x7f\\]")


def printable(value: bytes) -> bytes:
    """A unique as it may appear in a listing: control characters and backslashes escaped as \\xNN."""
    return _UNSAFE.sub(lambda m: b"\\x%02x" % m[0][0], value)


def restore_max_queues(broker: Broker, state: dict[str, dict[str, bytes]]) -> None:
    """Apply the maxqueue limits an earlier run kept in the store (Server.start; see Admin.maxqueue)."""
    for key, value in state.get(MAXQUEUE, {}).items():
        try:
            name, limits = bytes.fromhex(key), [int(n) for n in value.split()]
        except ValueError:
            limits = []
        if len(limits) != 3:
            log.warning("ignored a stored maxqueue that is not a hex name and three numbers: %r %r", key, value)
            continue
        broker.set_max_queue(name, limits)


#: Lines per chunk of a streamed listing (`show jobs`): what the server holds of one at a time.
CHUNK_LINES = 4096


def listing(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines) + b".\n"


def streamed_listing(lines: Iterable[bytes]) -> Iterator[bytes]:
    """A listing as chunks of CHUNK_LINES lines, the last one ending with the "." line. The transport writes them
    as the peer reads (GearmanProtocol's stream), so a listing of millions of jobs never sits whole in memory."""
    lines = iter(lines)
    while True:
        batch = list(islice(lines, CHUNK_LINES))
        chunk = b"".join(line + b"\n" for line in batch)
        if len(batch) < CHUNK_LINES:
            yield chunk + b".\n"
            return
        yield chunk


class Admin:
    """Answers admin command lines over a broker; `server` supplies shutdown, verbosity and peer facts."""

    def __init__(self, broker: Broker, server: Any = None) -> None:
        self.broker = broker
        self.server = server
        self.commands: dict[bytes, Callable[[Peer, list[bytes]], bytes]] = {
            b"workers": self.workers,
            b"status": self.status,
            b"prioritystatus": self.priority_status,
            b"maxqueue": self.maxqueue,
            b"show": self.show,
            b"cancel": self.cancel,
            b"create": self.create,
            b"drop": self.drop,
            b"getpid": self.getpid,
            b"version": self.version,
            b"verbose": self.verbose,
            b"shutdown": self.shutdown,
            b"acl": self.acl,
        }
        #: `show WORD ...` answered elsewhere (lifecycle_admin.py installs `show job` and `show failed`).
        self.show_commands: dict[bytes, Callable[[Peer, list[bytes]], bytes]] = {}

    def handle(self, peer: Peer, line: bytes) -> bytes | Iterator[bytes]:
        """The complete answer to one command line, or (show jobs) its chunks, to be written as the peer reads."""
        words = line.split()
        peer.admin = True
        if not words:
            return err("UNKNOWN_COMMAND", "Unknown server command")
        command = self.commands.get(words[0].lower())
        if command is None:
            return err("UNKNOWN_COMMAND", "Unknown server command")
        return command(peer, words[1:])

    # ------------------------------------------------------------------ listings

    def workers(self, peer: Peer, words: list[bytes]) -> bytes:
        lines = []
        for other in list(self.broker.peers.values()):
            names = b"".join(b" " + function.name for function in other.abilities)
            lines.append(b"%d %s %s :%s" % (other.id, other.address.encode(), other.client_id, names))
        return listing(lines)

    def status(self, peer: Peer, words: list[bytes]) -> bytes:
        lines = [
            b"%s\t%d\t%d\t%d" % (f.name, f.queued + f.running, f.running, len(f.workers))
            for f in self.broker.functions.values()
        ]
        return listing(lines)

    def priority_status(self, peer: Peer, words: list[bytes]) -> bytes:
        lines = [
            b"%s\t%d\t%d\t%d\t%d" % (f.name, f.waiting(0), f.waiting(1), f.waiting(2), len(f.workers))
            for f in self.broker.functions.values()
        ]
        return listing(lines)

    def show(self, peer: Peer, words: list[bytes]) -> bytes | Iterator[bytes]:
        # The jobs in memory are taken at the command (references only); the spilled ones are read from a copy
        # of the spill queues' runs as the listing is written. A job that ends meanwhile may still be listed.
        kind = [w.lower() for w in words]
        spill = self.broker.spill
        if kind == [b"jobs"]:
            from .broker import QUEUED, RUNNING, SPILLED

            jobs = [job for job in self.broker.jobs.values() if job.state != SPILLED]
            lines: Iterable[bytes] = (
                b"%s\t%d\t%d\t%d" % (job.handle, job.retries, 0, 1 if job.state in (QUEUED, RUNNING) else 0)
                for job in jobs
            )
            if spill is not None:  # jobs waiting only in the store (spill.py), materialized ones included
                lines = chain(lines, (b"%s\t0\t0\t1" % handle for handle in spill.listing()))
            return streamed_listing(lines)
        if kind == [b"unique", b"jobs"]:
            from .broker import SPILLED

            uniques = [job.unique for job in self.broker.jobs.values() if job.unique and job.state != SPILLED]
            lines = map(printable, uniques)
            if spill is not None:
                lines = chain(lines, map(printable, spill.unique_listing()))
            return streamed_listing(lines)
        extension = self.show_commands.get(kind[0]) if kind else None
        if extension is not None:
            return extension(peer, words[1:])
        return err("UNKNOWN_COMMAND", "Unknown server command")

    # ------------------------------------------------------------------ changes

    def maxqueue(self, peer: Peer, words: list[bytes]) -> bytes:
        if not words:
            return err("INVALID_ARGUMENTS", "An incomplete set of arguments was sent to this command maxqueue")
        try:
            numbers = [int(w) for w in words[1:]]
        except ValueError:
            return err("INVALID_ARGUMENTS", "maxqueue sizes must be integers")
        if len(numbers) == 0:
            limits = [0, 0, 0]
        elif len(numbers) == 1:
            limits = numbers * 3
        elif len(numbers) == 3:
            limits = numbers
        else:
            return err("INVALID_ARGUMENTS", "use maxqueue FUNCTION [N] or maxqueue FUNCTION HIGH NORMAL LOW")
        problem = self.broker.name_problem(words[0]) if words[0] not in self.broker.functions else None
        if problem is not None:
            return err(problem[0].decode(), problem[1])
        self.broker.set_max_queue(words[0], limits)
        log.info("maxqueue %r %s", words[0], dict(zip(PRIORITY_NAMES, limits, strict=True)))
        store = self.broker.store
        if store is not None:  # kept across restarts with a durable queue (gearmand forgets them)
            limits = self.broker.functions[words[0]].max_queue
            store.save_state(MAXQUEUE, words[0].hex(), b"%d %d %d" % tuple(limits) if any(limits) else None)
        return OK

    def cancel(self, peer: Peer, words: list[bytes]) -> bytes:
        if len(words) != 2 or words[0].lower() != b"job":
            return err("INVALID_ARGUMENTS", "use cancel job HANDLE")
        handle = words[1]
        job = self.broker.find(handle)
        acl = self.broker.acl
        if job is not None and acl is not None and not acl.canInvoke(peer.subject, job.function.name):
            if self.broker.stats is not None:
                self.broker.stats.deny("cancel")
            return err("PERMISSION_DENIED", f"{peer.subject} may not cancel jobs of {job.function.name!r}")
        if not self.broker.cancel(handle):
            return err("UNKNOWN_JOB")
        log.info("cancelled job %r", handle)
        return OK

    def create(self, peer: Peer, words: list[bytes]) -> bytes:
        if len(words) != 2 or words[0].lower() != b"function":
            return err("INVALID_ARGUMENTS", "use create function NAME")
        problem = self.broker.name_problem(words[1]) if words[1] not in self.broker.functions else None
        if problem is not None:
            return err(problem[0].decode(), problem[1])
        self.broker.function(words[1])
        return OK

    def drop(self, peer: Peer, words: list[bytes]) -> bytes:
        if len(words) != 2 or words[0].lower() != b"function":
            return err("INVALID_ARGUMENTS", "use drop function NAME")
        name = words[1]
        if name not in self.broker.functions:
            return err("UNKNOWN_FUNCTION", "function not found")
        if not self.broker.drop_function(name):
            return err("FUNCTION_IN_USE", "function has workers or jobs")
        return OK

    # ------------------------------------------------------------------ server facts

    def getpid(self, peer: Peer, words: list[bytes]) -> bytes:
        return b"OK %d\n" % os.getpid()

    def version(self, peer: Peer, words: list[bytes]) -> bytes:
        return f"OK {__version__}\n".encode()

    def verbose(self, peer: Peer, words: list[bytes]) -> bytes:
        level = logging.getLogger("geartrain").getEffectiveLevel()
        name = logging.getLevelName(level)
        return f"OK {'FATAL' if name == 'CRITICAL' else name}\n".encode()

    def shutdown(self, peer: Peer, words: list[bytes]) -> bytes:
        graceful = [w.lower() for w in words] == [b"graceful"]
        if words and not graceful:
            return err("INVALID_ARGUMENTS", "use shutdown or shutdown graceful")
        if self.server is None:
            return err("NOT_SUPPORTED", "no server to shut down")
        log.warning("%s shutdown requested by %r", "graceful" if graceful else "immediate", peer)
        self.server.request_shutdown(graceful)
        return OK

    def acl(self, peer: Peer, words: list[bytes]) -> bytes:
        from .acl import acl_admin_command

        return acl_admin_command(self.broker.acl, peer.subject, words)
