"""Each method chapter states each staged study's verdict on its method, and that verdict is the records' own
(:mod:`kdlib.report_methods`): generated from the final records, checked against Holm's comparisons of the
study's families in the words written and in the built page, and no sentence that version 2 made false stays
in a chapter.

The test of the built pages needs ``book/_build/html`` (``make book-stored``); without it it skips, except
under ``CI=true``.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from kdlib import comparison, report_methods, staged_report
from kdlib.methods import CHANNEL_METHODS
from kdlib.study import staged
from kdlib.study.staged import chosen_weights, load_staged

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "book" / "methods"
HTML = ROOT / "book" / "_build" / "html" / "methods"
V2 = "proxy_v2"
FINAL = staged_report.stage_records(V2, "final")
DONE = staged_report.complete(V2)
needs_final = pytest.mark.skipif(not DONE, reason="version 2's final runs are not all recorded")
#: A verdict as a chapter writes it: ``above KD``, ``below ce``, ``within the noise of DKD``.
VERDICT = re.compile(r"\b(above|below|within the noise of) (KD|DKD|ce)\b")
WORDS = {"above": "above", "below": "below", "within the corrected noise": "within the noise of"}


def expected(method: str, profile: str = V2) -> dict[str, str]:
    """Holm's verdict on ``method``'s own configuration against each baseline of the study, recomputed from
    the final records, in a chapter's words."""
    alpha = load_staged(profile).final["alpha"]
    names = staged_report.names(profile)
    records = staged_report.stage_records(profile, "final")
    out = {}
    for spec in staged_report.families(profile).values():
        members = [spec["baseline"], *spec["configurations"]]
        mine = records[[names.get((m, v)) in members for m, v in zip(records["method"], records["variant"],
                                                                      strict=True)]]
        table = comparison.holm_comparisons(mine, spec["baseline"], alpha)
        (verdict,) = table.loc[[names[(m, v)] == method for m, v in zip(table["method"], table["variant"],
                                                                        strict=True)], "verdict"]
        out[staged_report.short(spec["baseline"])] = WORDS[verdict]
    return out


def stated(text: str) -> dict[str, str]:
    """The verdicts a text states, by baseline; a baseline given two different verdicts fails."""
    found: dict[str, str] = {}
    for words, baseline in VERDICT.findall(text):
        assert found.setdefault(baseline, words) == words, f"two verdicts against {baseline}: {text}"
    return found


@pytest.mark.parametrize("method", CHANNEL_METHODS)
def test_each_chapter_renders_its_studies_newest_first_from_the_records(method: str) -> None:
    """The chapter's verdicts and tables are directives (generated at build time): the summary box the newest
    complete study's, then version 3's section, version 2's, and version 1's headed as history."""
    text = (CHAPTERS / f"{method}.md").read_text()
    box = text.index(f"```{{kdlib-answer}} method\n:method: {method}\n:study: newest\n```")
    sections = [text.index(f"### Version {v}") for v in (3, 2)] + [text.index("### Version 1 (history)")]
    assert box < sections[0] < sections[1] < sections[2] < text.index("```{kdlib-table} paired")
    for v, start, end in ((3, sections[0], sections[1]), (2, sections[1], sections[2])):
        section = text[start:end]
        assert f"```{{kdlib-answer}} method\n:method: {method}\n:study: proxy_v{v}\n```" in section
        for table in ("method-tuning", "method-final"):
            assert f"```{{kdlib-table}} {table}\n:study: proxy_v{v}\n:methods: {method}\n```" in section
        assert f"{{doc}}`its results <../study_v{v}>`" in section


@needs_final
@pytest.mark.parametrize("method", CHANNEL_METHODS)
def test_the_generated_verdict_is_holms(method: str) -> None:
    text = report_methods.verdict(method, V2)
    assert stated(text) == expected(method)
    row = report_methods.final_rows(V2, [method])
    assert stated(" ".join(row["verdict"])) == expected(method)
    assert (row["configuration"].str.split(" ").str[0] == staged_report.short(method)).all()


