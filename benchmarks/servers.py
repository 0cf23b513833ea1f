"""Start and stop the servers under test on ephemeral loopback ports.

Each server is a ServerSpec: how to tell whether it is available here, and the command line that runs it in
the foreground on a given port. gear 0.16.0's geard lives in a throwaway virtualenv that is created on first
use and cached under /tmp/geartrain-bench-venvs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
VENV_ROOT = Path(os.environ.get("GEARTRAIN_BENCH_VENVS", "/tmp/geartrain-bench-venvs"))
GEARMAND = "/usr/sbin/gearmand"
GEAR_VERSION = "0.16.0"

#: geard logs every packet at DEBUG when run with -d; this keeps it at WARNING, as a production setup would.
_GEARD_LOG_CONFIG = """\
[loggers]
keys=root

[handlers]
keys=stderr

[formatters]
keys=plain

[logger_root]
level=WARNING
handlers=stderr

[handler_stderr]
class=StreamHandler
level=WARNING
formatter=plain
args=(sys.stderr,)

[formatter_plain]
format=%(asctime)s %(levelname)s %(name)s: %(message)s
"""


class ServerUnavailable(Exception):
    """The server cannot run on this machine; the message says why."""


@dataclass
class ServerOptions:
    """Variations of a server run that some loads need (a durable queue for the store benchmarks)."""

    queue: str = "memory"  # "memory" or "sqlite"
    workdir: Path | None = None
    db_path: Path | None = None  # the SQLite file, set by the command builder


@dataclass
class ServerSpec:
    name: str
    #: Returns None when the server can run here, else the reason it cannot.
    check: Callable[[], str | None]
    #: Builds the argv for a port; may prepare files in workdir.
    command: Callable[[int, ServerOptions], list[str]]
    #: Queue types it supports.
    queues: tuple[str, ...] = ("memory",)
    note: str = ""


@dataclass
class RunningServer:
    spec: ServerSpec
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    options: ServerOptions = field(default_factory=ServerOptions)
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def crash_and_restart(self, start_timeout: float = 30.0) -> None:
        """SIGKILL the server (no chance to flush anything), then start it again on the same port and files."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(timeout=10)
        with open(self.log_path, "ab") as log_fh:
            self.proc = subprocess.Popen(
                self.argv, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            wait_for_port(self.port, self.proc, time.monotonic() + start_timeout)
        except ServerUnavailable as exc:
            tail = self.log_tail(2000).strip().splitlines()
            raise ServerUnavailable(f"{self.spec.name} restart: {exc}; log ends: {' | '.join(tail[-2:])}")

    def rss_kib(self) -> int | None:
        """Resident set size of the server process in KiB, from /proc/PID/status."""
        return read_rss_kib(self.proc.pid)

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time of the server process (all its threads) so far."""
        return read_cpu_seconds(self.proc.pid)

    def pin(self, cpus: set[int]) -> None:
        """Run every thread of the server on these CPUs only (run.py --pin: the server gets a core of its own, so
        that its CPU per job does not include the cache it loses to the load generator on a shared core)."""
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(tid), cpus)

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


def read_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def read_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3, utime field 14 and stime field 15 (1-based, man proc).
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def count_stored_jobs(db_path: Path) -> int | None:
    """Rows in the job tables of a SQLite queue file (read-only), or None when it cannot be read."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if ("queue" in name or "job" in name) and "invalid" not in name]
        if not tables:
            return None
        return sum(int(conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]) for t in tables)
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago (the server may still lose a race; we retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --- gearmand -------------------------------------------------------------------------------------


def _gearmand_check() -> str | None:
    if not os.access(GEARMAND, os.X_OK):
        return f"{GEARMAND} not found (apt-get install gearman-job-server)"
    return None


def _gearmand_command(port: int, options: ServerOptions) -> list[str]:
    argv = [GEARMAND, "-p", str(port), "-L", HOST, "-t", "2", "-l", "none"]
    # Never "-P /dev/null": gearmand unlinks its pid file when it exits.
    assert options.workdir is not None
    argv += ["-P", str(options.workdir / "gearmand.pid")]
    if options.queue == "sqlite":
        assert options.workdir is not None
        options.db_path = options.workdir / "gearmand-queue.sqlite3"
        argv += ["-q", "libsqlite3", "--libsqlite3-db", str(options.db_path)]
    return argv


# --- geartrain ------------------------------------------------------------------------------------


def _geartrain_check() -> str | None:
    try:
        found = importlib.util.find_spec("geartrain.server.cli") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return "geartrain.server.cli does not exist yet (the server is being written)"
    proc = subprocess.run(
        [sys.executable, "-m", "geartrain.server.cli", "--help"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30,
    )
    if proc.returncode != 0:
        tail = proc.stdout.decode(errors="replace").strip().splitlines()[-1:]
        return f"`python -m geartrain.server.cli --help` failed: {' '.join(tail)}"
    return None


def _geartrain_command(port: int, options: ServerOptions) -> list[str]:
    argv = [sys.executable, "-m", "geartrain.server.cli", "-d", "-p", str(port), "--listen-address", HOST]
    # Always name the queue: geartrain's default is a durable SQLite file in the user's state directory.
    assert options.workdir is not None
    if options.queue == "sqlite":
        options.db_path = options.workdir / "geartrain-queue.sqlite3"
        argv += ["--queue-type", "sqlite", "--sqlite-db", str(options.db_path)]
    else:
        argv += ["--queue-type", "memory"]
    return argv


def _geartrain_metrics_command(port: int, options: ServerOptions) -> list[str]:
    """geartrain with its counters and its HTTP listener (/metrics) on: what run.py --metrics measures."""
    return [*_geartrain_command(port, options), "--http-port", "0", "--http-listen", HOST]


def _geartrain_nometrics_command(port: int, options: ServerOptions) -> list[str]:
    """geartrain with no counters (--no-stats) and no HTTP listener: the baseline of run.py --metrics."""
    return [*_geartrain_command(port, options), "--no-stats"]


def compiled_build() -> Path:
    """This checkout's compiled build (scripts/build-compiled), made once per state of its sources and cached."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in [root / "setup.py", root / "pyproject.toml", *sorted((root / "build_backend").rglob("*.py")),
                 *sorted((root / "src").rglob("*.py"))]:
        digest.update(path.read_bytes())
    dest = VENV_ROOT / f"geartrain-compiled-{digest.hexdigest()[:16]}"
    if not dest.exists():
        print(f"# building the compiled build into {dest} (a minute or two)", flush=True)
        subprocess.run([str(root / "scripts" / "build-compiled"), str(dest)], check=True, timeout=900)
    return dest


def _geartrain_compiled_check() -> str | None:
    try:
        dest = compiled_build()
    except (subprocess.SubprocessError, OSError) as exc:
        return f"scripts/build-compiled failed: {exc}"
    probe = "import geartrain.compiled as c; assert c.compiled_modules() == c.MODULES, c.compiled_modules()"
    ran = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, PYTHONPATH=str(dest)),
                         capture_output=True, text=True, timeout=60)
    return None if ran.returncode == 0 else f"the compiled build is pure Python here: {ran.stderr.strip()[-200:]}"


def _geartrain_compiled_command(port: int, options: ServerOptions) -> list[str]:
    """geartrain as GEARTRAIN_COMPILE=1 builds it; `env` execs the server, so the PID measured is the server's."""
    return ["env", f"PYTHONPATH={compiled_build()}", *_geartrain_command(port, options)]


# --- the floor server (benchmarks/floor_server.py: geard's transport with every feature removed) ---------------

FLOOR_SERVER = Path(__file__).resolve().parent / "floor_server.py"


def _floor_command(port: int, options: ServerOptions) -> list[str]:
    return [sys.executable, str(FLOOR_SERVER), "-p", str(port), "--listen-address", HOST]


def floor_compiled_build() -> Path:
    """floor_server.py compiled by mypyc (from a virtualenv with mypy, made once), once per state of the file."""
    source = FLOOR_SERVER.read_bytes()
    dest = VENV_ROOT / f"floor-compiled-{hashlib.sha256(source).hexdigest()[:16]}"
    if not (dest / "built").exists():
        bin_dir = ensure_venv("mypyc", ["mypy>=1.10"], "import mypyc")
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        (dest / "floor_server.py").write_bytes(source)
        src = str(Path(__file__).resolve().parent.parent / "src")
        subprocess.run([str(bin_dir / "mypyc"), "--ignore-missing-imports", "floor_server.py"], cwd=dest,
                       env=dict(os.environ, MYPYPATH=src), check=True, timeout=600, capture_output=True)
        (dest / "floor_server.py").unlink()  # the extension module is what `import floor_server` finds
        (dest / "built").touch()
    return dest


def _floor_compiled_check() -> str | None:
    try:
        floor_compiled_build()
    except (subprocess.SubprocessError, OSError, ServerUnavailable) as exc:
        return f"mypyc could not compile floor_server.py: {exc}"
    return None


def _floor_compiled_command(port: int, options: ServerOptions) -> list[str]:
    return ["env", f"PYTHONPATH={floor_compiled_build()}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            sys.executable, "-c", "import floor_server; floor_server.main()",
            "-p", str(port), "--listen-address", HOST]


# --- gear 0.16.0 geard in a throwaway virtualenv --------------------------------------------------


def venv_python(name: str) -> Path:
    return VENV_ROOT / name / "bin" / "python"


def ensure_venv(name: str, requirements: list[str], probe: str, log: Callable[[str], None] = print) -> Path:
    """Create (once) a virtualenv under VENV_ROOT with requirements installed; return its bin directory.

    ``probe`` is a Python statement that must run in the venv for it to count as ready.
    """
    venv = VENV_ROOT / name
    python = venv / "bin" / "python"
    if python.exists():
        ok = subprocess.run([str(python), "-c", probe], capture_output=True, timeout=60).returncode == 0
        if ok:
            return venv / "bin"
        shutil.rmtree(venv, ignore_errors=True)
    VENV_ROOT.mkdir(parents=True, exist_ok=True)
    log(f"creating virtualenv {venv} with {' '.join(requirements)} ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        proc = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600,
        )
    except subprocess.SubprocessError as exc:
        shutil.rmtree(venv, ignore_errors=True)
        raise ServerUnavailable(f"could not build the virtualenv {venv}: {exc}")
    if proc.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        out = proc.stdout.decode(errors="replace")
        errors = [line for line in out.splitlines() if "ERROR" in line] or out.splitlines()[-3:]
        raise ServerUnavailable(f"pip install {' '.join(requirements)} failed: {' '.join(errors)[:300]}")
    return venv / "bin"


def gear_venv_bin(log: Callable[[str], None] = print) -> Path:
    return ensure_venv(
        f"gear-{GEAR_VERSION}",
        [f"gear=={GEAR_VERSION}"],
        f"import gear, importlib.metadata as m; assert m.version('gear') == '{GEAR_VERSION}'",
        log,
    )


def _geard_check() -> str | None:
    try:
        bin_dir = gear_venv_bin()
    except ServerUnavailable as exc:
        return str(exc)
    if not (bin_dir / "geard").exists():
        return f"gear {GEAR_VERSION} installed no geard script in {bin_dir}"
    return None


def _geard_command(port: int, options: ServerOptions) -> list[str]:
    assert options.workdir is not None
    log_config = options.workdir / "geard-logging.conf"
    log_config.write_text(_GEARD_LOG_CONFIG)
    bin_dir = VENV_ROOT / f"gear-{GEAR_VERSION}" / "bin"
    return [
        str(bin_dir / "geard"), "-d", "-p", str(port), "--listen-address", HOST,
        "--log-config", str(log_config), "--pidfile", str(options.workdir / "geard.pid"),
    ]


SERVERS: dict[str, ServerSpec] = {
    "geartrain": ServerSpec(
        "geartrain", _geartrain_check, _geartrain_command, queues=("memory", "sqlite"),
        note="python -m geartrain.server.cli (this checkout)",
    ),
    "geartrain-compiled": ServerSpec(
        "geartrain-compiled", _geartrain_compiled_check, _geartrain_compiled_command, queues=("memory", "sqlite"),
        note="geartrain's compiled build (GEARTRAIN_COMPILE=1, mypyc)",
    ),
    "geartrain-metrics": ServerSpec(
        "geartrain-metrics", _geartrain_check, _geartrain_metrics_command, queues=("memory", "sqlite"),
        note="geartrain with counters and the HTTP listener on",
    ),
    "geartrain-nometrics": ServerSpec(
        "geartrain-nometrics", _geartrain_check, _geartrain_nometrics_command, queues=("memory", "sqlite"),
        note="geartrain --no-stats",
    ),
    "python-floor": ServerSpec(
        "python-floor", lambda: None, _floor_command,
        note="benchmarks/floor_server.py: the least a Python server on uvloop does per job (a floor, no product)",
    ),
    "python-floor-compiled": ServerSpec(
        "python-floor-compiled", _floor_compiled_check, _floor_compiled_command,
        note="floor_server.py compiled by mypyc",
    ),
    "gearmand": ServerSpec(
        "gearmand", _gearmand_check, _gearmand_command, queues=("memory", "sqlite"),
        note="Debian gearmand, 2 I/O threads",
    ),
    "geard": ServerSpec(
        "geard", _geard_check, _geard_command,
        note=f"gear {GEAR_VERSION} geard, logging at WARNING",
    ),
}


def wait_for_port(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    """Poll until the port accepts a connection, the process dies, or the deadline passes."""
    delay = 0.01
    while True:
        if proc.poll() is not None:
            raise ServerUnavailable(f"exited with status {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                pass
        except OSError:
            pass
        else:
            # Something listens; make sure it is ours (a server that lost the port race exits at once).
            time.sleep(0.05)
            if proc.poll() is not None:
                raise ServerUnavailable(f"exited with status {proc.returncode}: port {port} taken by another")
            return
        if time.monotonic() >= deadline:
            raise ServerUnavailable(f"not listening on {HOST}:{port} after the start deadline")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def admin_listing(port: int, command: bytes, timeout: float = 60.0) -> bytes:
    """An admin command's answer, read up to the "." line that ends a listing."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(command + b"\n")
        data = b""
        while not (data.endswith(b"\n.\n") or data == b".\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def stop_server(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after a grace period: only this process, by its PID."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=grace)


@contextlib.contextmanager
def running(spec: ServerSpec, options: ServerOptions | None = None, start_timeout: float = 20.0,
            attempts: int = 3) -> Iterator[RunningServer]:
    """Run the server for the duration of the with block; always stop it afterwards."""
    options = options or ServerOptions()
    if options.queue not in spec.queues:
        raise ServerUnavailable(f"{spec.name} has no {options.queue} queue")
    with tempfile.TemporaryDirectory(prefix=f"geartrain-bench-{spec.name}-") as tmp:
        options.workdir = Path(tmp)
        log_path = Path(tmp) / "server.log"
        last_error: Exception | None = None
        for _attempt in range(attempts):
            port = free_port()
            argv = spec.command(port, options)
            with open(log_path, "wb") as log_fh:
                proc = subprocess.Popen(
                    argv, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            server = RunningServer(spec, port, proc, log_path, options, argv)
            try:
                try:
                    wait_for_port(port, proc, time.monotonic() + start_timeout)
                except ServerUnavailable as exc:
                    tail = server.log_tail(2000).strip().splitlines()
                    last_error = ServerUnavailable(f"{spec.name}: {exc}; log ends: {' | '.join(tail[-2:])}")
                    continue
                yield server
                return
            finally:
                stop_server(server.proc)  # the current process: crash_and_restart() replaces it
        assert last_error is not None
        raise last_error
