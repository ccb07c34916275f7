"""Each method chapter's table of its paper (kdlib.report_papers), checked against the CSV read here."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd
import pytest
from test_results import make_record, write_records

from kdlib import report_papers, results
from kdlib.paths import REPORTED_CSV

CHAPTERS = Path(__file__).resolve().parents[1] / "book" / "methods"
EMPTY = results.load_records([])


def _csv() -> list[dict[str, str]]:
    with open(REPORTED_CSV, newline="") as f:
        return list(csv.DictReader(f))


def _chapter_paper(chapter: str) -> str:
    """The ``:paper:`` of the chapter's ``paper-table`` directive."""
    text = (CHAPTERS / f"{chapter}.md").read_text()
    match = re.search(r"```\{kdlib-table\} paper-table\n:paper: (.+)\n```", text)
    assert match, f"{chapter}.md renders no paper-table"
    assert f"```{{kdlib-table}} paper-sources\n:paper: {match.group(1)}\n```" in text, chapter
    assert "```{kdlib-table} reported-vs-measured" in text, chapter  # the full list stays
    return match.group(1)


def _one(rows: list[dict[str, str]], **where: str) -> dict[str, str]:
    found = [r for r in rows if all(r[k] == v for k, v in where.items())]
    assert len(found) == 1, (where, len(found))
    return found[0]


def _number(cell: str) -> float:
    return float(cell.replace("−", "-"))


#: For each chapter: the table's row names and the CSV labels they show, the method and baseline of its Δ
#: row, the metric, and how a column is found in the CSV (dataset, teacher, student of the KD-or-method rows).
EXPECTED = {
    "ickd": {"rows": {"teacher": "Teacher", "student alone": "Vanilla", "KD": "KD",
                      "ICKD-C without KD": "ICKD-C(w/o KL)", "ICKD-C": "ICKD-C(Ours)"},
             "delta": ("ICKD-C", "KD"), "metric": "top1_acc", "datasets": ["CIFAR-100"]},
    "cd": {"rows": {"teacher": "teacher", "student alone": "student", "KD": "KD", "CD": "CD(our)",
                    "CD+GKD": "CD+GKD(our)", "CD+GKD+EDT": "CD+GKD+EDT(our)"},
           "delta": ("CD+GKD+EDT", "KD"), "metric": "top1_err", "datasets": ["CIFAR-100"]},
    "iekd": {"rows": {"baseline (not named)": "baseline (row unspecified)", "IE-KD": "IE-KD"},
             "delta": ("IE-KD", "baseline (not named)"), "metric": "top1_err",
             "datasets": ["CIFAR-10", "ImageNet-1K"]},
}


def _expected_cell(rows: list[dict[str, str]], paper: str, dataset: str, label: str, metric: str,
                   teacher: str, student: str) -> str:
    """The CSV's value for one cell, found by its own rules: the teacher's row names the teacher, the
    student's row the student (perhaps with a note in parentheses), a distiller's row both."""
    mine = [r for r in rows if r["paper"] == paper and r["dataset"] == dataset and r["metric"] == metric
            and (r["method"] == label or r["method"].startswith(label + " ("))]
    fit = [r for r in mine if r["teacher"] in (teacher, "-")
           and re.sub(r"\s*\(.*\)$", "", r["student"]) in (student, "")]
    assert len(fit) == 1, (paper, dataset, label, teacher, student, len(fit))
    return fit[0]["value"]


