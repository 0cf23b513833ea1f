"""The JSON API: status with search and paging, workers, jobs with filters and paging, one job, cancel."""

from __future__ import annotations

import urllib.parse

from geartrain.protocol import constants as C

from http_client import request
from wire import Wire


def test_status_lists_functions_with_search_sort_and_paging(http_server):
    with Wire(http_server.host, http_server.port) as client, Wire(http_server.host, http_server.port) as worker:
        for i in range(120):
            client.send(C.SUBMIT_JOB_BG, b"page%03d" % i, b"", b"x")
        for _ in range(120):
            client.expect(C.JOB_CREATED)
        client.submit(b"hot", b"1", ptype=C.SUBMIT_JOB_HIGH_BG)
        client.submit(b"hot", b"2", ptype=C.SUBMIT_JOB_LOW_BG)
        client.submit(b"hot", b"3", ptype=C.SUBMIT_JOB_LOW_BG)
        worker.register(b"hot")
        worker.grab()
        status = request(http_server, "/api/status?limit=50").json()
        assert status["total"] == 121
        assert len(status["functions"]) == 50
        assert status["functions"][0]["name"] == "hot"
        assert status["server"]["jobs"] == 123 and status["server"]["running"] == 1
        assert status["server"]["connections"]["worker"] == 1
        second = request(http_server, "/api/status?limit=50&offset=50").json()
        assert second["functions"][0]["name"] == "page049"
        found = request(http_server, "/api/status?q=HOT").json()
        assert found["total"] == 1
        hot = found["functions"][0]
        assert hot["waiting"] == {"high": 0, "normal": 0, "low": 2}
        assert (hot["queued"], hot["running"], hot["workers"]) == (2, 1, 1)
        assert hot["submitted"] == {"foreground": 0, "background": 3}
        assert hot["oldest"] >= 0
        busiest = request(http_server, "/api/status?sort=waiting&limit=1").json()["functions"][0]
        assert busiest["name"] == "hot"
        assert request(http_server, "/api/status?sort=bogus").status == 400
        assert request(http_server, "/api/status?limit=0").status == 400
        assert request(http_server, "/api/status?offset=x").status == 400


def test_workers_jobs_and_one_job_by_handle_and_unique(http_server):
    with Wire(http_server.host, http_server.port) as client, Wire(http_server.host, http_server.port) as worker:
        worker.send(C.SET_CLIENT_ID, b"w-1")
        worker.register(b"api_a", b"api_b")
        queued = [client.submit(b"api_a", b"%d" % i, unique=b"u%d" % i, ptype=C.SUBMIT_JOB_BG) for i in range(5)]
        running = worker.grab().args[0]
        client.submit(b"api_b", b"other", ptype=C.SUBMIT_JOB_BG)
        workers = request(http_server, "/api/workers").json()
        assert workers["total"] == 1
        record = workers["workers"][0]
        assert record["client_id"] == "w-1"
        assert record["functions"] == ["api_a", "api_b"]
        assert record["running"] == [{"handle": running.decode(), "function": "api_a"}]
        jobs = request(http_server, "/api/jobs?function=api_a").json()
        assert {j["handle"] for j in jobs["jobs"]} == {h.decode() for h in queued}
        assert request(http_server, "/api/jobs?function=api_a&state=running").json()["jobs"][0]["handle"] == \
            running.decode()
        assert len(request(http_server, "/api/jobs?state=queued").json()["jobs"]) == 5
        page = request(http_server, "/api/jobs?function=api_a&limit=2&offset=1").json()
        assert len(page["jobs"]) == 2 and page["more"] is True
        last = request(http_server, "/api/jobs?function=api_a&limit=2&offset=4").json()
        assert len(last["jobs"]) == 1 and last["more"] is False
        assert request(http_server, "/api/jobs?function=nothing").json()["jobs"] == []
        assert request(http_server, "/api/jobs?state=weird").status == 400
        job = request(http_server, "/api/jobs/" + urllib.parse.quote(running.decode())).json()
        assert job["state"] == "running" and job["worker"]["client_id"] == "w-1"
        assert job["background"] is True and job["priority"] == "normal"
        by_unique = request(http_server, "/api/unique/u3").json()
        assert by_unique["handle"] == queued[3].decode() and by_unique["unique"] == "u3"
        missing = request(http_server, "/api/jobs/H:nowhere:1")
        assert missing.status == 404 and b"never existed" in missing.body


def test_cancel_a_queued_job_fails_its_clients_and_a_running_one_is_refused(http_server):
    with Wire(http_server.host, http_server.port) as client, Wire(http_server.host, http_server.port) as worker:
        worker.register(b"cancel_me")
        running = client.submit(b"cancel_me", b"first")
        assert worker.grab().args[0] == running
        waiting = client.submit(b"cancel_me", b"second")
        reply = request(http_server, "/api/jobs/" + urllib.parse.quote(waiting.decode()), method="DELETE")
        assert reply.status == 200 and reply.json() == {"cancelled": waiting.decode()}
        assert client.expect(C.WORK_FAIL).args[0] == waiting
        refused = request(http_server, "/api/jobs/" + urllib.parse.quote(running.decode()), method="DELETE")
        assert refused.status == 409 and b"running" in refused.body
        assert request(http_server, "/api/jobs/" + urllib.parse.quote(waiting.decode()), method="DELETE").status \
            == 404
        client.submit(b"cancel_me", b"third", unique=b"by-unique", ptype=C.SUBMIT_JOB_BG)
        assert request(http_server, "/api/unique/by-unique", method="DELETE").status == 200
        assert request(http_server, "/api/unique/by-unique").status == 404


def test_recent_failures_are_listed(http_server):
    with Wire(http_server.host, http_server.port) as client, Wire(http_server.host, http_server.port) as worker:
        client.send(C.OPTION_REQ, b"exceptions")
        client.expect(C.OPTION_RES)
        worker.register(b"breaks")
        handle = client.submit(b"breaks", b"x")
        worker.grab()
        worker.send(C.WORK_EXCEPTION, handle, b"ValueError: no")
        client.expect(C.WORK_EXCEPTION)
        failures = request(http_server, "/api/failures").json()["failures"]
        assert failures[0]["handle"] == handle.decode()
        assert failures[0]["result"] == "exception" and failures[0]["detail"] == "ValueError: no"


def test_unknown_api_routes_are_404_not_submissions(http_server):
    reply = request(http_server, "/api/nothing", method="POST", data=b"x")
    assert reply.status == 404 and b"no API route" in reply.body
    assert request(http_server, "/api/status").json()["total"] == 0


def test_a_job_queued_only_in_the_store_is_found_by_handle_and_unique_and_cancelled(http_factory, tmp_path):
    server = http_factory(queue_type="sqlite", sqlite_db=str(tmp_path / "q.db"), memory_jobs=1)
    with Wire(server.host, server.port) as client:
        handles = [client.submit(b"spilling", b"%d" % i, unique=b"s%d" % i, ptype=C.SUBMIT_JOB_BG)
                   for i in range(4)]
        assert server.server.broker.spill.total == 3
        by_unique = request(server, "/api/unique/s2").json()
        assert by_unique["handle"] == handles[2].decode() and by_unique["state"] == "queued"
        by_handle = request(server, "/api/jobs/" + urllib.parse.quote(handles[3].decode())).json()
        assert by_handle["unique"] == "s3" and by_handle["state"] == "queued"
        assert request(server, "/api/unique/s1", method="DELETE").status == 200
        assert request(server, "/api/unique/s1").status == 404
        assert client.admin("status").lines == (b"spilling\t3\t0\t0",)
