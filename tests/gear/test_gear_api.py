"""The gear API surface: names, constants, exceptions, Packet, jobs and admin request objects (no server)."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import pytest

import gear
from gear import constants
from geartrain.protocol import constants as core_constants

PUBLIC = [
    "Client", "Job", "TextJob", "BinaryJob", "Worker", "TextWorker", "FunctionRecord", "WorkerJob",
    "TextWorkerJob", "BinaryWorkerJob", "AdminRequest", "StatusAdminRequest", "ShowJobsAdminRequest",
    "ShowUniqueJobsAdminRequest", "WorkersAdminRequest", "CancelJobAdminRequest", "VersionAdminRequest",
    "Connection", "Packet", "Server", "ACL", "ACLEntry", "ACLError", "ConnectionError", "InvalidDataError",
    "ConfigurationError", "NoConnectedServersError", "UnknownJobError", "InterruptedError", "TimeoutError",
    "GearmanError", "DisconnectError", "RetryIOError", "constants",
]


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_exists(name):
    assert getattr(gear, name) is not None


def test_precedence_values_are_gears():
    assert (gear.PRECEDENCE_NORMAL, gear.PRECEDENCE_LOW, gear.PRECEDENCE_HIGH) == (0, 1, 2)


def test_constants_expose_magic_codes_every_packet_type_and_types():
    assert constants.REQ == b"\x00REQ" and constants.RES == b"\x00RES"
    assert constants.CAN_DO == 1 and constants.SUBMIT_JOB == 7 and constants.STATUS_RES_UNIQUE == 42
    assert constants.types[constants.WORK_COMPLETE] == "WORK_COMPLETE"
    for number, name in core_constants.TYPE_NAMES.items():
        assert getattr(constants, name) == number
        assert constants.types[number] == name


def test_exceptions_are_plain_exception_subclasses_shadowing_builtins():
    for name in ("ConnectionError", "InvalidDataError", "ConfigurationError", "NoConnectedServersError",
                 "UnknownJobError", "InterruptedError", "TimeoutError", "GearmanError", "DisconnectError",
                 "RetryIOError"):
        cls = getattr(gear, name)
        assert issubclass(cls, Exception)
        assert cls.__module__.startswith("gear")
    assert gear.TimeoutError is not TimeoutError
    assert not issubclass(gear.ConnectionError, OSError)


def test_acl_names_are_the_servers_acl_reexported():
    from geartrain.server import acl

    assert gear.ACL is acl.ACL and gear.ACLEntry is acl.ACLEntry and gear.ACLError is acl.ACLError
    entry = gear.ACLEntry("worker", register="foo.*")
    assert entry.canRegister("foobar") and not entry.canRegister("barfoo")
    rules = gear.ACL()
    rules.add(entry)
    with pytest.raises(gear.ACLError):
        rules.add(gear.ACLEntry("worker"))


def test_signatures_match_gear():
    def params(func):
        return list(inspect.signature(func).parameters)

    assert params(gear.Client) == ["client_id"]
    assert params(gear.Worker)[:2] == ["client_id", "worker_id"]
    # This implementation's additions are keyword-only: positional calls mean what they mean to gear.
    prefetch = inspect.signature(gear.Worker).parameters["prefetch"]
    assert prefetch.kind is inspect.Parameter.KEYWORD_ONLY and prefetch.default is False
    assert params(gear.Client.addServer)[:10] == [
        "self", "host", "port", "ssl_key", "ssl_cert", "ssl_ca", "keepalive", "tcp_keepidle",
        "tcp_keepintvl", "tcp_keepcnt",
    ]
    assert params(gear.Client.submitJob) == ["self", "job", "background", "precedence", "timeout"]
    assert params(gear.Connection)[:10] == [
        "host", "port", "ssl_key", "ssl_cert", "ssl_ca", "client_id", "keepalive", "tcp_keepidle",
        "tcp_keepintvl", "tcp_keepcnt",
    ]
    assert params(gear.Server)[:14] == [
        "port", "ssl_key", "ssl_cert", "ssl_ca", "statsd_host", "statsd_port", "statsd_prefix", "server_id",
        "acl", "host", "keepalive", "tcp_keepidle", "tcp_keepintvl", "tcp_keepcnt",
    ]
    assert params(gear.Job) == ["name", "arguments", "unique"]
    assert params(gear.WorkerJob) == ["handle", "name", "arguments", "unique"]
    assert params(gear.FunctionRecord) == ["name", "timeout"]
    assert params(gear.Worker.registerFunction) == ["self", "name", "timeout"]
    assert inspect.signature(gear.Connection.sendAdminRequest).parameters["timeout"].default == 90
    assert inspect.signature(gear.Connection.echo).parameters["timeout"].default == 30


def test_job_does_not_define_wait_or_setcomplete_that_zuul_subclasses_define():
    for cls in (gear.Job, gear.TextJob, gear.BinaryJob):
        assert not hasattr(cls, "wait") and not hasattr(cls, "setComplete")
        assert callable(cls.waitForCompletion)


def test_job_accepts_str_and_bytes():
    job = gear.Job("reverse", "test string")
    assert job.name == "reverse" and job.binary_name == b"reverse"
    assert job.arguments == b"test string" and job.binary_arguments == b"test string"
    assert job.unique is None and job.handle is None and job.connection is None
    assert (job.complete, job.failure, job.warning, job.data, job.exception) == (False, False, False, [], None)
    assert gear.Job(b"f", b"\x00\xff", unique="u").unique == b"u"
    assert gear.Job("f", "h\u00e9").arguments == "h\u00e9".encode()
    with pytest.raises(TypeError):
        gear.Job("f", 42)


def test_text_and_binary_jobs():
    job = gear.TextJob("f", "h\u00e9llo", unique="u1")
    assert job.arguments == "h\u00e9llo" and job.binary_arguments == "h\u00e9llo".encode()
    assert job.unique == "u1" and job.binary_unique == b"u1"
    job.data.append(b"x")
    assert job.data == ["x"]
    job.exception = b"boom"
    assert job.exception == "boom"
    binary = gear.BinaryJob(b"\xff\xfe", b"args")
    assert binary.name == b"\xff\xfe"
    worker_job = gear.TextWorkerJob(b"H:1", b"f", "h\u00e9".encode(), b"")
    assert worker_job.arguments == "h\u00e9" and worker_job.name == "f"
    assert gear.BinaryWorkerJob(b"H:1", b"\xff", b"a").name == b"\xff"
    with pytest.raises(ValueError):
        job.data = []  # a TextJob's data must stay a TextList


def test_function_record_keeps_bytes_names():
    record = gear.FunctionRecord("reverse", 30)
    assert record.name == b"reverse" and record.timeout == 30
    assert "reverse" in repr(record)


def test_packet_equality_arguments_and_binary_form():
    packet = gear.Packet(constants.REQ, constants.SUBMIT_JOB, b"f\x00u\x00a\x00b")
    assert packet == gear.Packet(constants.REQ, constants.SUBMIT_JOB, b"f\x00u\x00a\x00b")
    assert packet != gear.Packet(constants.RES, constants.SUBMIT_JOB, b"f\x00u\x00a\x00b")
    assert packet.getArgument(0) == b"f" and packet.getArgument(2, True) == b"a\x00b"
    assert packet.toBinary() == b"\x00REQ\x00\x00\x00\x07\x00\x00\x00\x07f\x00u\x00a\x00b"
    assert "SUBMIT_JOB" in repr(packet)
    assert gear.Packet(constants.REQ, constants.ECHO_REQ, "t\u00e9").data == "t\u00e9".encode()
    with pytest.raises(gear.InvalidDataError):
        gear.Packet(b"REQ\x00", constants.NOOP, b"")
    with pytest.raises(TypeError):
        gear.Packet("\x00REQ", constants.NOOP, b"")


def test_received_packets_read_arguments_as_a_split_body_would():
    args = (b"H:1", b"f", b"u", b"a\x00b\x00")
    packet = gear.Packet._received(constants.RES, constants.JOB_ASSIGN_UNIQ, args, None)
    plain = gear.Packet(constants.RES, constants.JOB_ASSIGN_UNIQ, b"\x00".join(args))
    assert packet == plain
    for index in range(6):
        for last in (False, True):
            if index > 3 and not last:
                continue
            assert packet.getArgument(index, last) == plain.getArgument(index, last), (index, last)
    packet.data = b"x\x00y"  # a changed body is split afresh, not read from the decoded arguments
    assert packet.getArgument(0) == b"x" and packet.getArgument(1, True) == b"y"
    assert gear.Packet._received(constants.RES, constants.NOOP, (), None).data == b""


def test_built_packets_frame_what_they_hold_when_changed():
    packet = gear.Packet._build(constants.SUBMIT_JOB, b"f", b"u", b"a\x00b")
    assert packet == gear.Packet(constants.REQ, constants.SUBMIT_JOB, b"f\x00u\x00a\x00b")
    assert packet.toBinary() == b"\x00REQ\x00\x00\x00\x07\x00\x00\x00\x07f\x00u\x00a\x00b"
    packet.ptype = constants.SUBMIT_JOB_BG
    assert packet.toBinary()[4:8] == b"\x00\x00\x00\x12"
    packet.data = b"g\x00v\x00c"
    assert packet.toBinary().endswith(b"\x00\x00\x00\x05g\x00v\x00c")
    packet.code = constants.RES
    assert packet.toBinary().startswith(constants.RES)
    with pytest.raises(gear.InvalidDataError):
        gear.Packet._build(constants.SUBMIT_JOB, b"f\x00", b"u", b"a")


def test_packet_get_job_looks_up_the_connections_jobs():
    conn = gear.Connection("127.0.0.1", 1)
    job = gear.Job("f", b"")
    conn.related_jobs[b"H:1"] = job
    assert gear.Packet(constants.RES, constants.WORK_DATA, b"H:1\x00d", conn).getJob() is job
    with pytest.raises(gear.UnknownJobError):
        gear.Packet(constants.RES, constants.WORK_DATA, b"H:2\x00d", conn).getJob()


def test_admin_requests_commands_and_framing():
    with pytest.raises(NotImplementedError):
        gear.AdminRequest()
    assert gear.StatusAdminRequest().getCommand() == b"status\n"
    assert gear.ShowJobsAdminRequest().getCommand() == b"show jobs\n"
    assert gear.ShowUniqueJobsAdminRequest().getCommand() == b"show unique jobs\n"
    assert gear.WorkersAdminRequest().getCommand() == b"workers\n"
    assert gear.VersionAdminRequest().getCommand() == b"version\n"
    assert gear.CancelJobAdminRequest("H:x:1").getCommand() == b"cancel job H:x:1\n"
    status = gear.StatusAdminRequest()
    assert status.isComplete(b"f\t0\t0\t1\n") == (False, None)
    assert status.isComplete(b"f\t0\t0\t1\n.\nrest") == (True, b"rest")
    assert status.response == b"f\t0\t0\t1\n.\n"
    version = gear.VersionAdminRequest()
    assert version.isComplete(b"OK 1.0\r\nx") == (True, b"x") and version.response == b"OK 1.0\r\n"
    assert status.waitForResponse(0.01) is False


def test_connection_attributes_and_repr():
    conn = gear.Connection("example.org", 4730)
    assert (conn.host, conn.port, conn.conn, conn.connected, conn.connect_time) == (
        "example.org", 4730, None, False, None)
    assert conn.related_jobs == {} and conn.pending_tasks == [] and conn.admin_requests == []
    assert conn.state == "INIT" and conn.state_time > 0 and conn.use_ssl is False
    assert repr(conn).startswith("<gear.Connection 0x") and "host: example.org port: 4730" in repr(conn)
    assert gear.Connection("h", 1, "k", "c", "ca").use_ssl is True
    assert gear.Connection("h", 1, "k", "c").use_ssl is False


def test_worker_requires_a_client_id_and_accepts_the_deprecated_worker_id():
    with pytest.raises(Exception):  # noqa: B017 - gear raised a bare Exception; ours is ConfigurationError
        gear.Worker()
    worker = gear.Worker(worker_id="old-style")
    try:
        assert worker.client_id == b"old-style" and worker.worker_id == "old-style"
    finally:
        worker.shutdown()


def test_client_shutdown_is_idempotent_and_submit_without_servers_raises():
    client = gear.Client()
    with pytest.raises(gear.NoConnectedServersError):
        client.submitJob(gear.Job("f", b""))
    with pytest.raises(gear.TimeoutError):
        client.waitForServer(0.05)
    client.shutdown()
    client.shutdown()
    assert not client.poll_thread.is_alive()


def test_add_server_twice_is_a_configuration_error():
    client = gear.Client()
    try:
        client.addServer("127.0.0.1", 1)
        with pytest.raises(gear.ConfigurationError):
            client.addServer("127.0.0.1", 1)
    finally:
        client.shutdown()


def test_invalid_precedence_is_a_configuration_error():
    client = gear.Client()
    try:
        with pytest.raises(gear.ConfigurationError):
            client.submitJob(gear.Job("f", b""), precedence=7)
    finally:
        client.shutdown()


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_does_not_load_the_server_asyncio_or_ssl():
    # What keeps `import gear` fast; the time itself is measured by benchmarks/startup.py, not here.
    out = _run("""
        import sys
        before = set(sys.modules)
        import gear
        loaded = set(sys.modules) - before
        print('geartrain.server' in loaded, 'asyncio' in loaded, 'ssl' in loaded)
    """)
    assert out.split() == ["False", "False", "False"]


def test_import_and_poll_loop_work_without_epoll():
    # The original gear failed at import where select.EPOLLET does not exist (every system but Linux).
    out = _run("""
        import select
        for name in [n for n in dir(select) if n.startswith('EPOLL') or n == 'epoll']:
            delattr(select, name)
        import gear
        client = gear.Client()
        client.addServer('127.0.0.1', 9)
        client.shutdown()
        print(type(client._selector).__name__)
    """)
    assert out.strip() in ("PollSelector", "SelectSelector", "KqueueSelector", "DevpollSelector")
