"""gear.Server as a base class for test servers: Zuul's FakeGearmanServer pattern on geartrain's engine."""

from __future__ import annotations

import json
import re
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest's importlib mode does not put this directory on sys.path
pytest.register_assert_rewrite("gear_support")
from gear_support import WAIT, pool, wait_until  # noqa: E402, F401

import gear  # noqa: E402
from geartrain.protocol import constants as C  # noqa: E402
from geartrain.server.broker import Broker  # noqa: E402

from wire import Wire  # noqa: E402

#: A packet type of this test server's own (Gearman defines 1-42).
PRIVATE = 200


class FakeGearmanServer(gear.Server):
    """As Zuul's tests/base.py has it: jobs of `build:` functions are held while hold_jobs_in_queue is set, and
    release() lets them go; plus a private packet type answered with the queue's length."""

    def __init__(self) -> None:
        self.hold_jobs_in_queue = False
        self.private_packets: list[bytes] = []
        super().__init__(0, host="127.0.0.1")

    def getJobForConnection(self, connection, peek=False):
        for queue in [self.high_queue, self.normal_queue, self.low_queue]:
            for job in queue:
                if not hasattr(job, "waiting"):
                    job.waiting = job.name.startswith(b"build:") and self.hold_jobs_in_queue
                if job.waiting:
                    continue
                if job.name in connection.functions:
                    if not peek:
                        queue.remove(job)
                        connection.related_jobs[job.handle] = job
                        job.worker_connection = connection
                    job.running = True
                    self.waiting_jobs -= 0 if peek else 1
                    self.running_jobs += 0 if peek else 1
                    return job
        return None

    def release(self, regex: str | None = None) -> bool:
        released = False
        for job in self.getQueue():
            if job.name.startswith(b"build:"):
                parameters = json.loads(job.arguments.decode("utf8"))
                if not regex or re.match(regex, parameters.get("job")):
                    job.waiting = False
                    released = True
        if released:
            self.wakeConnections()
        return released

    def handlePacket(self, packet):
        if packet.ptype == PRIVATE:
            self.private_packets.append(packet.data)
            packet.connection.sendPacket(gear.Packet(gear.constants.RES, gear.constants.ECHO_RES,
                                                     b"%d queued" % len(self.getQueue())))
            return
        super().handlePacket(packet)


@pytest.fixture
def fake():
    server = FakeGearmanServer()
    try:
        yield server
    finally:
        server.shutdown()


def held(server: FakeGearmanServer, name: bytes) -> list:
    return [job for job in server.getQueue() if job.name == name and getattr(job, "waiting", False)]


def test_held_jobs_wait_until_released_then_run(fake):
    fake.hold_jobs_in_queue = True
    with Wire("127.0.0.1", fake.port, WAIT) as client, Wire("127.0.0.1", fake.port, WAIT) as worker:
        worker.register(b"build:a", b"merge")
        build = client.submit(b"build:a", json.dumps({"job": "project-test"}).encode())
        merge = client.submit(b"merge", b"m", ptype=C.SUBMIT_JOB_HIGH)
        assert [job.handle for job in fake.high_queue] == [merge]
        assert worker.grab(WAIT).args[0] == merge  # not held
        worker.send(C.GRAB_JOB_UNIQ)
        assert worker.expect(C.NO_JOB).args == ()  # the build is held back
        worker.send(C.PRE_SLEEP)
        wait_until(lambda: held(fake, b"build:a"))
        job = fake.jobs[build]
        assert job in fake.normal_queue and not job.running and job.client_connection is not None
        assert fake.release("other-job") is False
        assert fake.release("project-.*") is True
        worker.expect(C.NOOP)  # wakeConnections() from this thread woke the sleeping worker
        assigned = worker.grab(WAIT)
        assert assigned.args[:2] == (build, b"build:a")
        assert job.running and job.worker_connection.related_jobs[build] is job
        assert job.worker_connection.functions == {b"build:a", b"merge"}
        worker.send(C.WORK_STATUS, build, b"1", b"2")
        worker.send(C.WORK_COMPLETE, build, b"ok")
        worker.send(C.WORK_COMPLETE, merge, b"merged")
        answers = [(packet.ptype, packet.args[0]) for packet in (client.next_event(WAIT) for _ in range(3))]
        assert answers == [(C.WORK_STATUS, build), (C.WORK_COMPLETE, build), (C.WORK_COMPLETE, merge)]
        wait_until(lambda: not fake.jobs)
        assert fake.getQueue() == []


def test_a_subclass_may_reorder_and_drop_queued_jobs(fake):
    fake.hold_jobs_in_queue = True
    with Wire("127.0.0.1", fake.port, WAIT) as client, Wire("127.0.0.1", fake.port, WAIT) as worker:
        first = client.submit(b"build:b", b'{"job": "one"}')
        second = client.submit(b"build:b", b'{"job": "two"}')
        dropped = client.submit(b"build:b", b'{"job": "three"}', ptype=C.SUBMIT_JOB_BG)
        wait_until(lambda: len(fake.normal_queue) == 3)
        fake.normal_queue.reverse()  # as a test server may: the latest first
        fake._removeJob(fake.jobs[dropped])
        worker.register(b"build:b")
        fake.hold_jobs_in_queue = False
        fake.release()
        order = [worker.grab(WAIT).args[0] for _ in range(2)]
        assert order == [second, first]
        assert dropped not in fake.jobs
        status = client.admin("status")
        assert status.lines == (b"build:b\t2\t2\t1",)


