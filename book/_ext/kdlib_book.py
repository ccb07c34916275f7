"""Sphinx extension for the kdlib book.

- ``kdlib-table`` directive: renders one of :data:`TABLES` (:data:`kdlib.report.TABLES`, the staged
  studies' :data:`kdlib.staged_report.TABLES` and the others) from ``data/`` at build time, so no
  number in the book is typed by hand. Usage (MyST)::

      ```{kdlib-table} reported-vs-measured
      :paper: ICKD
      ```

  A table with no rows renders as a sentence saying so (e.g. before any run is committed). What every row
  shares (the scale, the pair) is said once above the table (:func:`kdlib.report.split_constant`). A
  reported-vs-measured table shows its measured rows; the reported rows not measured yet are counted, and
  listed in a folded block.
- ``kdlib-answer`` directive: the study's answer in words (:func:`kdlib.report.answer`; ``precision``:
  :func:`kdlib.report.precision_answer`; ``headline``: the newest complete study's in plain words,
  :func:`kdlib.report_studies.landing`; ``method`` with ``:method: cd`` and ``:study:``: a method chapter's
  verdict, :func:`kdlib.report_methods.verdict`; ``study`` with ``:study: proxy_v3``: a staged study's,
  :func:`kdlib.staged_report.answer`), from the records. The tables of :data:`STUDY_TABLES` take ``:study:``
  (the staged profile; ``newest`` for a chapter's) and, to compare one family, ``:family:``.
- ``kdlib-figure`` directive: the same for the figures of :data:`FIGURES` (``ranking``; ``study-forest``
  with ``:study:``), drawn at build time and inlined as SVG (no image files to keep in step with
  ``data/``); one with a caption (:data:`FIGURE_TEXT`) is a numbered figure with alt text.
- ``kdlib-method-modules`` directive: the API reference (``automodule``) of every method module, in the order
  of :data:`kdlib.methods.METHODS`, so the reference lists a new method without the page being edited.
- ``kdlib-cite`` directive: a BibTeX entry for the book, naming the commit it was built from
  (:func:`build_stamp`); the same commit and date stand in every page's footer (``html-page-context``).
- ``html-page-context``: table cells that read (:func:`readable_cells`: a number, an interval, a p-value or a
  commit stays on one line; an identifier breaks only after ``,``, ``=`` or ``/``), and drop script tags
  that jupyter-book 1.0.4 registers twice (sphinx-thebe and
  sphinx-togglebutton are set up once per read, which declares ``const THEBE_JS_URL`` twice and
  raises a console error in every page).
"""

from __future__ import annotations

import datetime
import functools
import html
import io
import os
import re
from pathlib import Path
from typing import Any

import yaml
from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from kdlib import (
    plots,
    record,
    report,
    report_methods,
    report_papers,
    report_studies,
    results,
    staged_forest,
    staged_report,
)
from kdlib.methods import METHODS

#: Every table the ``kdlib-table`` directive renders, by name.
TABLES = {**report.TABLES, **report_methods.TABLES, **report_studies.TABLES, **staged_report.TABLES,
          **report_papers.TABLES}
#: The tables that take a staged study's profile (option ``:study:``), and only they.
STUDY_TABLES = {**staged_report.TABLES, **report_methods.TABLES}

EMPTY = {
    "measured": "No measured runs are committed yet.",
    "teachers": "No committed run has evaluated a teacher yet.",
    "runs": "No measured runs are committed yet.",
    "bench": "No benchmark has been recorded yet (`make bench` appends to `bench/results.csv`).",
    "precision": "bf16 has not been measured against fp32 yet (`bench/precision.py`).",
    "provenance": "No measured runs are committed yet.",
    "paired": "No committed run has a KD run on the same seeds to pair with yet.",
    "findings": "No committed run has a KD run on the same seeds to pair with yet.",
    "study-forest": "The comparisons are drawn once every final run is recorded, never from some of them.",
    "claims": "No channel method has a row yet.",
    "study-teachers": "No teacher of this pair is recorded yet.",
    "study-tuning": "No tuning run of this pair is recorded yet: the tuning starts once both teachers are.",
    "study-final": "No final run of this pair is recorded yet: they start once its tuning is complete.",
    "study-family": "Compared once every final run of this pair is recorded, never from some of them.",
    "study-ablations": "Compared once every final run of this pair is recorded, never from some of them.",
    "study-noise": "Measured once every final run of this pair is recorded.",
    "study-cost": "Nothing of this pair has run yet.",
    "method-tuning": "No tuning run is recorded yet.",
    "provenance-by-study": "No measured runs are committed yet.",
    "study-provenance": "No tuning or final run of this study is recorded yet.",
    "runs-by-study": "No measured runs are committed yet.",
    "teachers-by-study": "No committed run has evaluated a teacher yet.",
    "method-final": "The comparisons are made once every final run is recorded, never from some of them.",
    "paper-table": "The reported numbers hold no table of this paper.",
    "paper-sources": "The reported numbers hold no table of this paper, so there is no source to name.",
}


