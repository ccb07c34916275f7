"""The tables that span the studies (:mod:`kdlib.report_studies`) count every record the book reads, by study
and stage, and name each study's teacher from the record that trained it."""

from __future__ import annotations

import json

from kdlib import report, report_studies, report_v2
from kdlib.paths import RESULTS_DIR
from kdlib.study.staged import load_staged, teacher_checkpoint


def test_provenance_counts_every_record_by_study_and_stage() -> None:
    table = report_studies.provenance().set_index("study")
    v1, tuning, final = (report.study_records(), report_v2.stage_records("tuning"),
                         report_v2.stage_records("final"))
    teacher = json.loads((teacher_checkpoint(load_staged("proxy_v2")).parent / "record.json").read_text())
    assert table.loc["version 1", "records"] == len(v1)
    assert table.loc["version 1", "records under"] == "data/results/proxy"
    assert table.loc["version 2, tuning", "records"] == len(tuning)
    assert table.loc["version 2, final", "records"] == len(final)
    assert table.loc["version 2, teacher", "records"] == 1
    hardware = teacher["hardware"]
    assert table.loc["version 2, teacher", "hardware"] == (hardware["gpu"] or hardware["cpu"])
    assert table["records"].sum() == len(v1) + len(tuning) + len(final) + 1
    assert table.loc["version 1", "diverged"] == (v1["status"] == "diverged").sum()


def test_runs_by_study_count_completed_runs_only() -> None:
    table = report_studies.runs().set_index("study")
    v1 = report.study_records(RESULTS_DIR / "proxy")
    assert table.loc["version 1", "runs"] == (v1["status"] == "completed").sum()
    assert table.loc["version 2, teacher", "device"] == "cuda"


def test_each_study_names_the_teacher_its_runs_evaluated() -> None:
    table = report_studies.teachers().set_index("study")
    final = report_v2.stage_records("final")
    distilled = final.dropna(subset=["teacher_ckpt_sha256"])
    assert table.loc["version 2", "SHA-256"] == distilled["teacher_ckpt_sha256"].iloc[0][:12]
    assert table.loc["version 2", "checkpoint"] == "data/teachers_v2/fashion_mnist/resnet32/model.pt"
    assert table.loc["version 2", "runs"] == len(distilled) + len(
        report_v2.stage_records("tuning").dropna(subset=["teacher_ckpt_sha256"]))
    assert "NVIDIA H200" in table.loc["version 2", "trained"]
    assert table.loc["version 2", "test top-1 (as the runs evaluated it)"] == report.number(
        distilled["teacher_top1"].mean())
