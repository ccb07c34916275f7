"""The book's extension (``book/_ext/kdlib_book.py``) and what it writes into the built pages: table cells
that keep numbers whole, and on every page a footer naming the commit and date of the build, which the
landing page's BibTeX entry cites.

The tests of the built pages need ``book/_build/html`` (``make book-stored``); without it they skip, except
under ``CI=true``, where a skip would hide a broken book.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "book" / "_build" / "html"
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import kdlib_book  # noqa: E402  (the book's local extension, not a package)


def _built() -> list[Path]:
    if not (HTML / "index.html").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("book/_build/html is not built under CI")
        pytest.skip("book/_build/html is not built (run `make book-stored` first)")
    return sorted(p for p in HTML.rglob("*.html")
                  if not p.relative_to(HTML).parts[0].startswith("_") and p.name != "index.html")


@pytest.mark.parametrize(("cell", "nowrap"), [
    ("<td><p>86.13</p></td>", True),
    ("<td>+1.47 ± 0.44</td>", True),
    ("<td>&lt; 0.001</td>", True),
    ("<td>+0.12 [−0.30, +0.54]</td>", True),
    ("<td>2d8986a545+dirty</td>", True),
    ("<td>2026-11-27</td>", True),
    ("<td>resnet32 → resnet8</td>", True),
    ("<td>30, 60, 90</td>", False),  # a list of numbers may break after its commas
    ("<td>default</td>", False),
    ("<td>within the noise</td>", False),
])
def test_cells_holding_only_numbers_stay_on_one_line(cell: str, nowrap: bool) -> None:
    assert ('class="kdlib-nowrap"' in kdlib_book.readable_cells(cell)) is nowrap


def test_identifiers_break_only_after_comma_equals_or_slash() -> None:
    cell = '<td><p>resnet32-resnet8/<a href="a/b=c">ccs</a>/inter_variant=sample,x=1 10,000 1/3</p></td>'
    out = kdlib_book.readable_cells(cell)
    assert out == ('<td><p><span class="kdlib-nowrap">resnet32-resnet8</span>/<wbr><a href="a/b=c">ccs</a>'
                   '/<wbr>inter_variant=<wbr>sample,<wbr>x=<wbr>1 10,000 1/3</p></td>')  # not in tags


def test_a_hyphen_inside_a_name_never_breaks() -> None:
    out = kdlib_book.readable_cells("<th>top-1 on CIFAR-100, resnet32-resnet8 - IE-KD</th>")
    assert out == ('<th><span class="kdlib-nowrap">top-1</span> on '
                   '<span class="kdlib-nowrap">CIFAR-100</span>, '
                   '<span class="kdlib-nowrap">resnet32-resnet8</span> - IE-KD</th>')  # a word may break


def test_every_page_names_the_commit_and_date_it_was_built_from() -> None:
    """The footer's commit is this tree's HEAD (the book is built from the tree it is tested in)."""
    pages = _built()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    short = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, check=True).stdout.strip()
    footer = re.compile(r'<p class="kdlib-build">.*?<code class="kdlib-commit">([0-9a-f]{7,10})(\+dirty)?'
                        r'</code> on <span class="kdlib-build-date">(\d{4}-\d{2}-\d{2})</span>')
    problems = []
    for page in pages:
        found = footer.search(page.read_text())
        if not found:
            problems.append(f"{page.relative_to(HTML)}: no footer with the build's commit and date")
        elif not (found.group(1).startswith(short) and head.startswith(found.group(1))):
            problems.append(f"{page.relative_to(HTML)}: built from {found.group(1)}, HEAD is {short}")
    assert not problems, "\n".join(problems)


def test_the_landing_page_cites_the_commit_of_its_footer() -> None:
    _built()
    text = re.sub(r"<[^>]+>", "", (HTML / "intro.html").read_text())
    version = re.search(r"version\s*=\s*\{commit ([0-9a-f]{7,10}(?:\+dirty)?)\}", text)
    footer = re.search(r"Built from commit ([0-9a-f]{7,10}(?:\+dirty)?) on", text)
    assert "@misc{kdlib" in text and version and footer
    assert version.group(1) == footer.group(1)


@pytest.mark.parametrize(("text", "linked"), [
    ("github.com/ADLab-AutoDrive/ICKD@403b8d3 Cifar100/README.md",
     "[github.com/ADLab-AutoDrive/ICKD@403b8d3 Cifar100/README.md]"
     "(https://github.com/ADLab-AutoDrive/ICKD/blob/403b8d3/Cifar100/README.md)"),
    ("source: github.com/zhouzaida/channel-distillation@2464d30, abstract",
     "source: [github.com/zhouzaida/channel-distillation@2464d30]"
     "(https://github.com/zhouzaida/channel-distillation/tree/2464d30), abstract"),
    ("[yes, 403b8d3](https://github.com/ADLab-AutoDrive/ICKD/tree/403b8d3)",  # a link stays as it is
     "[yes, 403b8d3](https://github.com/ADLab-AutoDrive/ICKD/tree/403b8d3)"),
])
def test_a_source_at_a_commit_becomes_a_link_to_that_commit(text: str, linked: str) -> None:
    assert kdlib_book.linked_sources(text) == linked


def test_no_link_of_the_built_book_is_malformed() -> None:
    """Every external link names a real host: no ``http://README.md`` from a word that looks like a host name,
    and no ``@commit`` inside a GitHub address (GitHub's form: ``/blob/<sha>/<path>``, ``/tree/<sha>``)."""
    problems = []
    for page in [*_built(), HTML / "index.html"]:
        for href in re.findall(r'href="(https?://[^"]*)"', page.read_text()):
            url = html.unescape(href)
            host = re.match(r"https?://([^/?#]+)", url)
            name = host.group(1).lower() if host else ""
            if "." not in name or name.endswith((".md", ".py", ".ipynb")):
                problems.append(f"{page.relative_to(HTML)}: {url} (not a host)")
            elif "github.com" in host.group(1) and "@" in url:
                problems.append(f"{page.relative_to(HTML)}: {url} (@ inside a GitHub address)")
    assert not problems, "\n".join(problems)


def test_a_span_of_dates_breaks_only_between_its_dates() -> None:
    out = kdlib_book.readable_cells("<td>2026-11-30 to 2026-12-01</td>")
    assert out == ('<td><span class="kdlib-nowrap">2026-11-30</span> to '
                   '<span class="kdlib-nowrap">2026-12-01</span></td>')


def test_every_figure_of_the_book_stands_alone() -> None:
    """Every image of a page's content (a notebook's PNG, a ``kdlib-figure``'s inline SVG) is a numbered
    figure with a caption and alt text, so it says what it shows without the text around it."""
    problems = []
    indexes = ("genindex.html", "py-modindex.html", "search.html")  # Sphinx's own (a toggle icon)
    for page in [p for p in [*_built(), HTML / "index.html"] if p.name not in indexes]:
        text = page.read_text()
        main = text[text.find("<main"):text.find("</main>")]
        shown = len(re.findall(r"<img\b", main)) + len(re.findall(r'<svg\b[^>]*role="img"', main))
        captioned = len(re.findall(r"<figcaption", main))
        described = len(re.findall(r'<img\b[^>]*\balt="[^"]+"', main)) + len(
            re.findall(r'<svg\b[^>]*aria-label="[^"]+"', main))
        if shown > captioned or shown > described:
            problems.append(f"{page.relative_to(HTML)}: {shown} images, {captioned} captions, "
                            f"{described} alt texts")
    assert not problems, "\n".join(problems)