class KdlibTable(SphinxDirective):
    """Render ``TABLES[name](**options)`` as a table."""

    required_arguments = 1
    option_spec = {"paper": directives.unchanged, "methods": directives.unchanged,
                   "study": directives.unchanged, "family": directives.unchanged}
    #: The columns of the folded list of reported rows that have no measurement yet.
    UNMEASURED = ["dataset", "pair", "method (as reported)", "metric", "reported", "ours: kdlib method",
                  "source"]

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        if name not in TABLES:
            raise self.error(f"unknown kdlib-table '{name}'; choose one of: {', '.join(TABLES)}")
        kwargs: dict[str, Any] = {}
        if "paper" in self.options:
            kwargs["paper"] = self.options["paper"]
        if "methods" in self.options:
            kwargs["methods"] = self.options["methods"].split()
        if (name in STUDY_TABLES) != ("study" in self.options):
            raise self.error(f"the option :study: (a staged profile) goes with the tables "
                             f"{', '.join(STUDY_TABLES)}, and only with them")
        if "study" in self.options:
            kwargs["profile"] = self.options["study"]
        if "family" in self.options:
            kwargs["family"] = self.options["family"]
        table = TABLES[name](**kwargs)
        self.env.note_dependency(str(report.RESULTS_DIR))
        if name == "reported-vs-measured":
            text = self.reported(table, kwargs["paper"])
        elif table.empty:
            named = ", ".join(" ".join(v) if isinstance(v, list) else v for v in kwargs.values())
            text = EMPTY[name] if name in EMPTY else f"No rows for {named or name}."
        else:
            text = folded(table)
        text = linked_sources(text)
        container = nodes.container(classes=["kdlib-table", f"kdlib-table-{name}"])
        self.state.nested_parse(StringList(text.splitlines(), source=f"kdlib-table {name}"),
                                self.content_offset, container)
        return [container]


    def reported(self, table: Any, paper: str) -> str:
        """Measured rows first, as a table; the others counted, and listed in a folded block."""
        if table.empty:
            return (f"The reported numbers hold no row of {paper}, so there is nothing to put our "
                    "measurements beside; the measured runs are below.")
        status = table["ours: last epoch"]
        waiting = status.isin([results.STATUS_NOT_MEASURED, results.STATUS_OUT_OF_SCOPE])
        parts = [folded(table[~waiting])] if (~waiting).any() else []
        if waiting.any():
            later = int((status == results.STATUS_NOT_MEASURED).sum())
            scope = int((status == results.STATUS_OUT_OF_SCOPE).sum())
            why = [f"{later} not yet measured"] * bool(later) + [
                f"{scope} out of scope (segmentation, detection)"] * bool(scope)
            count = (f"{int(waiting.sum())} of the {len(table)} rows {paper} reports have no measurement of "
                     f"ours at their scale: {', '.join(why)}.")
            listing = numbered_sources(table[waiting][[c for c in self.UNMEASURED if c in table]])
            parts.append(f"{count}\n\n:::{{admonition}} The {int(waiting.sum())} reported rows without a "
                         f"measurement\n:class: dropdown\n\n{listing}\n:::")
        return "\n\n".join(parts)


#: A source in a repository at a commit, as ``data/reported/`` writes it: ``github.com/<owner>/<repo>@<sha>``,
#: optionally followed by a file (``Cifar100/README.md``) or a folder (ending in ``/``); not inside a URL.
GITHUB_SOURCE = re.compile(r"(?<![\w/.\[])github\.com/([\w.-]+)/([\w.-]+)@([0-9a-f]{6,40})\b"
                           r"(?: ((?:[\w.-]+/)*[\w-]+\.[A-Za-z]\w*|(?:[\w.-]+/)+))?")