def test_a_private_packet_type_reaches_the_overridden_handle_packet(fake):
    with Wire("127.0.0.1", fake.port, WAIT) as peer:
        peer.submit(b"build:c", b'{"job": "x"}', ptype=C.SUBMIT_JOB_BG)
        peer.send_raw(gear.Packet(gear.constants.REQ, PRIVATE, b"hello\x00world").toBinary())
        assert peer.expect(C.ECHO_RES).args == (b"1 queued",)
        assert fake.private_packets == [b"hello\x00world"]
        peer.send_raw(gear.Packet(gear.constants.REQ, PRIVATE + 1, b"").toBinary())
        assert peer.expect(C.ERROR).args[0] == b"INVALID_COMMAND"  # not handled by the subclass either
        peer.send(C.ECHO_REQ, b"still here")
        assert peer.expect(C.ECHO_RES).args == (b"still here",)


def test_gear_client_and_worker_run_through_a_subclass(fake, pool):  # noqa: F811
    fake.hold_jobs_in_queue = True
    client = pool.client()
    client.addServer("127.0.0.1", fake.port)
    client.waitForServer(WAIT)
    worker = pool.worker(None, "build:d")
    worker.addServer("127.0.0.1", fake.port)
    worker.waitForServer(WAIT)
    job = gear.Job("build:d", json.dumps({"job": "gate"}))
    client.submitJob(job)
    grabbed: list = []
    waiter = threading.Thread(target=lambda: grabbed.append(worker.getJob()), daemon=True)
    waiter.start()
    wait_until(lambda: held(fake, b"build:d"))  # the worker asked, the job was held back
    assert any(b"build:d" in c.functions for c in fake.active_connections)
    assert not grabbed
    fake.release()
    waiter.join(WAIT)
    worker_job = grabbed[0]
    assert worker_job.name == "build:d"
    worker_job.sendWorkComplete(b"done")
    assert job.waitForCompletion(WAIT)
    assert job.data == [b"done"] and not job.failure


def test_a_lost_worker_fails_its_running_job_for_the_client(fake):
    with Wire("127.0.0.1", fake.port, WAIT) as client:
        with Wire("127.0.0.1", fake.port, WAIT) as worker:
            worker.register(b"build:e")
            handle = client.submit(b"build:e", b'{"job": "y"}')
            assert worker.grab(WAIT).args[0] == handle
        assert client.expect(C.WORK_FAIL).args == (handle,)
        wait_until(lambda: not fake.jobs)


def test_without_overrides_the_server_keeps_its_fast_path():
    class Configured(gear.Server):
        def __init__(self) -> None:
            self.extra = 1
            super().__init__(0, host="127.0.0.1")

    for cls in (gear.Server, Configured):
        server = cls(0, host="127.0.0.1") if cls is gear.Server else cls()
        try:
            assert type(server.server.broker) is Broker
            with Wire("127.0.0.1", server.port, WAIT) as wire:
                handle = wire.submit(b"fast", b"x", ptype=C.SUBMIT_JOB_HIGH_BG)
                assert [job.handle for job in server.high_queue] == [handle] and handle in server.jobs
                assert server.functions == {b"fast"}
                wire.register(b"also")
                wire.send(C.ECHO_REQ, b"")
                wire.expect(C.ECHO_RES)
                assert [c.functions for c in server.active_connections] == [{b"also"}]
        finally:
            server.shutdown()
    fake = FakeGearmanServer()
    try:
        assert type(fake.server.broker) is not Broker
    finally:
        fake.shutdown()


def test_the_gear_model_serves_tls_with_gears_acl(tmp_path):
    from geartrain.server.tls import client_context

    from certs import make_pki

    pki = make_pki(tmp_path)
    acl = gear.ACL()
    acl.add(gear.ACLEntry("worker", register="build:.*"))
    acl.add(gear.ACLEntry("client", invoke="build:.*"))
    key, cert, ca = pki.server_files()

    class Secure(FakeGearmanServer):
        def __init__(self) -> None:
            self.hold_jobs_in_queue = False
            self.private_packets = []
            gear.Server.__init__(self, 0, ssl_key=key, ssl_cert=cert, ssl_ca=ca, acl=acl, host="127.0.0.1")

    server = Secure()
    try:
        def connect(cn: str) -> Wire:
            return Wire("127.0.0.1", server.port, WAIT, ssl_context=client_context(*pki.client_files(cn)))

        with connect("client") as client, connect("worker") as worker:
            client.send(C.SUBMIT_JOB, b"deploy", b"", b"x")
            assert client.expect(C.ERROR).args[0] == b"PERMISSION_DENIED"
            handle = client.submit(b"build:f", b'{"job": "z"}')
            worker.register(b"deploy", b"build:f")  # deploy is ignored, as gear's Server does
            assert worker.grab(WAIT).args[0] == handle
            assert {c.ssl_subject for c in server.active_connections} == {"client", "worker"}
            assert [c.functions for c in server.active_connections if c.ssl_subject == "worker"] == [{b"build:f"}]
            assert client.admin("acl list").lines[0].startswith(b"client\t")
    finally:
        server.shutdown()
