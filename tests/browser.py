"""A real headless Chromium (Debian's chromium and chromium-driver) through Selenium, for the page's tests.

``browser()`` starts one with a fresh profile and quits it in the end whatever happened; ``log_in`` makes it
send an Authorization header with every request (Chromium blocks credentials in URLs); ``screenshot`` keeps a
picture of the page in test-artefacts/ (or $RUNNER_TEST_ARTEFACTS). Nothing is downloaded.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from support import ROOT, require

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
)


def artefacts_dir() -> Path:
    directory = Path(os.environ.get("RUNNER_TEST_ARTEFACTS") or ROOT / "test-artefacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@contextlib.contextmanager
def browser(javascript: bool = True) -> Iterator[Any]:
    """A Selenium driver of a headless Chromium with a profile of its own (JavaScript off if asked), quit on
    the way out."""
    require(CHROMIUM.exists() and CHROMEDRIVER.exists(), "needs Debian's chromium and chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require(False, "needs selenium (pip install -e .[dev])")
        raise
    profile = tempfile.mkdtemp(prefix="runner-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def log_in(driver: Any, name: str, password: str) -> None:
    """Send HTTP Basic credentials with every request of ``driver`` from now on."""
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})


def screenshot(driver: Any, name: str) -> Path:
    """The page as shown, in the artefacts directory as NAME.png (the name made safe for a file)."""
    path = artefacts_dir() / (re.sub(r"[^A-Za-z0-9._-]+", "-", name) + ".png")
    driver.save_screenshot(str(path))
    return path
