"""The dashboard in a real browser: Debian's chromium (headless, driven by chromium-driver through selenium)
loads / from a running geard, shows the live function names and counts, and follows new jobs."""

from __future__ import annotations

import os
import shutil

import pytest

from geartrain.protocol import constants as C

from wire import Wire

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("chromium and chromium-driver are not installed: apt-get install chromium chromium-driver "
                    "(.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


_ROW = """
const row = document.querySelector(`#functions tbody tr[data-function="${arguments[0]}"]`);
if (!row) return null;
const cells = {};
for (const name of ["name", "high", "normal", "low", "running", "workers"])
  cells[name] = row.querySelector("td." + name).textContent;
return cells;
"""


def _cells(driver, function: str) -> dict[str, str] | None:
    """One function's row, read in one script (the page redraws its tables on every refresh)."""
    return driver.execute_script(_ROW, function)


def _text(driver, element_id: str) -> str:
    return driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id)


def test_dashboard_shows_live_functions_and_follows_new_jobs(http_server, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    with Wire(http_server.host, http_server.port) as client, Wire(http_server.host, http_server.port) as worker:
        for data, ptype in ((b"1", C.SUBMIT_JOB_HIGH_BG), (b"2", C.SUBMIT_JOB_BG), (b"3", C.SUBMIT_JOB_BG),
                            (b"4", C.SUBMIT_JOB_LOW_BG)):
            client.submit(b"dash_alpha", data, ptype=ptype)
        worker.send(C.SET_CLIENT_ID, b"dash-worker")
        worker.register(b"dash_alpha")
        handle = worker.grab().args[0]
        browser.get(f"http://127.0.0.1:{http_server.extra['http_port']}/")
        assert browser.title == "geard"
        first = wait.until(lambda d: _cells(d, "dash_alpha"))
        assert first == {"name": "dash_alpha", "high": "0", "normal": "2", "low": "1", "running": "1",
                         "workers": "1"}
        wait.until(lambda d: "dash-worker" in _text(d, "workers"))
        assert handle.decode() in _text(browser, "workers")
        browser.save_screenshot(str(tmp_path / "dashboard-before.png"))

        # More jobs, and a new function: the page follows by itself.
        for i in range(3):
            client.submit(b"dash_alpha", b"more%d" % i, ptype=C.SUBMIT_JOB_LOW_BG)
        client.submit(b"dash_beta", b"x", ptype=C.SUBMIT_JOB_HIGH_BG)
        wait.until(lambda d: (_cells(d, "dash_alpha") or {}).get("low") == "4")
        beta = wait.until(lambda d: _cells(d, "dash_beta"))
        assert beta["high"] == "1" and beta["workers"] == "0"
        worker.send(C.WORK_FAIL, handle)
        wait.until(lambda d: handle.decode() in _text(d, "failures"))

        # Search narrows the table to the matching names.
        search = browser.find_element("id", "search")
        search.send_keys("beta")
        wait.until(lambda d: _cells(d, "dash_alpha") is None and _cells(d, "dash_beta") is not None)

        # The job page by handle.
        queued = client.submit(b"dash_beta", b"y", ptype=C.SUBMIT_JOB_BG).decode()
        browser.get(f"http://127.0.0.1:{http_server.extra['http_port']}/#job={queued}")
        wait.until(lambda d: '"state": "queued"' in _text(d, "job"))
        assert '"function": "dash_beta"' in _text(browser, "job")
        browser.save_screenshot(str(tmp_path / "dashboard-after.png"))
    assert (tmp_path / "dashboard-before.png").stat().st_size > 0
    assert (tmp_path / "dashboard-after.png").stat().st_size > 0


def test_dashboard_pages_through_10000_functions(http_server, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    with Wire(http_server.host, http_server.port) as client:
        for i in range(10_000):
            client.send(C.SUBMIT_JOB_BG, b"many%05d" % i, b"", b"x")
        for _ in range(10_000):
            client.expect(C.JOB_CREATED)
    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    browser.get(f"http://127.0.0.1:{http_server.extra['http_port']}/")
    wait.until(lambda d: "1–50 of 10000" in _text(d, "page"))
    assert len(browser.find_elements("css selector", "#functions tbody tr")) == 50
    browser.find_element("id", "next").click()
    wait.until(lambda d: _cells(d, "many00050") is not None)
    browser.find_element("id", "search").send_keys("many09999")
    wait.until(lambda d: "1–1 of 1" in _text(d, "page"))
    assert _cells(browser, "many09999")["normal"] == "1"