@needs_final
def test_the_verdict_follows_the_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """Moved 10 points down, CD falls below KD: the sentence changes with the records (this test can fail)."""
    moved = FINAL.copy()
    cd = moved["method"] == "cd"
    moved.loc[cd, "top1_last"] = moved.loc[cd, "top1_last"] - 10
    real = staged_report.stage_records
    monkeypatch.setattr(staged_report, "stage_records", lambda profile, stage: moved if stage == "final"
                        else real(profile, stage))
    assert stated(report_methods.verdict("cd", V2))["KD"] == "below"
    assert expected("cd")["KD"] == "below"
    monkeypatch.setattr(staged_report, "stage_records", real)
    assert stated(report_methods.verdict("cd", V2)) == expected("cd")


@needs_final
def test_the_tuning_row_is_the_chosen_weight() -> None:
    chosen = chosen_weights(load_staged(V2)).set_index("method")
    rows = report_methods.tuning_rows(V2).set_index("method")
    for method in CHANNEL_METHODS:
        row, choice = rows.loc[staged_report.display_name(method)], chosen.loc[method]
        tried = sorted(choice["scores"])
        assert row["chosen"].endswith(f"({staged_report.multiple(choice['multiplier'])})")
        end = choice["multiplier"] in (tried[0], tried[-1])
        assert row["at an end of the weights tried"].startswith("yes") == end
        assert row["validation top-1 at each (%)"] == ", ".join(f"{choice['scores'][m]:.2f}" for m in tried)
    assert list(report_methods.tuning_rows(V2, ["cd"])["method"]) == ["CD"]


@needs_final
def test_a_tuning_still_waiting_for_runs_shows_no_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """While the rule has extended a method's grid and the new weight has no record yet, the provisional best
    is at an end of the weights scored: the row must not present it as the choice, nor as one at an end."""
    real = staged.chosen_weights

    def cd_waits(*args, **kwargs) -> pd.DataFrame:
        chosen = real(*args, **kwargs)
        return chosen.assign(state=chosen["state"].where(chosen["method"] != "cd", comparison.WAITING))

    before = report_methods.tuning_rows(V2).set_index("method")
    monkeypatch.setattr(staged, "chosen_weights", cd_waits)
    staged_report._study_plan.cache_clear()
    try:
        rows = report_methods.tuning_rows(V2).set_index("method")
    finally:
        staged_report._study_plan.cache_clear()
    assert before.loc["CD", "chosen"].endswith("(×4)")
    assert before.loc["CD", "at an end of the weights tried"].startswith("yes")
    assert rows.loc["CD", "chosen"] == report_methods.WAITING
    assert rows.loc["CD", "at an end of the weights tried"] == "–"
    assert rows.loc["CD", "validation top-1 at each (%)"] == before.loc["CD", "validation top-1 at each (%)"]
    assert rows.drop("CD").equals(before.drop("CD"))


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
    """Every verdict the built chapter's generated answers state is Holm's over its study's final records:
    the summary box the newest complete study's, then each section its own study's, and none from a study
    whose final runs are not all recorded."""
    page = HTML / f"{method}.html"
    if not page.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("book/_build/html is not built under CI")
        pytest.skip("book/_build/html is not built (run `make book-stored` first)")
    body = page.read_text()
    answers = re.findall(r'<div class="kdlib-answer[^"]*">(.*?)</div>', body, re.DOTALL)
    newest = staged_report.newest_complete()
    second = ("proxy_v3_resnet56",) if method in load_staged("proxy_v3_resnet56").tuning["methods"] else ()
    studies = (newest, "proxy_v3", *second, V2)  # CD and CWT also run on version 3's second pair
    assert len(answers) == len(studies)
    for answer, profile in zip(answers, studies, strict=True):
        text = html.unescape(re.sub(r"<[^>]+>", "", answer))
        assert text.strip().startswith(f"Version {staged_report.version(profile)} ")
        assert stated(text) == (expected(method, profile) if staged_report.complete(profile) else {}), text
