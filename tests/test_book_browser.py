"""The built book, as a reader sees it: every page loads in headless Chromium without console errors,
every internal link resolves, and the landing page shows the summary table.

Needs ``book/_build/html`` (``make test`` builds it before the unit tests) and Debian's ``chromium`` and
``chromium-driver``. Without them the test skips with the reason, except under ``CI=true``, where a skip
would hide a broken book and is a failure instead.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest

from kdlib import report

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "book" / "_build" / "html"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser test cannot run under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    if not (HTML / "index.html").exists():
        _unavailable("book/_build/html is not built (run `make book-stored` first)")
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed")
    if not (CHROMIUM and CHROMEDRIVER):
        _unavailable("Debian's chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _pages() -> list[str]:
    skip = {"genindex.html", "search.html", "py-modindex.html"}
    return sorted(
        str(p.relative_to(HTML)) for p in HTML.rglob("*.html")
        if not p.relative_to(HTML).parts[0].startswith("_") and p.name not in skip
    )


def test_every_page_loads_cleanly_and_links_resolve(site: str, browser) -> None:
    from selenium.webdriver.common.by import By

    pages = _pages()
    assert "index.html" in pages
    problems = []
    for page in pages:
        browser.get(urljoin(site, page))
        errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        problems += [f"{page}: console error: {message}" for message in errors]
        for anchor in browser.find_elements(By.CSS_SELECTOR, "a[href]"):
            href = anchor.get_attribute("href")
            url = urlparse(href)
            if url.hostname != "127.0.0.1":
                continue
            target = HTML / unquote(url.path).lstrip("/")
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                problems.append(f"{page}: broken link {href}")
    assert not problems, "\n".join(problems)


def test_landing_page_shows_the_summary(site: str, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(urljoin(site, "intro.html"))
    assert "channel" in browser.title.lower()
    assert browser.find_elements(By.CSS_SELECTOR, "article table"), "the landing page has no table"
    if len(report.study_records()):  # the ranking, drawn at build time, fits the text column
        figures = browser.find_elements(By.CSS_SELECTOR, ".kdlib-figure-ranking svg")
        assert figures, "the landing page has no ranking figure"
        column = browser.find_element(By.CSS_SELECTOR, "article").size["width"]
        assert all(0 < f.size["width"] <= column for f in figures)
    browser.save_screenshot(str(ROOT / "book" / "_build" / "landing.png"))
