"""The lifecycle admin commands from the three client faces: gear's request classes, gearman's
GearmanAdminClient methods, and geartrain.client's admin()."""

from __future__ import annotations

import asyncio

import pytest

import gear
import gearman
from geartrain.client import Client
from geartrain.protocol import constants as C

from wire import Wire

WAIT = 30


@pytest.fixture
def server(server_factory, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[functions."doomed"]\nmax_attempts = 1\n')
    return server_factory("geartrain", policy_file=str(policy), result_ttl=600.0)


def dead_letter(server) -> bytes:
    """A background job of "doomed" that failed for good: its handle."""
    with Wire(server.host, server.port) as wire:
        handle = wire.submit(b"doomed", b"payload", b"u1", ptype=C.SUBMIT_JOB_BG)
        wire.register(b"doomed")
        assert wire.grab().args[0] == handle
        wire.send(C.WORK_EXCEPTION, handle, b"broken")
        wire.send(C.ECHO_REQ, b"")
        wire.expect(C.ECHO_RES)
    return handle


def test_gear_admin_requests(server):
    handle = dead_letter(server)
    client = gear.Client()
    client.addServer(server.host, server.port)
    client.waitForServer(WAIT)
    try:
        connection = client.getConnection()

        def ask(request: gear.AdminRequest) -> bytes:
            connection.sendAdminRequest(request, timeout=WAIT)
            return request.response

        assert ask(gear.ShowJobAdminRequest(handle)).startswith(b"handle\t" + handle + b"\nfunction\tdoomed\n")
        assert b"state\texception\n" in ask(gear.ShowJobUniqueAdminRequest("doomed", "u1"))
        failed = ask(gear.ShowFailedAdminRequest("doomed", limit=10))
        assert failed.startswith(handle + b"\tdoomed\tu1\t1\t") and failed.endswith(b"\tbroken\n.\n")
        assert ask(gear.PolicySetAdminRequest("img_*", max_attempts=4, retry_on=["fail"])) == b"OK\n"
        assert b"img_*\tmax_attempts=4\t" in ask(gear.PolicyListAdminRequest())
        assert ask(gear.ScheduleAddAdminRequest("tick", "f", "*/5 * * * *", "hello")) == b"OK\n"
        assert ask(gear.ScheduleListAdminRequest()).startswith(b"tick\tf\t*/5 * * * *\t")
        assert ask(gear.ScheduleCancelAdminRequest("tick")) == b"OK\n"
        assert b"result_ttl\t600\n" in ask(gear.SettingsAdminRequest())
        assert ask(gear.AdminCommandRequest("schedule list")) == b".\n"
        assert ask(gear.RetryFailedAdminRequest(handle)) == b"OK 1\n"
        assert ask(gear.PurgeFailedAdminRequest()) == b"OK 0\n"
    finally:
        client.shutdown()


def test_gearman_admin_client_methods(server):
    handle = dead_letter(server).decode()
    admin = gearman.GearmanAdminClient([server.address], poll_timeout=WAIT)
    job = admin.get_job(handle)
    assert (job["function"], job["unique"], job["state"], job["exception"]) == ("doomed", "u1", "exception", "broken")
    assert admin.get_job_by_unique("doomed", "u1")["handle"] == handle
    [failed] = admin.get_failed("doomed")
    assert (failed["handle"], failed["attempts"], failed["last_exception"]) == (handle, "1", "broken")
    assert admin.get_failed(offset=1) == ()
    assert admin.set_policy("img_*", max_attempts=4) == "OK"
    assert admin.get_policies()["img_*"]["max_attempts"] == "4"
    assert admin.add_schedule("tick", "f", "0 * * * *", "x") == "OK"
    [schedule] = admin.get_schedules()
    assert (schedule["name"], schedule["cron"], schedule["source"], schedule["data"]) == \
           ("tick", "0 * * * *", "admin", "x")
    assert admin.cancel_schedule("tick") == "OK"
    settings = admin.get_settings()
    assert settings["result_ttl"] == "600" and settings["policy"]["doomed"]["max_attempts"] == "1"
    assert admin.send_command("schedule list") == ()
    with pytest.raises(gearman.errors.AdminCommandError, match="UNKNOWN_SCHEDULE"):
        admin.cancel_schedule("tick")
    assert admin.retry_failed(handle) == 1
    assert admin.purge_failed() == 0


def test_geartrain_client_admin(server):
    handle = dead_letter(server)

    async def body() -> None:
        async with Client([server.address]) as client:
            shown = await client.admin(f"show job {handle.decode()}")
            assert shown.ok and b"state\texception" in shown.lines
            failed = await client.admin("show failed")
            assert failed.lines[0].startswith(handle + b"\t")
            settings = await client.admin("settings")
            assert b"policy\tdoomed\tmax_attempts=1\tbackoff_initial=1\tbackoff_factor=2\tbackoff_max=300\t" \
                   b"jitter=0\tretry_on=fail,exception,worker_lost,timeout" in settings.lines
            assert (await client.admin('schedule add t f "* * * * *"')).lines == (b"OK",)
            assert len((await client.admin("schedule list")).lines) == 1
            bad = await client.admin('schedule add t f "* * * 13 *"')
            assert not bad.ok and b"month" in bad.lines[0]
            assert (await client.admin("retry failed all")).lines == (b"OK 1",)

    asyncio.run(asyncio.wait_for(body(), WAIT))
