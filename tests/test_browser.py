"""The status page in a real headless Chromium against a real ``runner up`` with real runs: log in, see the
pipelines and runs, open a failed run and find its failing step and log lines; a script from outside shows
as text and does not run; no login or a wrong password gets 401 (the failure logged), a form posted
without its CSRF token is refused. A screenshot of each page goes to test-artefacts/."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from browser import browser, log_in, screenshot
from support import stop_started
from ui_site import PASSWORD, SCRIPT, SCRIPT_REF, SERVER, USER, Site

from runner.queue import Queue


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    started = Site.start(tmp_path_factory.mktemp("browser"))
    try:
        yield started
    finally:
        stop_started()


@pytest.fixture(scope="module")
def driver(site: Site) -> Iterator[Any]:
    with browser() as chromium:
        log_in(chromium, USER, PASSWORD)
        yield chromium


def url(site: Site, path: str) -> str:
    return f"http://127.0.0.1:{site.server.port}{path}"


def by_css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def test_the_pipelines_and_runs_pages_after_logging_in(site: Site, driver: Any) -> None:
    driver.get(url(site, "/"))
    assert driver.title.startswith("Pipelines"), driver.page_source
    broken = by_css(driver, "#pipeline-broken")
    assert "failing" in broken.get_attribute("class") and "its last run failed" in broken.text
    deployed = by_css(driver, "#pipeline-site")
    assert site.commit[:12] in deployed.text and "its last run failed" not in deployed.text
    assert deployed.text.startswith(f"{SERVER} site")
    # The commit's subject holds a script: shown as text, and it did not run.
    assert f"first version {SCRIPT}" in deployed.text and driver.title.startswith("Pipelines")
    # The stylesheet came from runner itself, through the CSP and the login.
    header = by_css(driver, "header")
    assert header.value_of_css_property("background-color") == "rgba(244, 246, 248, 1)"
    screenshot(driver, "pipelines")

    by_css(driver, "nav a[href='/runs']").click()
    rows = all_css(driver, "#runs tbody tr")
    assert [row.get_attribute("id") for row in rows] == [f"run-{n}" for n in sorted(site.runs.values())[::-1]]
    screenshot(driver, "runs")


def test_a_failed_run_shows_its_failing_step_and_log_lines(site: Site, driver: Any) -> None:
    broken = site.runs["broken"]
    driver.get(url(site, "/runs?pipeline=broken&status=failed"))
    by_css(driver, f"#run-{broken} a").click()
    assert driver.current_url.endswith(f"/runs/{broken}")
    failing = by_css(driver, "#failing-step")
    assert failing.text == "breaks"
    row = by_css(driver, "tr.failing")
    assert row.get_attribute("id") == "step-3" and "exited with status 3" in row.text
    failing_lines = [line.text for line in all_css(driver, "#log .line.failing")]
    assert any(line.endswith(" about to fail") for line in failing_lines), failing_lines
    assert any(line.endswith(" it broke") for line in failing_lines), failing_lines
    # The step's output holds a script: shown as text, never run (it would have set the title).
    shown = by_css(driver, "#log").text
    assert "hello <script>document.title='pwned'</script>" in shown, shown
    assert driver.title == f"Run {broken} · {by_css(driver, '.who').text.split(' · ')[0]}"
    assert not all_css(driver, "#log script")
    screenshot(driver, "run-failed")

    failing.click()
    assert driver.current_url.endswith("#log-step-3")
    assert "step 3 (breaks) starts" in by_css(driver, "#log-step-3").text


def test_a_ref_holding_a_script_shows_as_text(site: Site, driver: Any) -> None:
    driver.get(url(site, f"/runs/{site.runs['script_ref']}"))
    assert by_css(driver, "#ref").text == SCRIPT_REF
    assert driver.title.startswith(f"Run {site.runs['script_ref']}") and "pwned" not in driver.title
    screenshot(driver, "run-script-ref")
    driver.get(url(site, "/runs"))
    assert SCRIPT_REF in by_css(driver, f"#run-{site.runs['script_ref']}").text
    assert "pwned" not in driver.title


def test_the_deliveries_page(site: Site, driver: Any) -> None:
    driver.get(url(site, "/deliveries"))
    assert driver.title.startswith("Deliveries")
    assert by_css(driver, "h1").text == "Deliveries"
    screenshot(driver, "deliveries")


def status_of_page(driver: Any) -> int:
    """The HTTP status of the page the browser shows (its navigation's, as the browser saw it)."""
    return int(driver.execute_script("return performance.getEntriesByType('navigation')[0].responseStatus"))


def test_without_credentials_or_with_a_wrong_password_the_browser_gets_401_and_the_failure_is_logged(
    site: Site,
) -> None:
    with browser() as chromium:
        chromium.get(url(site, "/"))
        assert status_of_page(chromium) == 401
        assert "Pipelines" not in chromium.page_source and site.commit[:12] not in chromium.page_source
        screenshot(chromium, "no-login")
        before = len(site.server.output())
        log_in(chromium, USER, "not the password")
        chromium.get(url(site, "/runs"))
        assert status_of_page(chromium) == 401
        assert "#runs" not in chromium.page_source and "run-" not in chromium.page_source
        logged = site.server.output()[before:]
        assert f"failed login to the status page from 127.0.0.1 as '{USER}'" in logged, logged
        assert "not the password" not in site.server.output()


def test_a_redeploy_posted_without_its_csrf_token_is_refused(site: Site, driver: Any) -> None:
    run_id = site.runs["site"]
    driver.get(url(site, f"/runs/{run_id}"))
    runs_before = site.get("/runs").text.count('<tr id="run-')
    before = len(site.server.output())
    # The form as a forged page would post it: without the token (the browser still sends the login).
    driver.execute_script("document.querySelector('#redeploy input[name=csrf]').remove()")
    by_css(driver, "#redeploy button").click()
    assert status_of_page(driver) == 403
    assert "refused: the form's token is missing" in by_css(driver, "body").text
    screenshot(driver, "redeploy-without-token")
    logged = site.server.output()[before:]
    assert f"refused a redeploy of run {run_id} by {USER}: no valid CSRF token" in logged, logged
    # Nothing was queued: had it been, the worker would have made a run of it by now.
    assert Queue(site.home / "queues" / "main").entries() == []
    time.sleep(1)
    assert site.get("/runs").text.count('<tr id="run-') == runs_before


def test_every_page_reads_fine_without_javascript(site: Site) -> None:
    broken = site.runs["broken"]
    with browser(javascript=False) as chromium:
        log_in(chromium, USER, PASSWORD)
        # JavaScript is off indeed: a page's script does not run.
        chromium.get("data:text/html,<title>off</title><script>document.title='on'</script>")
        assert chromium.title == "off"
        chromium.get(url(site, "/"))
        assert "its last run failed" in by_css(chromium, "#pipeline-broken").text
        assert site.commit[:12] in by_css(chromium, "#pipeline-site").text
        screenshot(chromium, "no-javascript-pipelines")
        by_css(chromium, "nav a[href='/runs']").click()
        assert f"run-{broken}" in [row.get_attribute("id") for row in all_css(chromium, "#runs tbody tr")]
        # Filtered: the server's doing, no script's.
        chromium.get(url(site, "/runs?pipeline=broken&status=failed"))
        shown = [row.get_attribute("id") for row in all_css(chromium, "#runs tbody tr")]
        assert f"run-{broken}" in shown and f"run-{site.runs['site']}" not in shown, shown
        by_css(chromium, f"#run-{broken} a").click()
        assert by_css(chromium, "#failing-step").text == "breaks"
        assert "exited with status 3" in by_css(chromium, "tr.failing").text
        assert "it broke" in by_css(chromium, "#log").text
        screenshot(chromium, "no-javascript-run")
        chromium.get(url(site, "/deliveries"))
        assert by_css(chromium, "h1").text == "Deliveries"
        screenshot(chromium, "no-javascript-deliveries")
