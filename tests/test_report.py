"""The display tables shared by the book and the notebooks (kdlib.report), on hand-made records."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_results import make_record, write_records

from kdlib import report, results
from kdlib.paths import BENCH_CSV
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
    assert row["ours: last epoch"] == "76.00 ± 2.48" and row["ours: seeds"] == "3"
    assert row["ours: scale"] == "cifar100, full train images, 240 epochs (repdistiller)"
    # a row we did not run says so, and out-of-scope rows are labelled
    assert (table["ours: last epoch"] == results.STATUS_NOT_MEASURED).any()
    assert (table["ours: last epoch"] == results.STATUS_OUT_OF_SCOPE).any()
    assert table["source"].str.len().gt(0).all()


def test_measured_and_provenance_show_every_run(records: pd.DataFrame) -> None:
    measured = report.measured(records)
    assert list(measured["top-1, last epoch"]) == ["76.00 ± 2.48"]  # 76 ± 4.303/√3
    assert list(measured["seeds"]) == ["3"]
    assert list(measured["diverged"]) == [""]
    provenance = report.provenance(records)
    assert len(provenance) == 3
    assert set(provenance["commit"]) == {"abcdef1234"}
    assert provenance["record (folder)"].nunique() == 3 and provenance["records under"].nunique() == 1


def test_empty_study_gives_empty_tables() -> None:
    empty = results.load_records([])
    for name in ("measured", "teachers", "runs", "provenance"):
        assert report.TABLES[name](empty).empty, name
    table = report.reported_vs_measured("ICKD", empty)
    assert len(table) > 0 and not (table["ours: last epoch"].str.contains(r"\(n=")).any()


def test_recipes_table_lists_every_recipe() -> None:
    table = report.recipes()
    assert list(table.columns) == ["field", *available_recipes()]  # one column per recipe: a narrow table
    assert not table.apply(lambda c: c.str.contains("methods.md")).any().any()


def test_markdown_escapes_cells() -> None:
    text = report.to_markdown(pd.DataFrame({"a|b": ["x|y", "line\nbreak"]}))
    lines = text.splitlines()
    assert lines[0] == "| a\\|b |" and lines[1] == "|---|"
    assert lines[2] == "| x\\|y |" and lines[3] == "| line break |"


DIVERGED = "non-finite loss term 'ickd' = nan at epoch 2, step 0"


@pytest.fixture
def study(tmp_path: Path) -> pd.DataFrame:
    """kd and ce on seeds 0-2, ickd with one diverged seed, ickd/variant=paper diverged on every seed."""
    runs = [make_record(method="kd", seed=s, top1_last=v) for s, v in enumerate([70.0, 71.0, 72.0])]
    runs += [make_record(method="ce", teacher=None, seed=s, top1_last=v) for s, v in enumerate([68, 69, 70])]
    runs += [make_record(seed=s, top1_last=v) for s, v in [(0, 72.0), (1, 74.0)]]
    runs += [make_record(seed=2, top1_last=0.0, status="diverged", failure_reason=DIVERGED)]
    runs += [make_record(variant="variant=paper", seed=s, top1_last=0.0, status="diverged",
                         failure_reason=DIVERGED) for s in range(3)]
    write_records(tmp_path, runs)
    return report.study_records(tmp_path)


def test_diverged_runs_are_counted_never_averaged(study: pd.DataFrame) -> None:
    measured = report.measured(study).set_index(["method", "variant"])
    ickd = measured.loc[("ickd", "default")]
    assert ickd["top-1, last epoch"] == "73.00 ± 12.71" and ickd["seeds"] == "2"  # 12.706·1.414/√2; not 0.0
    assert ickd["diverged"] == "1 of 3 runs"
    paper = measured.loc[("ickd", "variant=paper")]
    assert paper["top-1, last epoch"] == paper["top-1, best epoch"] == results.STATUS_DIVERGED
    assert paper["diverged"] == "3 of 3 runs" and paper["teacher top-1"] == "79.00"  # evaluated first
    assert measured.loc[("kd", "default"), "diverged"] == ""
    provenance = report.provenance(study)
    assert (provenance["status"] == f"diverged ({DIVERGED})").sum() == 4  # the reason, in the book
    assert report.runs(study)["runs"].sum() == 8  # wall times of completed runs only


def test_paired_differences_table(study: pd.DataFrame) -> None:
    table = report.paired(study).set_index(["method", "variant"])
    assert set(table.index) == {("ce", "default"), ("ickd", "default"), ("ickd", "variant=paper")}
    ce = table.loc[("ce", "default")]
    assert ce["top-1 minus kd, last epoch"] == "-2.00 ± 0.00"  # 68-70, 69-71, 70-72
    assert ce["last epoch: verdict"] == "below kd"
    ickd = table.loc[("ickd", "default")]
    assert ickd["top-1 minus kd, last epoch"] == "2.50 ± 6.35" and ickd["seeds"] == "2"  # +2, +3: seeds 0, 1
    assert ickd["last epoch: verdict"] == "within the noise" and ickd["diverged"] == "1 of 3 runs"
    paper = table.loc[("ickd", "variant=paper")]
    assert paper["top-1 minus kd, last epoch"] == results.STATUS_DIVERGED
    assert paper["diverged"] == "3 of 3 runs"
    assert list(report.paired(study)["method"])[:2] == ["ickd", "ce"]  # best first
    assert set(table["pair"]) == {"resnet32x4 → resnet8x4"}  # the comparison: the baseline's pair and scale
    assert set(table["scale"]) == {"cifar100, full train images, 240 epochs (repdistiller)"}
    assert report.paired(study, baseline="pkt").empty  # no such baseline: nothing to pair with


def test_findings_read_the_paired_table_one_line_per_verdict(study: pd.DataFrame) -> None:
    table = report.findings(study)
    assert list(table["finding"]) == ["below kd", "within the noise", "diverged on every seed"]
    assert list(table["which"]) == ["ce/default (-2.00)", "ickd/default", "ickd/variant=paper"]
    assert list(table["configurations"]) == [1, 1, 1]
    assert set(table["pair"]) == {"resnet32x4 → resnet8x4"}
    assert report.findings(study, baseline="pkt").empty


def test_ranking_figures(study: pd.DataFrame) -> None:
    figures = report.ranking(study)
    assert len(figures) == 2  # differences to kd, and absolute accuracy
    labels = [t.get_text() for t in figures[0].axes[0].get_yticklabels()]
    assert labels == ["ce (n=3)", "ickd (n=2)"]  # as readers name configurations
    assert report.ranking(results.load_records([])) == []
    assert len(report.ranking(study, absolute=False)) == 1  # the landing page's one figure


def test_answer_says_the_verdicts_in_words(study: pd.DataFrame) -> None:
    text = report.answer(study)
    assert text.startswith("**No method or variant beats KD beyond seed noise.**")
    assert "1 are below it" in text and "ce (-2.00)" in text and "/default" not in text  # as readers name it
    assert "1 diverged on every seed: ickd (variant paper)" in text
    assert "No run at the papers' scale" not in text  # the fixture's runs are CIFAR-100 runs
    assert "no answer yet" in report.answer(results.load_records([]))


def test_split_constant_says_shared_values_once() -> None:
    table = pd.DataFrame({"method": ["a", "a"], "scale": ["s", "s"], "top-1": ["1", "2"]})
    constant, rest = report.split_constant(table)
    assert constant == {"scale": "s"} and list(rest.columns) == ["method", "top-1"]
    assert report.caption(constant) == "Every row: scale s."
    assert report.split_constant(table.head(1))[1].shape == (1, 3)  # one row: left whole


def test_diverged_configuration_in_reported_table(study: pd.DataFrame) -> None:
    table = report.reported_vs_measured("ICKD", study)
    row = table[(table["pair"] == "ResNet32x4 → ResNet8x4") & (table["ours: kdlib method"] == "ickd/default")]
    assert row["ours: diverged"].tolist() == ["1 of 3 runs"] * len(row) and len(row) >= 1


def _history_record(method: str, seed: int, terms: dict[str, float]) -> dict:
    history = [{"epoch": e, "top1": 50.0 + e, "top5": 90.0, "loss": sum(terms.values()), "lr": 0.1,
                "losses": terms} for e in (1, 2)]
    return {"method": method, "variant": "default", "seed": seed, "history": history}


def test_loss_terms_legend_is_true_in_every_panel() -> None:
    """A run keeps one colour across panels (a term only some runs have must not shift the others'), and
    the figure has one legend naming every run in that colour."""
    from kdlib import plots

    records = [_history_record("kd", 0, {"ce": 1.0, "kd": 2.0}),
               _history_record("ickd", 0, {"ce": 1.0, "ickd": 3.0})]
    fig = plots.loss_terms(records)
    by_panel = {ax.get_title(): [line.get_color() for line in ax.get_lines()] for ax in fig.axes}
    legend = fig.legends[0]
    named = {t.get_text(): h.get_color()
             for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)}
    assert set(named) == {"kd/default", "ickd/default"}
    assert named["kd/default"] in by_panel["kd"] and named["ickd/default"] in by_panel["ickd"]
    assert set(by_panel["ce"]) == set(named.values())  # both runs in the shared panel, in their colours
    grid = plots.family_curves(records * 2)
    assert [ax.get_title() for ax in grid.axes if ax.get_visible() and ax.has_data()] == ["ickd"]


def test_bench_table_has_a_row_per_measured_pair() -> None:
    """The benchmark table fits a page: one row per committed measurement, the fields a reader compares."""
    table = report.bench()
    committed = BENCH_CSV.read_text().strip().splitlines()
    assert len(table) == len(committed) - 1
    assert list(table.columns) == ["measured", "device", "pair", "our path", "reference ms", "ours ms",
                                   "bare ms", "speedup", "overhead vs bare %"]
    assert not table["our path"].str.contains("fused_sgd").any()


def test_the_landing_figure_is_captioned_from_its_records() -> None:
    """The v1 figure's caption counts what the records give (comparisons, paired seeds, intervals excluding
    zero) and its alt text names every configuration with its interval."""
    records = report.study_records()
    text = report.difference_text(records)
    [(_, group)] = [g for g in results.comparison_groups(records[records["status"] == "completed"])]
    diffs = results.paired_differences(group, baseline=("kd", "default"))
    clear = int(((diffs["lo"] > 0) | (diffs["hi"] < 0)).sum())
    counted = f"uncorrected for the {len(diffs)} comparisons. {clear} of the {len(diffs)} intervals"
    assert counted in text["caption"]
    assert text["alt"].count("[") == len(diffs) and "/" not in text["alt"].split(":", 1)[1]
    assert report.difference_text(results.load_records([])) == {"caption": "", "alt": ""}