def linked_sources(text: str) -> str:
    """``text`` (Markdown) with each :data:`GITHUB_SOURCE` written as a link to the file
    (``https://github.com/<owner>/<repo>/blob/<sha>/<path>``) or the tree at that commit."""
    def link(m: re.Match) -> str:
        owner, repo, sha, path = m.groups()
        where = f"blob/{sha}/{path}" if path and not path.endswith("/") else f"tree/{sha}/{path or ''}"
        return f"[{m.group(0)}](https://github.com/{owner}/{repo}/{where.rstrip('/')})"

    return GITHUB_SOURCE.sub(link, text)


def numbered_sources(table: Any) -> str:
    """:func:`folded`, with each distinct ``source`` written once below the table and numbered in its rows."""
    sources = list(dict.fromkeys(table["source"]))
    if len(sources) < 2 or len(sources) == len(table):
        return folded(table)
    number = {s: f"[{i}]" for i, s in enumerate(sources, 1)}
    listed = "\n".join(f"{i}. {s}" for i, s in enumerate(sources, 1))
    return f"{folded(table.assign(source=table['source'].map(number)))}\n\nSources:\n\n{listed}"


def folded(table: Any) -> str:
    """A Markdown table, with what every row shares said once above it."""
    constant, shown = report.split_constant(table)
    above = report.caption(constant)
    return f"{above}\n\n{report.to_markdown(shown)}" if above else report.to_markdown(shown)


class KdlibAnswer(SphinxDirective):
    """The study's answer in words, generated from the records: version 1's (:func:`kdlib.report.answer`),
    with ``headline`` the newest complete study's in plain words with its conditions
    (:func:`kdlib.report_studies.landing`), with ``method`` and the options ``:method:`` and ``:study:`` one
    method's result in a staged study (:func:`kdlib.report_methods.verdict`), with ``precision`` the
    measurement of bf16 against fp32 (:func:`kdlib.report.precision_answer`), with ``study`` and the option
    ``:study:`` a staged study's (:func:`kdlib.staged_report.answer`)."""

    optional_arguments = 1
    option_spec = {"method": directives.unchanged, "study": directives.unchanged}
    #: The options each answer takes, and the argument each is passed as.
    OPTIONS = {"method": {"method": "method", "study": "profile"}, "study": {"study": "profile"}}

    def run(self) -> list[nodes.Node]:
        version = self.arguments[0] if self.arguments else "v1"
        answers = {"v1": report.answer, "headline": report_studies.landing,
                   "precision": report.precision_answer, "method": report_methods.verdict,
                   "study": staged_report.answer}
        if version not in answers:
            raise self.error(f"unknown kdlib-answer '{version}'; choose one of: {', '.join(answers)}")
        options = self.OPTIONS.get(version, {})
        if set(self.options) != set(options):
            raise self.error("kdlib-answer takes :method: and :study: with 'method', :study: with 'study', "
                             "and no other option")
        self.env.note_dependency(str(report.RESULTS_DIR))
        text = answers[version](**{options[k]: v for k, v in self.options.items()})
        container = nodes.container(classes=["kdlib-answer"])
        self.state.nested_parse(StringList(text.splitlines(), source="kdlib-answer"), self.content_offset,
                                container)
        return [container]


#: Every figure the ``kdlib-figure`` directive draws, by name, and the captions and alt texts of those that
#: have them (:data:`kdlib.report.FIGURE_TEXT`, :data:`kdlib.staged_forest.FIGURE_TEXT`); a staged study's
#: take its profile (option ``:study:``).
FIGURES = {**report.FIGURES, **staged_forest.FIGURES}
FIGURE_TEXT = {**report.FIGURE_TEXT, **staged_forest.FIGURE_TEXT}


