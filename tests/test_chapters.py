"""Each method chapter states version 2's verdict on its method, and that verdict is the records' own
(:mod:`kdlib.report_methods`): generated from the final records, checked against
:func:`kdlib.comparison.holm_comparisons` in the words written and in the built page, and no sentence that
version 2 made false stays in a chapter.

The test of the built pages needs ``book/_build/html`` (``make book-stored``); without it it skips, except
under ``CI=true``.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import pytest

from kdlib import comparison, report_methods, report_v2
from kdlib.methods import CHANNEL_METHODS
from kdlib.study.staged import load_staged

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "book" / "methods"
HTML = ROOT / "book" / "_build" / "html" / "methods"
FINAL = report_v2.stage_records("final")
TUNING = report_v2.stage_records("tuning")
DONE = len(report_v2.forest_data(FINAL)) > 0
needs_final = pytest.mark.skipif(not DONE, reason="version 2's final runs are not all recorded")
#: A verdict as a chapter writes it: ``above KD``, ``below ce``, ``within the noise of KD``.
VERDICT = re.compile(r"\b(above|below|within the noise of) (KD|ce)\b")
WORDS = {"above": "above", "below": "below", "within the corrected noise": "within the noise of"}


def expected(method: str, final=FINAL) -> dict[str, str]:
    """Holm's verdict on ``method`` against each baseline, from the records, in a chapter's words."""
    alpha = load_staged(report_v2.PROFILE).final["alpha"]
    out = {}
    for baseline in ("kd", "ce"):
        table = comparison.holm_comparisons(final, baseline, alpha)
        (verdict,) = table.loc[table["method"] == method, "verdict"]
        out["KD" if baseline == "kd" else "ce"] = WORDS[verdict]
    return out


def stated(text: str) -> dict[str, str]:
    """The verdicts a text states, by baseline; a baseline given two different verdicts fails."""
    found: dict[str, str] = {}
    for words, baseline in VERDICT.findall(text):
        assert found.setdefault(baseline, words) == words, f"two verdicts against {baseline}: {text}"
    return found


@pytest.mark.parametrize("method", CHANNEL_METHODS)
def test_each_chapter_renders_version_2_first_from_the_records(method: str) -> None:
    """The chapter's verdict and tables are directives (generated at build time), version 2's section comes
    before version 1's, and version 1's is headed as history."""
    text = (CHAPTERS / f"{method}.md").read_text()
    answer = f"```{{kdlib-answer}} method\n:method: {method}\n```"
    assert text.count(answer) == 2  # the summary box and the section
    for table in ("v2-method-tuning", "v2-method-final"):
        assert f"```{{kdlib-table}} {table}\n:methods: {method}\n```" in text
    v2, v1 = text.index("### Version 2"), text.index("### Version 1 (history)")
    assert v2 < v1 < text.index("```{kdlib-table} paired")
    assert "{doc}`../study_v2`" in text


@needs_final
@pytest.mark.parametrize("method", CHANNEL_METHODS)
def test_the_generated_verdict_is_holms(method: str) -> None:
    text = report_methods.verdict(method, FINAL, TUNING)
    assert stated(text) == expected(method)
    row = report_methods.final_rows([method], FINAL)
    assert stated(" ".join(row["verdict"])) == expected(method)
    assert (row["configuration"].str.split(" ").str[0] == report_v2.display_name(method)).all()


@needs_final
def test_the_verdict_follows_the_records() -> None:
    """Moved 10 points down, CD falls below KD: the sentence changes with the records (this test can fail)."""
    moved = FINAL.copy()
    cd = moved["method"] == "cd"
    moved.loc[cd, "top1_last"] = moved.loc[cd, "top1_last"] - 10
    assert stated(report_methods.verdict("cd", moved, TUNING))["KD"] == "below"
    assert expected("cd", moved)["KD"] == "below"
    assert stated(report_methods.verdict("cd", FINAL, TUNING)) == expected("cd")


@needs_final
def test_the_tuning_row_is_the_chosen_weight() -> None:
    ends = report_v2.grid_ends(TUNING).set_index("method")
    rows = report_methods.tuning_rows(None, TUNING).set_index("method")
    for method in CHANNEL_METHODS:
        row, end = rows.loc[report_v2.display_name(method)], ends.loc[method]
        assert row["chosen"].endswith(f"(×{end['multiplier']:g})")
        assert row["at an end of the grid"].startswith("yes") == bool(end["end"])
        scores = [f"{end['scores'][m]:.2f}" for m in end["tried"]]
        assert row["validation top-1 at each (%)"] == ", ".join(scores)
    assert list(report_methods.tuning_rows(["cd"], TUNING)["method"]) == ["CD"]


@pytest.mark.parametrize(("method", "stale"), [
    ("ccs", "does not sweep"), ("ccs", "No other weights are run"), ("cwt", "not swept"),
    ("cwt", "does not sweep"), ("iekd", "no committed record measures"), ("ccs", "specification"),
    ("ickd", "specification"),
])
def test_no_sentence_version_2_made_false(method: str, stale: str) -> None:
    assert stale not in (CHAPTERS / f"{method}.md").read_text()


@needs_final
@pytest.mark.parametrize("method", CHANNEL_METHODS)
def test_the_built_chapter_states_the_records_verdict(method: str) -> None:
    """Every verdict the built chapter's generated answers state is Holm's over the final records."""
    page = HTML / f"{method}.html"
    if not page.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("book/_build/html is not built under CI")
        pytest.skip("book/_build/html is not built (run `make book-stored` first)")
    body = page.read_text()
    answers = re.findall(r'<div class="kdlib-answer[^"]*">(.*?)</div>', body, re.DOTALL)
    assert len(answers) == 2
    for answer in answers:
        text = html.unescape(re.sub(r"<[^>]+>", "", answer))
        assert stated(text) == expected(method), text
