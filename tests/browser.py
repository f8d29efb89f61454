"""A real headless Chromium for tests, driven by Selenium through Debian's chromedriver.

Use it from a test module with ``from tests.browser import browser  # noqa: F401``, then::

    def test_flower_lists_the_worker(browser: Browser) -> None:
        browser.open("http://127.0.0.1:5555/workers", auth=("admin", "secret"))
        browser.wait_for_text("celery@", timeout=30)

Chromium and chromedriver come from Debian's ``chromium`` and ``chromium-driver`` packages, installed
with apt-get on first use when missing. Selenium is given both paths, so Selenium Manager never runs
(it would try to download a browser, and these machines reach nothing but Debian's mirror).
"""

from __future__ import annotations

import base64
import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.wait import WebDriverWait

APT_PACKAGES = ("chromium", "chromium-driver")
APT_TIMEOUT_S = 400  # apt-get update plus ~100 MB of packages from the mirror
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # Chromium's sandbox refuses to run as root, which CI and these machines are
    "--disable-gpu",
    "--no-first-run",
    # Nothing in the browser may try to reach the internet: only the page under test is reachable.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",  # containers give /dev/shm 64 MB, too little for the renderer
    "--window-size=1400,1000",  # big enough for a screenshot of a Flower table to be readable
)


def _apt_get(*args: str) -> None:
    command = ["apt-get", *args]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"could not install Chromium for the browser tests: {' '.join(command)}: {e}") from e
    if done.returncode != 0:
        raise RuntimeError(
            f"could not install Chromium for the browser tests: {' '.join(command)} exited {done.returncode}"
            f" (run it as root on Debian, or install {' '.join(APT_PACKAGES)} by hand):\n{done.stderr[-2000:]}"
        )


@functools.cache
def ensure_chromium() -> tuple[str, str]:
    """Return the paths of chromium and chromedriver, installing Debian's packages first when missing.

    Raises ``RuntimeError`` saying which command failed and how, rather than skipping the test: a
    browser test that silently does not run is worse than one that fails.
    """
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        _apt_get("update")
        # The lock timeout waits out another apt-get (a parallel test session) instead of failing.
        _apt_get("install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120", *APT_PACKAGES)
        chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
        if chromium is None or driver is None:
            raise RuntimeError(f"apt-get installed {APT_PACKAGES} but chromium or chromedriver is not on PATH")
    return chromium, driver


class Browser:
    """One headless Chromium window: open a page, wait for text, read it, take a screenshot."""

    def __init__(self, profile: Path) -> None:
        """Start Chromium with a fresh profile folder (its chromedriver log goes in there too)."""
        chromium, driver = ensure_chromium()
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        profile.mkdir(parents=True, exist_ok=True)
        service = Service(executable_path=driver, log_output=str(profile / "chromedriver.log"))
        self.driver = webdriver.Chrome(options=options, service=service)
        self.driver.execute_cdp_cmd("Network.enable", {})

    def open(self, url: str, auth: tuple[str, str] | None = None, timeout: float = 30) -> None:
        """Load url; with auth, every request the page makes (XHR and fetch too) carries basic auth.

        The header is set through the DevTools protocol, so it goes on every request the tab makes;
        answering the server's challenge instead would need a login prompt, which headless never shows.
        """
        headers = {}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        self.driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})
        self.driver.set_page_load_timeout(timeout)
        self.driver.get(url)

    def text(self) -> str:
        """The rendered text of the page's body, as a user would see it ('' before there is a body)."""
        text = self.driver.execute_script("return document.body ? document.body.innerText : '';")
        return str(text or "")

    def wait_for_text(self, text: str, timeout: float = 30) -> None:
        """Wait until the page's body text contains text; on timeout fail showing what the page says."""
        try:
            WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(lambda _: text in self.text())
        except TimeoutException:
            shown = self.text()
            # A 401 with WWW-Authenticate leaves headless Chromium on an empty page behind a login
            # prompt nobody sees, so an empty page most often means missing or wrong credentials.
            says = f"the page says:\n{shown[:2000]}" if shown else "the page is empty (wrong credentials?)"
            raise AssertionError(
                f"{text!r} did not appear on {self.driver.current_url} within {timeout} s; {says}"
            ) from None

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the window to path and return path."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.driver.get_screenshot_as_png())
        return path

    def close(self) -> None:
        """Quit Chromium and chromedriver."""
        self.driver.quit()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """A fresh headless Chromium per test: no cookies, cache or auth header left from another test."""
    chrome = Browser(tmp_path / "chromium-profile")
    try:
        yield chrome
    finally:
        chrome.close()