@pytest.mark.parametrize("chapter", sorted(EXPECTED))
def test_paper_table_shows_the_csv_values_and_the_gain_over_kd(chapter: str) -> None:
    want, rows = EXPECTED[chapter], _csv()
    paper = _chapter_paper(chapter)
    table = report_papers.paper_table(paper, EMPTY)
    assert 0 < len(table) <= 12
    names = list(table.iloc[:, 0])
    assert names[:len(want["rows"])] == list(want["rows"])
    method, baseline = want["delta"]
    pairs = [(r["dataset"], r["teacher"], r["student"]) for r in rows
             if r["paper"] == paper and r["metric"] == want["metric"] and r["dataset"] in want["datasets"]
             and r["method"].startswith(want["rows"][method])]
    assert len(table.columns) - 1 == len(pairs) > 0
    for header, (dataset, teacher, student) in zip(table.columns[1:], pairs, strict=True):
        assert header.endswith(f"{teacher} → {student}") and (len(want["datasets"]) == 1 or dataset in header)
        cells = dict(zip(names, table[header], strict=True))
        for name, label in want["rows"].items():
            expected = _expected_cell(rows, paper, dataset, label, want["metric"], teacher, student)
            assert cells[name] == expected, (header, name)
        sign = -1 if want["metric"].endswith("_err") else 1  # a lower error is a gain
        gain = sign * (float(cells[method]) - float(cells[baseline]))
        delta = next(n for n in names if n.startswith("Δ"))
        assert _number(cells[delta]) == pytest.approx(gain, abs=1e-9)


def test_ickd_columns_follow_the_paper_and_the_table_stays_compact() -> None:
    table = report_papers.paper_table("ICKD", EMPTY)
    kd = [f"{r['teacher']} → {r['student']}" for r in _csv()
          if r["paper"] == "ICKD" and r["dataset"] == "CIFAR-100" and r["method"] == "KD"]
    assert list(table.columns[1:]) == kd and len(kd) >= 7
    assert table.columns[0] == "CIFAR-100, top-1 accuracy (%)"
    assert report_papers.paper_table("CD", EMPTY).columns[0] == "CIFAR-100, top-1 error (%)"


def test_cwt_shows_its_gains_as_published() -> None:
    paper = _chapter_paper("cwt")
    table = report_papers.paper_table(paper, EMPTY)
    rows = [r for r in _csv() if r["paper"] == paper]
    assert len(table.columns) - 1 == len(rows) and len(table) <= 12
    gains = dict(zip(table.iloc[:, 0], table.iloc[:, 1:].to_numpy().tolist(), strict=True))
    assert gains["gain over the student alone"] == [r["value"] for r in rows]
    assert gains["measure"] == [r["metric"] for r in rows]


def test_ccs_has_no_table_and_its_chapter_says_so() -> None:
    assert report_papers.paper_table("CCS", EMPTY).empty
    assert report_papers.paper_sources("CCS", EMPTY).empty
    assert "no table of the paper's" in (CHAPTERS / "ccs.md").read_text()


@pytest.mark.parametrize("chapter", ["ickd", "cd", "iekd", "cwt"])
def test_every_source_is_named_once(chapter: str) -> None:
    paper = _chapter_paper(chapter)
    sources = report_papers.paper_sources(paper, EMPTY)
    reported = {r["source"] for r in _csv() if r["paper"] == paper}
    named = [s for s in sources["source"] if s in reported]
    assert named and len(named) == len(set(named))
    table = report_papers.paper_table(paper, EMPTY)
    deltas = [n for n in table.iloc[:, 0] if n.startswith("Δ")]
    assert [n for n in sources["numbers"] if n.startswith("Δ")] == deltas


def test_our_measurement_stands_beside_the_papers(tmp_path: Path) -> None:
    runs = [make_record(seed=s, top1_last=v) for s, v in [(0, 75.0), (1, 76.0), (2, 77.0)]]
    write_records(tmp_path, runs)
    records = results.load_records(tmp_path)
    table = report_papers.paper_table("ICKD", records)
    ours = table[table.iloc[:, 0] == "ours: ICKD-C without KD (last epoch)"]
    assert len(ours) == 1
    assert ours["ResNet32x4 → ResNet8x4"].iloc[0] == "76.00 ± 2.48"  # 76 ± 4.303/√3
    assert (ours.drop(columns=[table.columns[0], "ResNet32x4 → ResNet8x4"]) == "").all(axis=None)
    assert isinstance(report_papers.paper_sources("ICKD", records), pd.DataFrame)
    assert any(n.startswith("the rows ours") for n in report_papers.paper_sources("ICKD", records)["numbers"])
