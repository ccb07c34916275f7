"""The built book, as a reader sees it: every page loads in headless Chromium without console errors,
every internal link resolves, the landing page opens with the answer and its figure, and at 1,400 px every
table fits the column it stands in, no cell is cut short ("..."), and no page speaks of the repository's
working notes (the words "issue", "session", "methods.md").

Needs ``book/_build/html`` (``make test`` builds it before the unit tests) and Debian's ``chromium`` and
``chromium-driver``. Without them the test skips with the reason, except under ``CI=true``, where a skip
would hide a broken book and is a failure instead.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
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
        "--disable-dev-shm-usage", "--window-size=1400,900",
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
    answer = browser.find_elements(By.CSS_SELECTOR, ".kdlib-answer")
    assert answer and "KD" in answer[0].text, "the landing page opens with the answer in words"
    if len(report.study_records()):  # the ranking, drawn at build time, fits the text column
        figures = browser.find_elements(By.CSS_SELECTOR, ".kdlib-figure-difference svg")
        assert len(figures) >= 1, "the landing page has no ranking figure"
        column = browser.find_element(By.CSS_SELECTOR, "article").size["width"]
        assert all(0 < f.size["width"] <= column for f in figures)
    browser.save_screenshot(str(ROOT / "book" / "_build" / "landing.png"))


#: Words of the repository's working notes, not the reader's: none may appear in the book's text.
NOT_FOR_READERS = re.compile(r"\b(issue|session)\b|methods\.md", re.IGNORECASE)

#: Per table: its width, the width of the column it stands in (its parent block), whether a cell ends
#: in "..." (pandas' cut) and the text of that cell. Folded blocks are opened first, so their tables count.
_MEASURE_TABLES = """
document.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
document.querySelectorAll('details').forEach(e => { e.open = true; });
const article = document.querySelector('article');
return Array.from(article.querySelectorAll('table')).map(t => {
  let column = t.parentElement;
  while (column && getComputedStyle(column).display.startsWith('inline')) { column = column.parentElement; }
  const cut = Array.from(t.querySelectorAll('td, th')).map(c => c.textContent.trim())
      .filter(text => text.endsWith('...') || text.endsWith('\u2026'));
  return {table: Math.ceil(t.getBoundingClientRect().width), scroll: t.scrollWidth,
          column: Math.floor(Math.min(column.clientWidth, article.clientWidth)),
          wrapper: column.scrollWidth - column.clientWidth, cut: cut};
});
"""


def test_every_page_fits_the_column_and_speaks_to_readers(site: str, browser) -> None:
    """At 1,400 px: no table wider than its column (a wide table is split, folded or made narrower, not
    scrolled), no cell ending in "...", none of the words of the working notes."""
    from selenium.webdriver.common.by import By

    browser.set_window_size(1400, 900)
    problems = []
    for page in _pages():
        browser.get(urljoin(site, page))
        for i, t in enumerate(browser.execute_script(_MEASURE_TABLES)):
            if t["table"] > t["column"] + 1 or t["scroll"] > t["table"] + 1 or t["wrapper"] > 1:
                problems.append(f"{page}: table {i} is {t['table']} px wide (scrolls {t['scroll']}) in a "
                                f"column of {t['column']} px")
            problems += [f"{page}: table {i} has a cell cut short: {text[-60:]!r}" for text in t["cut"]]
        text = browser.find_element(By.CSS_SELECTOR, "article").get_attribute("textContent")
        problems += [f"{page}: says {m.group(0)!r}: ...{text[max(0, m.start() - 60):m.end() + 20]!r}"
                     for m in NOT_FOR_READERS.finditer(text)]
    assert not problems, "\n".join(problems)


#: Per table cell (folded blocks opened first): each number, interval ("+1.47 ± 0.44",
#: "+1.47 [+1.03, +1.91]"), p-value ("< 0.001"), date, commit or identifier with a digit ("resnet32") in its
#: text whose characters do not all lie on one line, measured with Range.getClientRects over the characters;
#: and the page's sideways scroll.
_BROKEN_NUMBERS = r"""
document.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
document.querySelectorAll('details').forEach(e => { e.open = true; });
const signed = String.raw`[+\-−]?\d+(?:\.\d+)*`;
const number = String.raw`[<>≤≥]?\s?[+\-−]?[A-Za-z_]*\d+(?:[.,]\d+)*(?:\s?%)?`
    + String.raw`(?:\s?±\s?\d+(?:[.,]\d+)*|\s\[${signed}, ${signed}\])?`;
const token = new RegExp(String.raw`\b(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b|\d{4}-\d{2}-\d{2}|` + number, 'g');
const broken = [];
for (const cell of document.querySelectorAll('article table td, article table th')) {
  if (!cell.getClientRects().length) continue;  // not displayed
  const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (const m of node.data.matchAll(token)) {
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const tops = Array.from(range.getClientRects()).filter(r => r.width > 0).map(r => Math.round(r.top));
      if (tops.length && Math.max(...tops) - Math.min(...tops) > 3) broken.push(m[0]);
    }
  }
}
return {broken: broken, scroll: document.scrollingElement.scrollWidth, width: window.innerWidth};
"""


@pytest.mark.parametrize("width", [1400, 800])
def test_numbers_never_break_and_pages_never_scroll_sideways(site: str, browser, width: int) -> None:
    """At 1,400 and 800 px: no table cell breaks a line inside a number, an interval, a p-value, a date, a
    commit or an identifier like "resnet32", and no page is wider than the window (a wide table scrolls in its
    own box)."""
    browser.set_window_size(width, 900)
    inner = browser.execute_script("return window.innerWidth")
    problems = []
    for page in _pages():
        browser.get(urljoin(site, page))
        seen = browser.execute_script(_BROKEN_NUMBERS)
        problems += [f"{page}: a cell breaks inside {text!r}" for text in dict.fromkeys(seen["broken"])]
        if seen["scroll"] > inner:
            problems.append(f"{page}: the page is {seen['scroll']} px wide in a window of {inner} px")
    browser.set_window_size(1400, 900)
    assert not problems, f"at {width} px:\n" + "\n".join(problems)
