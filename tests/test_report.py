"""The display tables shared by the book and the notebooks (kdlib.report), on hand-made records."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_results import make_record, write_records

from kdlib import report, results
from kdlib.recipes import available_recipes


@pytest.fixture
def records(tmp_path: Path) -> pd.DataFrame:
    runs = [make_record(seed=s, top1_last=v, git_commit="abcdef1234567", git_dirty=False,
                        created_at="2026-11-27T00:00:00Z")
            for s, v in [(0, 75.0), (1, 76.0), (2, 77.0)]]
    write_records(tmp_path, runs)
    return results.load_records(tmp_path)


def test_reported_vs_measured_puts_our_runs_beside_the_paper(records: pd.DataFrame) -> None:
    table = report.reported_vs_measured("ICKD", records)
    wanted = (table["pair"] == "ResNet32x4 → ResNet8x4") & (table["method (as reported)"] == "ICKD-C(w/o KL)")
    row = table[wanted]
    assert len(row) == 1
    row = row.iloc[0]
    assert row["reported"] == "75.25"
    assert row["ours: kdlib method"] == "ickd/default"
    assert row["ours: last epoch"].startswith("76.00 [") and row["ours: last epoch"].endswith("(n=3)")
    assert row["ours: scale"] == "cifar100, full train images, 240 epochs (repdistiller)"
    # a row we did not run says so, and out-of-scope rows are labelled
    assert (table["ours: last epoch"] == results.STATUS_NOT_MEASURED).any()
    assert (table["ours: last epoch"] == results.STATUS_OUT_OF_SCOPE).any()
    assert table["source"].str.len().gt(0).all()


def test_measured_and_provenance_show_every_run(records: pd.DataFrame) -> None:
    measured = report.measured(records)
    assert list(measured["top-1, last epoch"]) == [report._mean_ci(76.0, 75.0, 77.0, 3)]
    assert "(n=3)" in measured["top-1, last epoch"].iloc[0]
    provenance = report.provenance(records)
    assert len(provenance) == 3
    assert set(provenance["commit"]) == {"abcdef1234"}
    assert set(provenance["seed"]) == {"0", "1", "2"}


def test_empty_study_gives_empty_tables() -> None:
    empty = results.load_records([])
    for name in ("measured", "teachers", "runs", "provenance"):
        assert report.TABLES[name](empty).empty, name
    table = report.reported_vs_measured("ICKD", empty)
    assert len(table) > 0 and not (table["ours: last epoch"].str.contains(r"\(n=")).any()


def test_recipes_table_lists_every_recipe() -> None:
    assert list(report.recipes()["name"]) == available_recipes()


def test_markdown_escapes_cells() -> None:
    text = report.to_markdown(pd.DataFrame({"a|b": ["x|y", "line\nbreak"]}))
    lines = text.splitlines()
    assert lines[0] == "| a\\|b |" and lines[1] == "|---|"
    assert lines[2] == "| x\\|y |" and lines[3] == "| line break |"
