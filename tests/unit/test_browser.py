"""The browser fixture against a real loopback server that, like Flower, wants basic auth on every path
and fills its page in from an XHR."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.browser import Browser, browser, ensure_chromium  # noqa: F401

# The first run may apt-get install Chromium, which takes a minute or two.
pytestmark = pytest.mark.timeout(600)

USER, PASSWORD = "flower", "s3cret"
FETCHED = "42 workers online"  # only in the JSON, never in the HTML: seeing it proves the XHR ran
PAGE = b"""<!doctype html>
<html><body><h1>Dashboard</h1><p id="out">loading</p>
<script>
fetch("/api/workers").then(r => r.json()).then(d => { document.getElementById("out").textContent = d.status; });
</script></body></html>"""


@dataclass
class Site:
    """The running site: its address and each request it answered, as (path, status)."""

    url: str
    answered: list[tuple[str, int]] = field(default_factory=list)

    def wait_for_request(self, path: str, timeout: float = 10) -> int:
        """The status the site answered path with, once it has been asked for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for asked, status in list(self.answered):
                if asked == path:
                    return status
            time.sleep(0.05)
        raise AssertionError(f"nothing asked the site for {path} within {timeout} s; it answered {self.answered}")


class AuthHandler(BaseHTTPRequestHandler):
    """Basic auth on every path, as Flower's --basic-auth; / is the page, /api/workers its JSON."""

    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode("ascii")
    site: Site  # set on the subclass each fixture makes

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        if self.headers.get("Authorization") != self.expected:
            self._send(401, "text/plain", b"401 Unauthorized: credentials required",
                       {"WWW-Authenticate": 'Basic realm="flower"'})
        elif self.path == "/":
            self._send(200, "text/html; charset=utf-8", PAGE)
        elif self.path == "/api/workers":
            self._send(200, "application/json", json.dumps({"status": FETCHED}).encode())
        else:
            self._send(404, "text/plain", b"not found")

    def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.site.answered.append((self.path, status))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        """Keep request lines out of the test output."""


@pytest.fixture
def site() -> Iterator[Site]:
    """The auth-protected site on a free loopback port, served from a thread."""
    site = Site(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (AuthHandler,), {"site": site}))
    site.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, name="auth-site", daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_with_credentials_the_page_renders_what_its_xhr_fetched(browser: Browser, site: Site,  # noqa: F811
                                                                 tmp_path: Path) -> None:
    # given a page behind basic auth whose text comes from an XHR, also behind basic auth

    # when the browser opens it with the right credentials
    browser.open(site.url, auth=(USER, PASSWORD))

    # then the XHR carried them too, its text is rendered, and a screenshot of it is saved
    browser.wait_for_text(FETCHED, timeout=30)
    assert site.wait_for_request("/api/workers") == 200
    assert "Dashboard" in browser.text()
    shot = browser.screenshot(tmp_path / "shots" / "dashboard.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 1000


def test_without_credentials_the_site_answers_401_and_nothing_is_fetched(browser: Browser,  # noqa: F811
                                                                         site: Site) -> None:
    # given the same protected page

    # when the browser opens it with no credentials
    browser.open(site.url)

    # then the site refused the page, so its script never ran; Chromium does not render the 401 body
    # but holds an empty page behind a login prompt that headless mode never shows
    assert site.wait_for_request("/") == 401
    assert browser.text() == ""
    assert "/api/workers" not in [path for path, _ in site.answered]


def test_wait_for_text_fails_saying_what_the_page_shows(browser: Browser, site: Site) -> None:  # noqa: F811
    # given the page opened with credentials
    browser.open(site.url, auth=(USER, PASSWORD))
    browser.wait_for_text(FETCHED, timeout=30)

    # when waiting for text that never appears
    with pytest.raises(AssertionError) as failure:
        browser.wait_for_text("no such text", timeout=0.5)

    # then the failure quotes the page
    assert "'no such text' did not appear" in str(failure.value)
    assert FETCHED in str(failure.value)


def test_without_apt_get_the_install_fails_saying_what_to_do(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    # given a PATH with neither chromium nor apt-get on it
    monkeypatch.setenv("PATH", str(tmp_path))

    # when the browser is to be made ready
    with pytest.raises(RuntimeError) as failure:
        ensure_chromium.__wrapped__()

    # then it fails, not skips, naming the command it could not run
    assert "could not install Chromium for the browser tests: apt-get update" in str(failure.value)
