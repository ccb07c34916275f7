"""The tables that span the studies (:mod:`kdlib.report_studies`) count every record the book reads, by study
and stage, and name each study's teacher from the record that trained it."""

from __future__ import annotations

import json

from kdlib import report, report_studies, staged_report
from kdlib.paths import RESULTS_DIR
from kdlib.study.staged import load_staged, teacher_checkpoint


def test_provenance_counts_every_record_by_study_and_stage() -> None:
    table = report_studies.provenance().set_index("study")
    v1, tuning, final = (report.study_records(), staged_report.stage_records("proxy_v2", "tuning"),
                         staged_report.stage_records("proxy_v2", "final"))
    teacher = json.loads((teacher_checkpoint(load_staged("proxy_v2")).parent / "record.json").read_text())
    assert table.loc["version 1", "records"] == len(v1)
    assert table.loc["version 1", "records under"] == "data/results/proxy"
    assert table.loc["version 2, tuning", "records"] == len(tuning)
    assert table.loc["version 2, final", "records"] == len(final)
    assert table.loc["version 2, teachers", "records"] == 1
    hardware = teacher["hardware"]
    assert table.loc["version 2, teachers", "hardware"] == (hardware["gpu"] or hardware["cpu"])
    v3 = sum(len(staged_report.stage_records(p, stage)) + len(staged_report.teacher_records(load_staged(p)))
             * (stage == "final") for p in ("proxy_v3", "proxy_v3_resnet56") for stage in ("tuning", "final"))
    assert table["records"].sum() == len(v1) + len(tuning) + len(final) + 1 + v3
    assert table.loc["version 3, resnet32 → resnet8, teachers", "records"] == 2
    assert table.loc["version 1", "diverged"] == (v1["status"] == "diverged").sum()


def test_runs_by_study_count_completed_runs_only() -> None:
    table = report_studies.runs().set_index("study")
    v1 = report.study_records(RESULTS_DIR / "proxy")
    assert table.loc["version 1", "runs"] == (v1["status"] == "completed").sum()
    assert table.loc["version 2, teachers", "device"] == "cuda"


def test_each_study_names_the_teacher_its_runs_evaluated() -> None:
    table = report_studies.teachers().set_index("study")
    final = staged_report.stage_records("proxy_v2", "final")
    distilled = final.dropna(subset=["teacher_ckpt_sha256"])
    assert table.loc["version 2", "SHA-256"] == distilled["teacher_ckpt_sha256"].iloc[0][:12]
    assert table.loc["version 2", "checkpoint"] == "data/teachers_v2/fashion_mnist/resnet32/model.pt"
    assert table.loc["version 2", "runs"] == len(distilled) + len(
        staged_report.stage_records("proxy_v2", "tuning").dropna(subset=["teacher_ckpt_sha256"]))
    assert "NVIDIA H200" in table.loc["version 2", "trained"]
    assert table.loc["version 2", "test top-1 (as the runs evaluated it)"] == report.number(
        distilled["teacher_top1"].mean())
