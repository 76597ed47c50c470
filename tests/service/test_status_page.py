"""The status page at ``/``, driven by a real headless Chromium (Selenium + Debian's
``chromium`` and ``chromium-driver``): submit through the form, watch the progress bar,
see the rendered score, download the MusicXML, see a failed job's error.

The screenshot goes to ``test-artifacts/status-page.png`` on every run.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import music21
import pytest

from tests.service_app import deploy

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _browser_or_skip():
    if CHROMIUM and CHROMEDRIVER:
        return
    message = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    if os.environ.get("RESCORED_REQUIRE_BROWSER"):  # set by .ci/run: in CI a missing browser is a failure
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def service_url(serve_port, tmp_path_factory):
    from ray import serve

    deploy(tmp_path_factory.mktemp("page-data"))
    yield f"http://127.0.0.1:{serve_port}"
    serve.delete("rescored")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1700",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def query(browser, script: str, *args):
    """Read the page with JavaScript: the page redraws its tables every 2 s, so element
    handles held across a redraw go stale; a query reads the current DOM in one step."""
    return browser.execute_script(script, *args)


def submit_through_form(browser, url: str, priority: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    previous = browser.find_element(By.ID, "submit-message").get_attribute("data-job-id")
    field = browser.find_element(By.ID, "url")
    field.clear()
    field.send_keys(url)
    Select(browser.find_element(By.ID, "priority")).select_by_value(priority)
    browser.find_element(By.ID, "submit").click()
    message = browser.find_element(By.ID, "submit-message")
    return until(
        lambda: (message.get_attribute("data-job-id") or previous) != previous and message.get_attribute("data-job-id"),
        20,
        "the page to confirm the submission",
    )


def test_submit_watch_progress_see_score_and_download(browser, service_url, http_server):
    from selenium.webdriver.common.by import By

    browser.get(service_url + "/")
    until(lambda: browser.find_element(By.ID, "health").text == "service up", 20, "the page to reach the API")
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "#workers tbody tr"), 20, "the worker slot to show up")

    # a permanent failure first: its row must show the stage and the error
    failed_id = submit_through_form(browser, http_server.url("status/404/page-gone.mp3"), "default")
    error = until(
        lambda: query(
            browser,
            "const e = document.querySelector(arguments[0]); return e && e.textContent;",
            f"#job-{failed_id}[data-status=failed] .error",
        ),
        60,
        "the failed job's error",
    )
    assert error.startswith("download:") and "(permanent)" in error

    # then a real song, separated with Demucs (demucs_unittest) and transcribed with Basic Pitch
    job_id = submit_through_form(browser, http_server.url("chorale.mp3") + "?page=1", "high")
    seen: list[int] = []

    def score_shown():
        value = query(
            browser,
            "const bar = document.querySelector(arguments[0]);return bar && Number(bar.getAttribute('aria-valuenow'));",
            f"#job-{job_id} [role=progressbar]",
        )
        if value is not None and (not seen or seen[-1] != value):
            seen.append(value)
        return query(
            browser,
            "const img = document.getElementById('score-image');"
            "return Boolean(img && img.complete && img.naturalWidth > 0);",
        )

    until(score_shown, 180, "the rendered score of the completed job", interval=0.05)
    score_shown()  # the bar's last value
    assert seen[-1] == 100 and seen == sorted(seen), seen
    assert any(0 < value < 100 for value in seen), f"no live progress between 0 and 100: {seen}"
    status, text = query(
        browser,
        "const row = document.getElementById(arguments[0]);return [row.dataset.status, row.textContent];",
        f"job-{job_id}",
    )
    assert status == "completed" and "100% done" in text
    assert "notes" in browser.find_element(By.ID, "score-facts").text
    timeline = query(browser, "return [...document.querySelectorAll('#timeline tbody tr')].map(r => r.textContent);")
    assert any("separation" in line and "Separator" in line for line in timeline), timeline
    stems = {a.get_attribute("id") for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")}
    assert {"download-musicxml", "download-midi", "download-notes", "download-pdf"} <= stems
    assert any(name.startswith("download-stem-") for name in stems)
    pages = query(browser, "return document.querySelectorAll('#score-view img.score-page').length;")
    job_files = httpx.get(f"{service_url}/api/v1/jobs/{job_id}", timeout=30).json()["result"]["outputs"]
    assert pages == sum(name.startswith("pages/") for name in job_files) >= 1  # every page shown

    until(
        lambda: query(browser, "const d = document.getElementById('q-running'); return d && d.textContent === '0';"),
        20,
        "the queue panel to show the finished job",
    )
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "status-page.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000

    browser.find_element(By.ID, "download-musicxml").click()
    path = until(lambda: next((p for p in browser.downloads.glob("*.musicxml")), None), 30, "the MusicXML download")
    until(lambda: not list(browser.downloads.glob("*.crdownload")), 30, "the download to finish")
    assert path.name == f"{job_id}.musicxml"
    served = httpx.get(f"{service_url}/api/v1/scores/{job_id}", timeout=30).content
    assert path.read_bytes() == served
    score = music21.converter.parse(str(path))
    assert len(score.recurse().notes) > 20
