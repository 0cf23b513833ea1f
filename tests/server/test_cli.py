"""geard's command line: defaults from ServerConfig, gearmand's options and service lines, the per-port queue file,
the start-up line, SIGHUP reloads (ACL, TLS), and systemd's notify protocol. Real geard processes throughout."""

from __future__ import annotations

import dataclasses
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from geartrain.protocol import constants as C
from geartrain.server.cli import CONFIG_OPTIONS, IGNORED_OPTIONS, build_parser, config_from_args, expand_config_file
from geartrain.server.config import ServerConfig
from geartrain.server.tls import client_context

from certs import make_pki
from conftest import free_port, start_gearmand, stop_process, wait_for_port
from wire import Wire

GEARD = [sys.executable, "-m", "geartrain.server.cli"]
STARTUP = re.compile(r"^geard \S+: listening on (?P<where>.*); queue: (?P<queue>.*)$")


def parse(*argv: str) -> ServerConfig:
    return config_from_args(build_parser().parse_args(expand_config_file(argv)))


@pytest.fixture(autouse=True)
def no_gearmand_environment(monkeypatch, tmp_path):
    """Each test gets its own state directory and none of gearmand's variables from the caller."""
    for name in ("GEARMAND_PORT", "GEARMAND_SERVER_PEM", "GEARMAND_SERVER_KEY", "GEARMAND_CA_CERTIFICATE",
                 "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "STATSD_HOST", "STATSD_PORT", "STATSD_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def read_until(process: subprocess.Popen, pattern: re.Pattern[str], deadline: float = 30.0) -> re.Match[str]:
    """Read the process's stderr line by line until one matches (fail when it exits or the deadline passes).
    The process must be started with bufsize=0: a buffered reader would hide lines from the selector."""
    end = time.monotonic() + deadline
    seen = []
    with selectors.DefaultSelector() as selector:
        selector.register(process.stderr, selectors.EVENT_READ)
        while time.monotonic() < end:
            if not selector.select(timeout=max(0.0, end - time.monotonic())):
                continue
            line = process.stderr.readline().decode()
            if not line:
                raise AssertionError(f"geard exited ({process.wait(10)}) before printing {pattern.pattern}: {seen}")
            seen.append(line)
            match = pattern.search(line.rstrip("\n"))
            if match:
                return match
    raise AssertionError(f"no line matching {pattern.pattern} within {deadline}s: {seen}")


def start_geard(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, re.Match[str]]:
    """geard in the foreground; returns once its start-up line is printed."""
    process = subprocess.Popen([*GEARD, "-d", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=env, bufsize=0)
    try:
        return process, read_until(process, STARTUP)
    except BaseException:
        stop_process(process)
        raise


def pid_gone(pid: int, deadline: float = 30.0) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


# ------------------------------------------------------------------------------------------- config in one place


def test_geard_defaults_are_server_config_defaults_except_the_queue():
    assert parse("-q", "memory") == ServerConfig()
    parser = build_parser()
    defaults = ServerConfig()
    for _flags, field, _kwargs in CONFIG_OPTIONS:
        assert parser.get_default(field) == getattr(defaults, field), field
    plain = parse()
    assert plain.queue_type == "sqlite" and plain.sqlite_db.endswith("/geartrain/queue-4730.sqlite3")
    assert parse("-p", "4731").sqlite_db.endswith("/geartrain/queue-4731.sqlite3")
    assert parse("-p", "0").queue_type == "memory"
    assert parse("-p", "0", "--sqlite-db", "x.db").sqlite_db == os.path.abspath("x.db")


def test_every_server_config_field_has_a_geard_option():
    """A field is either a row of CONFIG_OPTIONS or built by config_from_args from the options listed here."""
    built = {"listen", "ssl_key", "ssl_cert", "ssl_ca", "ssl_listen", "tls_on_main", "acl", "acl_file",
             "queue_type", "sqlite_db"}
    table = {field for _, field, _ in CONFIG_OPTIONS}
    assert not built & table
    missing = {field.name for field in dataclasses.fields(ServerConfig)} - built - table
    assert not missing, f"ServerConfig fields without a geard option (add a row to CONFIG_OPTIONS): {missing}"


def test_gearmand_spellings_set_the_same_fields(monkeypatch):
    config = parse("-b", "7", "-j", "3", "-w", "2", "--exceptions", "-q", "builtin", "-L", "127.0.0.1", "-p", "5000",
                   "-r", "http", "--http-port", "8099", "--job-handle-prefix", "H:x")
    assert (config.backlog, config.job_retries, config.worker_wakeup, config.exceptions) == (7, 3, 2, True)
    assert config.queue_type == "memory" and config.listen == [("127.0.0.1", 5000)]
    assert config.http_port == 8099 and config.http_listen == "127.0.0.1" and config.job_handle_prefix == "H:x"
    assert parse("-L", "::1", "--http-listen", "10.0.0.1").http_listen == "10.0.0.1"
    assert parse("-r", "http").http_port == 8080
    system_idle = int(Path("/proc/sys/net/ipv4/tcp_keepalive_time").read_text())
    assert parse("--keepalive", "--keepalive-idle", "-1", "--keepalive-count", "5").tcp_keepidle == system_idle
    assert parse().http_port is None
    monkeypatch.setenv("GEARMAND_PORT", "4999")
    assert parse("-q", "memory").listen == [("", 4999)]
    assert parse("-q", "memory", "-p", "5001").listen == [("", 5001)]
    monkeypatch.setenv("GEARMAND_SERVER_PEM", "/etc/cert.pem")
    monkeypatch.setenv("GEARMAND_SERVER_KEY", "/etc/key.pem")
    config = parse("-q", "memory", "--ssl", "--ssl-ca-file", "/etc/ca.pem")
    assert (config.ssl_cert, config.ssl_key, config.ssl_ca) == ("/etc/cert.pem", "/etc/key.pem", "/etc/ca.pem")
    assert parse("-q", "memory", "--ssl-certificate", "c", "--ssl-key", "k").ssl_cert == os.path.abspath("c")


def test_every_option_of_gearmand_1_1_20_is_accepted():
    """Each long option `gearmand --help` lists parses here, with a value where gearmand takes one."""
    gearmand = Path("/usr/sbin/gearmand")
    if not gearmand.exists():
        pytest.skip("gearmand is not installed")
    help_text = subprocess.run([gearmand, "--help"], capture_output=True, text=True, timeout=30).stdout
    options = re.findall(r"^\s+(?:-\w \[ )?(--[\w-]+)(?: \])?( arg)?", help_text, re.MULTILINE)
    assert len(options) > 40, help_text
    # The PostgreSQL queue's options belong to the PostgreSQL store (its own branch adds them).
    elsewhere = {"--libpq-conninfo", "--libpq-table"}
    values = {"--queue-type": "libsqlite3", "--protocol": "http", "--verbose": "INFO", "--user": "root",
              "--config-file": "/dev/null"}
    parser = build_parser()
    for name, takes_value in options:
        if name in elsewhere or name in ("--help", "--version"):
            continue
        argv = [name, values.get(name, "1")] if takes_value else [name]
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"geard does not accept gearmand's {' '.join(argv)}")


def test_options_without_meaning_are_accepted_with_a_warning():
    argv = ["--check-args", "-q", "memory"]
    for flags, takes_value, _reason in IGNORED_OPTIONS:
        argv += [flags[0], "1"] if takes_value else [flags[0]]
    done = subprocess.run([*GEARD, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for flags, _takes_value, reason in IGNORED_OPTIONS:
        assert f"{flags[0]} is accepted for gearmand's command lines and ignored: {reason}" in done.stderr


def test_config_file_in_gearmand_format_and_the_command_line_wins(tmp_path):
    conf = tmp_path / "gearmand.conf"
    conf.write_text("# geard reads gearmand's format\n--port=4800\n--listen 127.0.0.1\n-q builtin\n"
                    "--job-handle-prefix FROMFILE\n--exceptions\n")
    config = parse("--config-file", str(conf), "--job-handle-prefix", "CLI")
    assert config.listen == [("127.0.0.1", 4800)] and config.queue_type == "memory" and config.exceptions
    assert config.job_handle_prefix == "CLI"
    assert parse(f"@{conf}").listen == [("127.0.0.1", 4800)]
    done = subprocess.run([*GEARD, "--config-file", str(tmp_path / "missing.conf")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0 and "cannot read the configuration file" in done.stderr


# ------------------------------------------------------------------------------------------- queue and start-up


def test_each_plain_geard_keeps_its_own_queue_file_and_says_so(tmp_path):
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    first, second = free_port(), free_port()
    a, line_a = start_geard("-L", "127.0.0.1", "-p", str(first), env=env)
    try:
        b, line_b = start_geard("-L", "127.0.0.1", "-p", str(second), env=env)  # no "in use by another server"
        try:
            file_a = tmp_path / "state" / "geartrain" / f"queue-{first}.sqlite3"
            assert line_a["where"] == f"127.0.0.1:{first}"
            assert line_a["queue"] == f"{file_a} (0 jobs replayed)"
            file_b = tmp_path / "state" / "geartrain" / f"queue-{second}.sqlite3"
            assert line_b["queue"] == f"{file_b} (0 jobs replayed)"
            with Wire("127.0.0.1", first) as client:
                client.submit(b"later", b"x", ptype=C.SUBMIT_JOB_BG)
        finally:
            stop_process(b)
    finally:
        stop_process(a)
    a, line_a = start_geard("-L", "127.0.0.1", "-p", str(first), env=env)
    try:
        assert line_a["queue"] == f"{file_a} (1 jobs replayed)"
    finally:
        stop_process(a)


def test_port_zero_keeps_jobs_in_memory_and_prints_the_port_it_got():
    process, line = start_geard("-L", "127.0.0.1", "-p", "0")
    try:
        assert line["queue"] == "memory"
        port = int(line["where"].rsplit(":", 1)[1])
        with Wire("127.0.0.1", port) as w:
            assert w.admin("version").lines
    finally:
        stop_process(process)


# ------------------------------------------------------------------------------------------- gearmand's service


def debian_exec_start() -> list[str]:
    """The ExecStart line of Debian's gearman-job-server unit, with $PARAMS from /etc/default as systemd reads it."""
    unit, defaults = Path("/lib/systemd/system/gearman-job-server.service"), "/etc/default/gearman-job-server"
    if not unit.exists():
        pytest.skip("Debian's gearman-job-server is not installed")
    line = next(v for k, _, v in (ln.partition("=") for ln in unit.read_text().splitlines()) if k == "ExecStart")
    params = subprocess.run(["sh", "-c", f'. {defaults} 2>/dev/null; printf %s "$PARAMS"'], capture_output=True,
                            text=True, timeout=30).stdout
    return shlex.split(line.replace("$PARAMS", params))


def test_debian_service_line_runs_geard_in_place_of_gearmand(tmp_path):
    argv = debian_exec_start()
    assert argv[0] == "/usr/sbin/gearmand" and "--daemon" in argv
    paths = {}

    def relocate(arg: str) -> str:  # the pid and log files go to a temporary directory
        name, eq, value = arg.partition("=")
        if eq and value.startswith("/"):
            paths[name] = tmp_path / Path(value).name
            return f"{name}={paths[name]}"
        return arg

    command = GEARD + [relocate(arg) for arg in argv[1:]]
    port = free_port()
    env = {**os.environ, "GEARMAND_PORT": str(port), "XDG_STATE_HOME": str(tmp_path / "state")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    pidfile, logfile = paths["--pid-file"], paths["--log-file"]
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    try:
        # Like gearmand --daemon: the command returns once the daemon serves, its pid file written.
        assert done.returncode == 0, done.stderr
        assert pid is not None and pid != os.getpid()
        assert STARTUP.search(done.stderr.strip()), done.stderr
        with Wire("localhost", port) as w:
            assert w.admin("status").lines == ()
        assert logfile.exists()
        os.kill(pid, signal.SIGTERM)
        assert pid_gone(pid)
        assert not pidfile.exists()
    finally:
        if pid is not None and not pid_gone(pid, 0.1):
            os.kill(pid, signal.SIGKILL)


def test_daemon_that_cannot_start_makes_the_command_fail(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*GEARD, "--daemon", "-q", "memory", "-L", "127.0.0.1", "-p", str(port),
                               "--pid-file", str(tmp_path / "g.pid")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "geard: " in done.stderr and "address already in use" in done.stderr.lower()
    assert not (tmp_path / "g.pid").exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ss") is None, reason="needs root (to switch users) and ss")
def test_user_backlog_and_file_descriptors_are_applied():
    port = free_port()
    process, _ = start_geard("-q", "memory", "-L", "127.0.0.1", "-p", str(port), "-u", "nobody", "-b", "7",
                             "-f", "2048", "--coredump")
    try:
        status = Path(f"/proc/{process.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == ["65534"] * 4
        limits = Path(f"/proc/{process.pid}/limits").read_text()
        assert re.search(r"Max open files\s+2048\s", limits), limits
        assert re.search(r"Max core file size\s+unlimited\s", limits), limits
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True,
                                   timeout=30).stdout.split()
        assert listening[2] == "7", listening  # Send-Q of a listening socket is its backlog
        with Wire("127.0.0.1", port) as w:  # still serving after dropping root
            assert w.admin("version").lines
    finally:
        stop_process(process)


def test_log_file_stderr_and_none(tmp_path):
    log = tmp_path / "geard.log"
    process, _ = start_geard("-q", "memory", "-L", "127.0.0.1", "-p", "0", "--verbose", "INFO", "-l", str(log))
    stop_process(process)
    assert "INFO geartrain.server: geard" in log.read_text()
    process, _ = start_geard("-q", "memory", "-L", "127.0.0.1", "-p", "0", "--verbose", "INFO", "-l", "none")
    try:
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=30)[1].decode()
        assert "INFO" not in rest and "geartrain.server" not in rest
    finally:
        stop_process(process)
    done = subprocess.run([*GEARD, "--check-args", "-q", "memory", "-l", "stderr", "-t", "2"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "WARNING geartrain.server: -t is accepted" in done.stderr


def test_syslog_receives_the_log(tmp_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:  # a real socket in place of /dev/log
        syslog.bind(str(tmp_path / "log"))
        syslog.settimeout(30)
        script = ("import sys, geartrain.server.cli as cli; cli.SYSLOG_ADDRESS = sys.argv[1]; "
                  "sys.exit(cli.main(sys.argv[2:]))")
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "log"), "--syslog", "-l", "none",
                               "--check-args", "-q", "memory", "-t", "2"], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        record = syslog.recv(4096).decode()
    assert record.startswith("<12>geard: ") and "-t is accepted" in record  # facility user, priority warning


# ------------------------------------------------------------------------------------------- SIGHUP


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


def peer_cn(port: int, ca: str) -> str:
    context = client_context(ssl_ca=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        subject = dict(item for rdn in tls.getpeercert()["subject"] for item in rdn)
        return subject["commonName"]


def wait_for(predicate, what: str, deadline: float = 30.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {deadline}s: {what}")


def test_sighup_reloads_the_tls_certificate_and_keeps_it_when_the_new_one_is_bad(pki, tmp_path):
    key, cert, ca = pki.server_files("first")
    live_key, live_cert = tmp_path / "server.key", tmp_path / "server.pem"
    live_key.write_bytes(Path(key).read_bytes())
    live_cert.write_bytes(Path(cert).read_bytes())
    log = tmp_path / "geard.log"
    port = free_port()
    process, _ = start_geard("-q", "memory", "-L", "127.0.0.1", "-p", str(port), "--ssl-key", str(live_key),
                             "--ssl-cert", str(live_cert), "-l", str(log))
    try:
        assert peer_cn(port, ca) == "first"
        with Wire("127.0.0.1", port, ssl_context=client_context(ssl_ca=ca)) as old:
            key2, cert2, _ = pki.server_files("second")
            live_key.write_bytes(Path(key2).read_bytes())
            live_cert.write_bytes(Path(cert2).read_bytes())
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: peer_cn(port, ca) == "second", "new connections get the new certificate")
            old.send(C.ECHO_REQ, b"still here")  # the connection made before keeps working
            assert old.expect(C.ECHO_RES).args == (b"still here",)
        live_cert.write_text("not a certificate\n")
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "kept the current TLS certificate" in log.read_text(), "a log line about the bad file")
        assert peer_cn(port, ca) == "second"
    finally:
        stop_process(process)


def test_sighup_reloads_the_acl_file_and_keeps_it_when_the_new_one_is_bad(pki, tmp_path):
    key, cert, ca = pki.server_files()
    acl = tmp_path / "acl.ini"
    acl.write_text("[worker]\nregister=a.*\n")
    log = tmp_path / "geard.log"
    port = free_port()
    process, _ = start_geard("-q", "memory", "-L", "127.0.0.1", "-p", str(port), "--ssl-key", key, "--ssl-cert",
                             cert, "--ssl-ca", ca, "--acl", str(acl), "-l", str(log))
    worker = client_context(*pki.client_files("worker"))

    def may_register(name: bytes) -> bool:
        with Wire("127.0.0.1", port, ssl_context=worker) as w:
            w.send(C.CAN_DO, name)
            w.send(C.ECHO_REQ, b"done")
            event = w.next_event()
            if event.ptype == C.ERROR:
                assert event.args[0] == b"PERMISSION_DENIED"
                return False
            assert event.ptype == C.ECHO_RES
            return True

    try:
        assert may_register(b"abc") and not may_register(b"bcd")
        acl.write_text("[worker]\nregister=b.*\n")
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: may_register(b"bcd"), "the new ACL in force")
        assert not may_register(b"abc")
        acl.write_text("[worker]\nregister=(\n")  # an invalid regular expression
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "kept the current ACL" in log.read_text(), "a log line about the bad file")
        assert may_register(b"bcd") and not may_register(b"abc")
    finally:
        stop_process(process)


# ------------------------------------------------------------------------------------------- systemd


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path):
    """A real AF_UNIX datagram socket standing in for systemd's, named by path or in the abstract namespace."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = name = str(tmp_path / "notify.sock")
    else:
        name = f"@geartrain-test-{uuid.uuid4().hex}"
        address = "\0" + name[1:]
    sock.bind(address)
    sock.settimeout(30)
    try:
        yield sock, name
    finally:
        sock.close()


def test_systemd_ready_watchdog_and_stopping(notify_socket):
    sock, name = notify_socket
    port = free_port()
    env = {**os.environ, "NOTIFY_SOCKET": name, "WATCHDOG_USEC": "200000"}
    process = subprocess.Popen([*GEARD, "-d", "-q", "memory", "-L", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=geard "), ready
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # listening by the time READY=1 arrives
        assert [sock.recv(4096) for _ in range(3)] == [b"WATCHDOG=1"] * 3
        process.send_signal(signal.SIGTERM)
        while (message := sock.recv(4096)) == b"WATCHDOG=1":
            pass
        assert message == b"STOPPING=1"
        assert process.wait(30) == 0
    finally:
        stop_process(process)


def test_watchdog_is_for_the_process_systemd_names():
    from geartrain.server.systemd import Notifier

    mine = Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval == 4.0
    assert Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval \
        is None
    assert Notifier({"NOTIFY_SOCKET": "@abstract"}).address == "\0abstract"
    assert not Notifier({}).enabled and not Notifier({}).notify("READY=1")


def test_ready_comes_after_the_queue_is_replayed(notify_socket, tmp_path):
    sock, name = notify_socket
    port = free_port()
    db = tmp_path / "queue.sqlite3"
    process, _ = start_geard("--sqlite-db", str(db), "-L", "127.0.0.1", "-p", str(port))
    try:
        with Wire("127.0.0.1", port) as client:
            for n in range(3):
                client.submit(b"later", b"%d" % n, ptype=C.SUBMIT_JOB_BG)
    finally:
        stop_process(process)
    env = {**os.environ, "NOTIFY_SOCKET": name}
    process = subprocess.Popen([*GEARD, "-d", "--sqlite-db", str(db), "-L", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        assert sock.recv(4096).decode().endswith("(3 jobs replayed)")
        with Wire("127.0.0.1", port) as w:
            assert w.admin("status").lines == (b"later\t3\t0\t0",)
        wait_for_port("127.0.0.1", port, process=process)
    finally:
        stop_process(process)


def test_contrib_unit_is_a_valid_notify_service_running_geard_in_the_foreground(tmp_path):
    unit = Path(__file__).resolve().parents[2] / "contrib" / "geard.service"
    settings = [line.partition("=") for line in unit.read_text().splitlines() if "=" in line and line[0] != "#"]
    service = {key: value for key, _, value in settings}
    assert service["Type"] == "notify" and service["WatchdogSec"] and "-HUP" in service["ExecReload"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "geard" and "-d" in argv
    args = build_parser().parse_args(argv[1:])
    assert args.nodaemon and not args.daemon
    if not Path("/usr/bin/systemd-analyze").exists():
        pytest.skip("systemd-analyze is not installed")
    # systemd checks that ExecStart exists: point it at this geard's interpreter for the check.
    checked = tmp_path / "geard.service"
    checked.write_text(unit.read_text().replace(argv[0], sys.executable, 1))
    done = subprocess.run(["systemd-analyze", "verify", str(checked)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_options_gearmand_2_0_adds_are_accepted():
    parser = build_parser()
    for argv in (["--check-args"], ["-v", "INFO"], ["--libdrizzle-host", "db"], ["--libdrizzle-mysql"],
                 ["--libtokyocabinet-file", "q.tcb"], ["--libtokyocabinet-optimize"], ["-R"], ["-t", "0"]):
        parser.parse_args(argv)


def test_an_unknown_user_fails_before_the_server_starts():
    done = subprocess.run([*GEARD, "-d", "-q", "memory", "-p", "0", "-u", f"nobody-{uuid.uuid4().hex[:8]}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no such user" in done.stderr and "listening" not in done.stderr


@pytest.mark.skipif(not Path("/usr/sbin/gearmand").exists(), reason="gearmand is not installed")
def test_geard_takes_over_gearmand_s_libsqlite3_queue_with_the_same_options(tmp_path):
    db = tmp_path / "gearmand.sqlite"
    queue = ["-q", "libsqlite3", "--libsqlite3-db", str(db), "--libsqlite3-table", "jobs_of_gearmand"]
    gearmand = start_gearmand(*queue)
    try:
        with Wire(gearmand.host, gearmand.port) as client:
            for n in range(2):
                client.submit(b"later", b"%d" % n, b"u%d" % n, ptype=C.SUBMIT_JOB_BG)
    finally:
        gearmand.stop()
    process, line = start_geard(*queue, "-L", "127.0.0.1", "-p", "0")
    try:
        assert line["queue"] == f"{db} (2 jobs replayed)"
    finally:
        stop_process(process)


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/unshare").exists(), reason="needs root and unshare")
def test_as_pid_1_of_a_container_geard_stays_in_the_foreground():
    """A container runs gearmand's command line as PID 1: daemonizing there would end the container."""
    process = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child=SIGKILL", *GEARD, "-q", "memory",
                                "-L", "127.0.0.1", "-p", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               bufsize=0)
    try:
        line = read_until(process, STARTUP)
        with Wire("127.0.0.1", int(line["where"].rsplit(":", 1)[1])) as w:
            assert w.admin("version").lines
        assert process.poll() is None  # still attached: the command has not returned
        # geard is unshare's one child (PID 1 inside): stop it by its PID out here; unshare then exits.
        geard = int(Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()[0])
        os.kill(geard, signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        stop_process(process)  # --kill-child takes geard along if anything above failed


def test_sighup_reopens_the_log_file_after_rotation(tmp_path):
    log = tmp_path / "geard.log"
    process, _ = start_geard("-q", "memory", "-L", "127.0.0.1", "-p", "0", "--verbose", "INFO", "-l", str(log))
    try:
        wait_for(lambda: log.exists() and "listening on" in log.read_text(), "the start-up line logged")
        log.rename(tmp_path / "geard.log.1")  # what logrotate does before it signals
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: log.exists() and "reopened log files" in log.read_text(), "a new log file")
        assert "reopened log files" not in (tmp_path / "geard.log.1").read_text()
    finally:
        stop_process(process)


def test_gearmand_http_options_start_the_http_listener_on_the_listen_address():
    import urllib.request

    http_port = free_port()
    process, _ = start_geard("-q", "builtin", "-L", "127.0.0.1", "-p", "0", "-r", "http", "--http-port",
                             str(http_port))
    try:
        wait_for_port("127.0.0.1", http_port, process=process)
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=30) as answer:
            assert answer.status == 200
    finally:
        stop_process(process)


def test_a_second_sigterm_while_stopping_closes_once(tmp_path):
    process, _ = start_geard("--sqlite-db", str(tmp_path / "q.sqlite3"), "-L", "127.0.0.1", "-p", "0")
    try:
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=30)[1].decode()
        assert process.returncode == 0 and "Task was destroyed" not in rest and "Error" not in rest, rest
    finally:
        stop_process(process)
