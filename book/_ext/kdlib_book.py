"""Sphinx extension for the kdlib book.

- ``html-page-context``: drop script tags that jupyter-book 1.0.4 registers twice (sphinx-thebe and
  sphinx-togglebutton are set up once per read, which declares ``const THEBE_JS_URL`` twice and
  raises a console error in every page).
"""

from __future__ import annotations

from typing import Any


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
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
