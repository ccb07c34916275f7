"""Sphinx extension for the kdlib book.

- ``kdlib-table`` directive: renders one of :data:`TABLES` (:data:`kdlib.report.TABLES` and the second proxy
  study's :data:`kdlib.report_v2.TABLES`) from ``data/`` at build time, so no
  number in the book is typed by hand. Usage (MyST)::

      ```{kdlib-table} reported-vs-measured
      :paper: ICKD
      ```

  A table with no rows renders as a sentence saying so (e.g. before any run is committed). What every row
  shares (the scale, the pair) is said once above the table (:func:`kdlib.report.split_constant`). A
  reported-vs-measured table shows its measured rows; the reported rows not measured yet are counted, and
  listed in a folded block.
- ``kdlib-answer`` directive: the study's answer in words (:func:`kdlib.report.answer`; ``v2``:
  :func:`kdlib.report_v2.answer`; ``precision``: :func:`kdlib.report.precision_answer`), from the records.
- ``kdlib-figure`` directive: the same for the figures of :data:`kdlib.report.FIGURES` (``ranking``), drawn
  at build time and inlined as SVG (no image files to keep in step with ``data/``).
- ``kdlib-method-modules`` directive: the API reference (``automodule``) of every method module, in the order
  of :data:`kdlib.methods.METHODS`, so the reference lists a new method without the page being edited.
- ``html-page-context``: drop script tags that jupyter-book 1.0.4 registers twice (sphinx-thebe and
  sphinx-togglebutton are set up once per read, which declares ``const THEBE_JS_URL`` twice and
  raises a console error in every page).
"""

from __future__ import annotations

import io
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from kdlib import plots, report, report_v2, results
from kdlib.methods import METHODS

#: Every table the ``kdlib-table`` directive renders, by name.
TABLES = {**report.TABLES, **report_v2.TABLES}

EMPTY = {
    "measured": "No measured runs are committed yet.",
    "teachers": "No committed run has evaluated a teacher yet.",
    "runs": "No measured runs are committed yet.",
    "bench": "No benchmark has been recorded yet (`make bench` appends to `bench/results.csv`).",
    "precision": "bf16 has not been measured against fp32 yet (`bench/precision.py`).",
    "provenance": "No measured runs are committed yet.",
    "paired": "No committed run has a KD run on the same seeds to pair with yet.",
    "findings": "No committed run has a KD run on the same seeds to pair with yet.",
    "v2-teacher": "The teacher has not been trained yet.",
    "v2-tuning": "No tuning run is recorded yet.",
    "v2-final": "No final run is recorded yet: the final stage starts once every tuning run is.",
    "v2-vs-kd": "The comparisons are made once every final run is recorded, never from some of them.",
    "v2-vs-ce": "The comparisons are made once every final run is recorded, never from some of them.",
    "v2-cost": "No run of version 2 is recorded yet.",
}


class KdlibTable(SphinxDirective):
    """Render ``TABLES[name](**options)`` as a table."""

    required_arguments = 1
    option_spec = {"paper": directives.unchanged, "methods": directives.unchanged}
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
        table = TABLES[name](**kwargs)
        self.env.note_dependency(str(report.RESULTS_DIR))
        if name == "reported-vs-measured":
            text = self.reported(table, kwargs["paper"])
        elif table.empty:
            text = EMPTY.get(name, f"No rows for {', '.join(kwargs.values()) or name}.")
        else:
            text = folded(table)
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
    with the argument ``v2`` the second proxy study's (:func:`kdlib.report_v2.answer`), with ``precision`` the
    measurement of bf16 against fp32 (:func:`kdlib.report.precision_answer`)."""

    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        version = self.arguments[0] if self.arguments else "v1"
        answers = {"v1": report.answer, "v2": report_v2.answer, "precision": report.precision_answer}
        if version not in answers:
            raise self.error(f"unknown kdlib-answer '{version}'; choose one of: {', '.join(answers)}")
        self.env.note_dependency(str(report.RESULTS_DIR))
        text = answers[version]()
        container = nodes.container(classes=["kdlib-answer"])
        self.state.nested_parse(StringList(text.splitlines(), source="kdlib-answer"), self.content_offset,
                                container)
        return [container]


class KdlibFigure(SphinxDirective):
    """Render the figures of ``kdlib.report.FIGURES[name]()`` inline, as SVG."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        if name not in report.FIGURES:
            raise self.error(f"unknown kdlib-figure '{name}'; choose one of: {', '.join(report.FIGURES)}")
        plots.setup()
        figures = report.FIGURES[name]()
        self.env.note_dependency(str(report.RESULTS_DIR))
        if not figures:
            return [nodes.paragraph(text=EMPTY["measured"])]
        container = nodes.container(classes=["kdlib-figure", f"kdlib-figure-{name}"])
        for figure in figures:
            svg = io.StringIO()
            figure.savefig(svg, format="svg", bbox_inches="tight")
            body = svg.getvalue()
            container += nodes.raw("", body[body.index("<svg"):], format="html")
        return [container]


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
    return {"parallel_read_safe": True, "parallel_write_safe": True}