class KdlibFigure(SphinxDirective):
    """Render the figures of ``FIGURES[name]()`` inline, as SVG; a figure with a caption becomes a numbered
    figure (``:name:`` its label for ``{numref}``) whose SVG carries the alt text."""

    required_arguments = 1
    option_spec = {"name": directives.unchanged, "study": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        if name not in FIGURES:
            raise self.error(f"unknown kdlib-figure '{name}'; choose one of: {', '.join(FIGURES)}")
        if (name in staged_forest.FIGURES) != ("study" in self.options):
            raise self.error(f"the option :study: (a staged profile) goes with the figures "
                             f"{', '.join(staged_forest.FIGURES)}, and only with them")
        args = [self.options["study"]] if "study" in self.options else []
        plots.setup()
        figures = FIGURES[name](*args)
        self.env.note_dependency(str(report.RESULTS_DIR))
        if not figures:
            return [nodes.paragraph(text=EMPTY.get(name, EMPTY["measured"]))]
        text = FIGURE_TEXT[name](*args) if name in FIGURE_TEXT else {}
        alt = html.escape(text.get("alt", ""), quote=True)
        container = nodes.container(classes=["kdlib-figure", f"kdlib-figure-{name}"])
        for figure in figures:
            svg = io.StringIO()
            figure.savefig(svg, format="svg", bbox_inches="tight")
            body = svg.getvalue()
            body = body[body.index("<svg"):]
            if alt:
                body = body.replace("<svg", f'<svg role="img" aria-label="{alt}"', 1)
            container += nodes.raw("", body, format="html")
        if not text.get("caption"):
            return [container]
        figure_node = nodes.figure("", container, classes=["kdlib-numbered-figure"])
        figure_node += nodes.caption(text["caption"], text["caption"])
        self.options.setdefault("name", f"fig-{name}-{self.env.docname.replace('/', '-')}")
        self.add_name(figure_node)
        return [figure_node]


class KdlibMethodModules(SphinxDirective):
    """``automodule`` with ``:members:`` for each module of :data:`kdlib.methods.METHODS`, in table order."""

    def run(self) -> list[nodes.Node]:
        modules = dict.fromkeys(cls.__module__ for cls in METHODS.values())
        rst = "\n\n".join(f".. automodule:: {module}\n   :members:" for module in modules)
        text = f"```{{eval-rst}}\n{rst}\n```"  # the page is MyST: autodoc's output is reStructuredText
        container = nodes.container(classes=["kdlib-method-modules"])
        self.state.nested_parse(StringList(text.splitlines(), source="kdlib-method-modules"),
                                self.content_offset, container)
        return container.children


#: The text of a cell kept on one line: only numbers (a value, an interval such as ``+1.47 ± 0.44`` or
#: ``[−0.30, +0.54]``, a p-value such as ``< 0.001``, a count), a date, a commit (hexadecimal with a digit,
#: ``+dirty`` when the tree had changes) or a teacher → student pair.
NUMERIC_CELL = re.compile(r"[\s+\-−–±<>≤≥×%.,:;\[\]()0-9]*[0-9][\s+\-−–±<>≤≥×%.,:;\[\]()0-9]*"
                          r"|\d{4}-\d{2}-\d{2}|(?=[0-9a-f]*[0-9])[0-9a-f]{6,40}(\+dirty)?"
                          r"|[\w.-]{1,24} → [\w.-]{1,24}")
#: Where an identifier may break: after ``,``, ``=`` or ``/`` followed by more of it, but not between two
#: digits (``10,000``, ``1/3``).
BREAK_AFTER = re.compile(r"(?<![0-9])([,/])(?=\S|$)|([,/])(?=[^\s0-9]|$)|(=)(?=\S|$)")
#: What a line never breaks inside, in any cell: a name whose hyphen stands before a digit (``CIFAR-100``,
#: ``WRN-40-2``, ``top-1``) or joins two that end in one (a pair's folder, ``resnet32-resnet8``), an interval
#: (``+1.47 [+1.03, +1.91]``, ``1.29 ± 3.39``), a p-value (``p < 0.001``) or a date (``2026-11-30 to
#: 2026-12-01`` breaks only between its dates).
_SIGNED = r"[+\-−]?[0-9][0-9.]*"
HYPHENATED = re.compile(rf"[\w.]*[A-Za-z]-[0-9][\w.-]*|[A-Za-z][\w.]*[0-9]-[A-Za-z][\w.]*[0-9]\b"
                        rf"|{_SIGNED} \[{_SIGNED}, {_SIGNED}\]|{_SIGNED} ± {_SIGNED}"
                        r"|\bp (?:[<=]|&lt;) [0-9.]+|\b\d{4}-\d{2}-\d{2}\b")
_CELL = re.compile(r"<(td|th)(\s[^>]*)?>(.*?)</\1>", re.DOTALL)
_TAG = re.compile(r"(<[^>]+>)")


def readable_cells(body: str) -> str:
    """``body`` with each table cell marked for reading.

    A data cell whose text is a :data:`NUMERIC_CELL` gets the class ``kdlib-nowrap`` (kept on one line by the
    book's stylesheet), but for a list of numbers, which may break after its commas. In any other cell, a line
    may break after the ``,``, ``=`` and ``/`` of an identifier (a ``<wbr>`` there), a :data:`HYPHENATED` name
    is kept whole, and no word breaks elsewhere."""
    def mark(cell: re.Match) -> str:
        kind, attributes, content = cell.group(1), cell.group(2) or "", cell.group(3)
        text = html.unescape(_TAG.sub("", content)).strip()
        listing = ", " in text and not re.search(r"[\[(]", text)  # "30, 60, 90" may break after a comma
        if kind == "td" and NUMERIC_CELL.fullmatch(text) and not listing:
            if 'class="' in attributes:
                attributes = attributes.replace('class="', 'class="kdlib-nowrap ', 1)
            else:
                attributes += ' class="kdlib-nowrap"'
            return f"<td{attributes}>{content}</td>"
        parts = _TAG.split(content)  # odd items are tags: the text between them is rewritten
        parts[::2] = [HYPHENATED.sub(lambda m: f'<span class="kdlib-nowrap">{m.group(0)}</span>',
                                     BREAK_AFTER.sub(lambda m: m.group(0) + "<wbr>", part))
                      for part in parts[::2]]
        return f"<{kind}{attributes}>{''.join(parts)}</{kind}>"

    return _CELL.sub(mark, body)


def _readable_tables(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    if "body" in context:
        context["body"] = readable_cells(context["body"])


@functools.cache
def build_stamp() -> dict[str, str]:
    """The commit the book is built from (:func:`kdlib.results.commit_label`: its first 10 characters,
    ``+dirty`` when tracked files have changes; ``unknown`` outside git) and the build's date (UTC, or
    ``SOURCE_DATE_EPOCH``'s when set)."""
    commit, dirty = record.git_info()
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch
            else datetime.datetime.now(datetime.UTC))
    return {"commit": results.commit_label(commit, dirty) if commit else "unknown",
            "date": when.date().isoformat()}


def repository_url(srcdir: str | Path) -> str:
    """The project's public repository, ``repository.url`` in the book's own ``_config.yml``; empty when it
    names none (jupyter-book's default, its own repository, is not the project's)."""
    path = Path(srcdir) / "_config.yml"
    book = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return str(((book or {}).get("repository") or {}).get("url") or "")


def citation(config: Any, srcdir: str | Path) -> str:
    """A BibTeX ``@misc`` entry for the book, with its title, authors and year, the commit as its version
    and the repository's URL when one is named."""
    stamp = build_stamp()
    fields = {"title": f"{{{config.html_title or config.project}}}", "author": f"{{{{{config.author}}}}}",
              "year": stamp["date"][:4], "version": f"{{commit {stamp['commit']}}}",
              "note": f"{{Built on {stamp['date']}}}"}
    if repository_url(srcdir):
        fields["url"] = f"{{{repository_url(srcdir)}}}"
    body = ",\n".join(f"  {name:<7} = {value}" for name, value in fields.items())
    return f"@misc{{kdlib{stamp['date'][:4]},\n{body}\n}}"


class KdlibCite(SphinxDirective):
    """The book's :func:`citation`, as a BibTeX block."""

    def run(self) -> list[nodes.Node]:
        text = citation(self.config, self.env.srcdir)
        block = nodes.literal_block(text, text, language="bibtex", classes=["kdlib-cite"])
        return [block]


def _footer(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Every page's footer: the repository (if one is named), the commit and the date the book was built."""
    stamp, url = build_stamp(), repository_url(app.srcdir)
    source = f'Source: <a href="{html.escape(url)}">{html.escape(url)}</a>. ' if url else ""
    commit = f'<code class="kdlib-commit">{stamp["commit"]}</code>'
    context["theme_extra_footer"] = (f'<p class="kdlib-build">{source}Built from commit {commit} on '
                                     f'<span class="kdlib-build-date">{stamp["date"]}</span>.</p>')


def _dedupe_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    seen, unique = set(), []
    for script in context.get("script_files", []):
        # inline scripts are registered with filename None or '': compare their bodies
        filename = str(getattr(script, "filename", script) or "")
        key = (filename, tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("kdlib-table", KdlibTable)
    app.add_directive("kdlib-figure", KdlibFigure)
    app.add_directive("kdlib-answer", KdlibAnswer)
    app.add_directive("kdlib-method-modules", KdlibMethodModules)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    app.connect("html-page-context", _readable_tables)
    app.connect("html-page-context", _footer)
    app.add_directive("kdlib-cite", KdlibCite)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
