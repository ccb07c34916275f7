"""Records in, tables out, on hand-made records (kdlib.results)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kdlib import results
from kdlib.losses.functional import edt_weights
from kdlib.methods import available_methods, make_config, variant_string


def make_record(
    method: str = "ickd",
    variant: str = "default",
    teacher: str | None = "resnet32x4",
    student: str = "resnet8x4",
    seed: int = 0,
    top1_last: float = 75.0,
    top1_best: float | None = None,
    top5_last: float = 93.0,
    status: str = "completed",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "status": status,
        "config_id": f"{method}-{variant}-{teacher}-{student}",
        "method": method,
        "variant": variant,
        "teacher": teacher,
        "student": student,
        "dataset": "cifar100",
        "subset": None,
        "recipe_name": "repdistiller",
        "recipe": {"name": "repdistiller", "epochs": 240},
        "seed": seed,
        "epochs": 240,
        "teacher_top1": 79.0 if teacher else None,
        "top1_last": top1_last,
        "top1_best": top1_best if top1_best is not None else top1_last + 1,
        "top5_last": top5_last,
        "best_epoch": 200,
        "hardware": {"cpu": "test", "gpu": None},
        **extra,
    }


def write_records(folder: Path, records: list[dict[str, Any]]) -> None:
    for i, record in enumerate(records):
        path = folder / f"run{i}" / "record.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(record))


@pytest.fixture
def three_seeds(tmp_path: Path) -> Path:
    write_records(
        tmp_path,
        [make_record(seed=s, top1_last=v) for s, v in enumerate([74.0, 75.0, 76.0])]
        + [
            make_record(seed=3, top1_last=10.0, status="running"),
            make_record(seed=4, top1_last=11.0, status="failed", failure_reason="non-finite loss"),
            {"method": "ickd", "top1_last": 99.0},  # no status: never complete
        ],
    )
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "record.json").write_text("{not json")
    return tmp_path


def test_load_records_keeps_only_complete_runs(three_seeds: Path) -> None:
    df = results.load_records(three_seeds)
    assert len(df) == 3 and set(df["status"]) == {"completed"}
    assert sorted(df["top1_last"]) == [74.0, 75.0, 76.0]
    assert set(df["recipe"]) == {"repdistiller"} and df["path"].str.endswith("record.json").all()
    everything = results.load_records(three_seeds, statuses=None)
    assert len(everything) == 5  # the broken file and the record without status or config_id are skipped
    one = results.load_records([three_seeds / "run0" / "record.json"])
    assert len(one) == 1
    with pytest.raises(FileNotFoundError):
        results.load_records(three_seeds / "absent")


def test_a_pretrained_student_is_its_own_variant(tmp_path: Path) -> None:
    runs = {"scratch": make_record(student_weights=None),
            "tv": make_record(student_weights="torchvision:ResNet18_Weights.IMAGENET1K_V1",
                              config_id="another: student weights enter config_id"),
            "file": make_record(variant="kd_weight=1.0", student_weights="/some/where/init.pt")}
    for name, record in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "record.json").write_text(json.dumps(record))
    df = results.load_records(tmp_path).sort_values("path")
    assert list(df["variant"]) == ["kd_weight=1.0,student_weights=init.pt", "default",
                                   "student_weights=torchvision"]
    assert len(results.summarize(df)) == 3  # never averaged together
    pretrained = results.run_variant("variant=imagenet", "torchvision")
    assert pretrained == "variant=imagenet,student_weights=torchvision"


def test_summarize_three_seeds(three_seeds: Path) -> None:
    summary = results.summarize(results.load_records(three_seeds))
    assert len(summary) == 1
    row = summary.iloc[0]
    assert row["n"] == 3 and row["seeds"] == [0, 1, 2]
    assert row["top1_last_mean"] == pytest.approx(75.0) and row["top1_last_std"] == pytest.approx(1.0)
    half = 4.302652729749462 / math.sqrt(3)  # t(0.975, 2 df) * s / sqrt(n), s = 1
    assert (row["top1_last_lo"], row["top1_last_hi"]) == pytest.approx((75.0 - half, 75.0 + half))
    assert row["top1_best_mean"] == pytest.approx(76.0)
    assert row["teacher_top1_mean"] == pytest.approx(79.0)


def test_mean_interval() -> None:
    assert all(math.isnan(v) for v in results.mean_interval([70.0]))  # no spread from one run
    assert all(math.isnan(v) for v in results.mean_interval([]))
    assert results.mean_interval([1.0, 2.0, 3.0, math.nan]) == pytest.approx((2 - 2.4841377, 2 + 2.4841377))
    lo, hi = results.mean_interval([1.0, 2.0, 3.0], confidence=0.9)  # t(0.95, 2) = 2.919986
    assert (lo, hi) == pytest.approx((2 - 2.919986 / math.sqrt(3), 2 + 2.919986 / math.sqrt(3)))
    # coverage: about 95% of intervals from 3 normal draws hold the mean
    draws = np.random.default_rng(0).normal(10.0, 2.0, size=(4000, 3))
    covered = np.mean([lo <= 10.0 <= hi for lo, hi in map(results.mean_interval, draws)])
    assert 0.94 < covered < 0.96


def test_invalid_and_duplicate_records_are_named_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue #23: n is always the number of runs averaged; a copy counts once; nothing crashes."""
    good = [make_record(seed=s, top1_last=v) for s, v in enumerate([74.0, 76.0])]
    invalid = {
        "no top1_last": {k: v for k, v in make_record(seed=2).items() if k != "top1_last"},
        "null top1_last": make_record(seed=3, top1_last=None, top1_best=1.0),
        "nan top1_last": make_record(seed=4, top1_last=math.nan),
        "no variant": {k: v for k, v in make_record(seed=5).items() if k != "variant"},
        "no seed": {k: v for k, v in make_record().items() if k != "seed"},
        "hardware a list": make_record(seed=6, hardware=["x"]),
    }
    write_records(tmp_path, [*good, good[1], *invalid.values()])  # run2 is a copy of run1
    with caplog.at_level("WARNING", logger="kdlib.results"):
        df = results.load_records(tmp_path)
    assert sorted(df["seed"]) == [0, 1] and sorted(df["top1_last"]) == [74.0, 76.0]
    copy, first = (tmp_path / name / "record.json" for name in ("run2", "run1"))
    assert f"{copy}: a copy of {first}" in caplog.text
    for i in range(len(invalid)):
        assert f"skipping invalid record {tmp_path / f'run{i + 3}' / 'record.json'}: " in caplog.text
    (row,) = results.summarize(df).to_dict("records")
    assert row["n"] == 2 and row["seeds"] == [0, 1] and row["top1_last_mean"] == 75.0
    frame = pd.DataFrame([*good, make_record(seed=2, top1_last=math.nan)])  # built by hand, not loaded
    frame["recipe"] = frame["recipe_name"]
    assert results.summarize(frame)["n"].tolist() == [2]  # the count the mean is over


def test_summarize_groups_by_configuration() -> None:
    df = pd.DataFrame(
        [
            make_record(seed=0, top1_last=70.0),
            make_record(method="kd", seed=0, top1_last=72.0),
            make_record(method="ce", teacher=None, seed=0, top1_last=69.0),
        ]
    )
    df["recipe"] = df["recipe_name"]
    summary = results.summarize(df)
    assert sorted(summary["method"]) == ["ce", "ickd", "kd"]
    assert pd.isna(summary.loc[summary["method"] == "ce", "teacher"].iloc[0])
    assert np.isnan(summary["top1_last_std"]).all()  # n = 1


def _summary(records: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(records)
    df["recipe"] = df["recipe_name"]
    return results.summarize(df)


def test_compare_joins_the_reported_numbers() -> None:
    summary = _summary(
        [
            *(make_record(seed=s, top1_last=v) for s, v in enumerate([74.1, 74.3, 74.5])),  # ICKD w/o KL
            make_record(variant="kd_weight=1.0", top1_last=75.0),  # ICKD with KL
            make_record(method="ce", teacher=None, student="resnet8x4", top1_last=72.0),  # vanilla student
            make_record(method="ce", teacher=None, student="resnet32x4", top1_last=79.1),  # the teacher
        ]
    )
    table = results.compare(summary)
    pair = table[
        (table["paper"] == "ICKD")
        & (table["dataset"] == "CIFAR-100")
        & (table["teacher_id"] == "resnet32x4")
        & (table["student_id"] == "resnet8x4")
    ]
    wo_kl = pair[pair["method"] == "ICKD-C(w/o KL)"].iloc[0]
    assert wo_kl["reported_acc"] == 75.25 and (wo_kl["method_id"], wo_kl["variant"]) == ("ickd", "default")
    assert wo_kl["status"] == "measured" and wo_kl["n"] == 3
    assert wo_kl["measured_last"] == pytest.approx(74.3)
    assert wo_kl["diff_last"] == pytest.approx(74.3 - 75.25)
    assert pair[pair["method"] == "ICKD-C(Ours)"].iloc[0]["measured_last"] == pytest.approx(75.0)
    assert pair[pair["method"] == "Vanilla"].iloc[0]["measured_last"] == pytest.approx(72.0)
    teacher = pair[pair["method"] == "Teacher"].iloc[0]
    assert (teacher["reported_acc"], teacher["measured_last"]) == (79.42, pytest.approx(79.1))
    kd = pair[pair["method"] == "KD"].iloc[0]
    assert kd["status"] == "not yet measured" and pd.isna(kd["measured_last"])
    # every reported row stays, in order, with a status
    reported = pd.read_csv(results.REPORTED_CSV)
    assert len(table) == len(reported) and list(table["value"].astype(str)) == list(
        reported["value"].astype(str)
    )
    assert set(table["status"]) == {"measured", "not yet measured", "not reproduced (out of scope)"}
    assert (
        table.loc[table["dataset"].str.contains("VOC|COCO|Cityscapes"), "status"]
        == "not reproduced (out of scope)"
    ).all()
    cc = table[table["method"] == "CC"]
    assert cc["method_id"].isna().all() and (cc["status"] == "not yet measured").all()


def test_compare_converts_error_rates() -> None:
    table = results.compare(_summary([make_record()]))
    row = table[
        (table["paper"] == "CD")
        & (table["dataset"] == "CIFAR-100")
        & (table["method"] == "KD")
        & (table["metric"] == "top1_err")
    ].iloc[0]
    assert row["reported_acc"] == pytest.approx(100 - 20.36)
    assert results.parse_reported_value("70.04*") == 70.04
    assert results.parse_reported_value("74.3 (final epoch)") == 74.3
    assert math.isnan(results.parse_reported_value("0.00 (RepDistiller lists N/A)"))


def test_method_map_covers_the_reported_labels() -> None:
    mapping = results.load_method_map()
    reported = pd.read_csv(results.REPORTED_CSV)
    labels = {entry["label"] for entry in mapping["methods"]}
    assert set(reported["method"]) <= labels
    assert set(reported["dataset"]) <= set(mapping["datasets"]) | set(mapping["out_of_scope_datasets"])
    methods = set(available_methods())
    for entry in mapping["methods"]:
        if entry.get("method") is None:
            assert entry.get("note"), entry
            continue
        assert entry["method"] in methods, entry
        variant = entry.get("variant", "default")
        options = {} if variant == "default" else dict(kv.split("=") for kv in variant.split(","))
        student_weights = options.pop("student_weights", None)
        method_variant = variant_string(make_config(entry["method"], options))
        assert results.run_variant(method_variant, student_weights) == variant, entry


def test_paired_differences() -> None:
    records = [make_record(method="kd", seed=s, top1_last=v) for s, v in enumerate([73.0, 73.5, 74.0])]
    records += [make_record(seed=s, top1_last=v) for s, v in enumerate([74.0, 75.0, 75.0])]
    records += [make_record(method="ce", teacher=None, seed=s, top1_last=72.0) for s in range(3)]
    df = pd.DataFrame(records)
    df["recipe"] = df["recipe_name"]
    diffs = results.paired_differences(df)
    ickd = diffs[diffs["method"] == "ickd"].iloc[0]
    assert ickd["n"] == 3 and ickd["mean"] == pytest.approx((1.0 + 1.5 + 1.0) / 3)
    assert (ickd["lo"], ickd["hi"]) == pytest.approx(results.mean_interval([1.0, 1.5, 1.0]))
    assert (ickd["lo"], ickd["hi"]) == pytest.approx((0.449558, 1.883775))  # t interval of the differences
    vs_ce = results.paired_differences(df, baseline=("ce", "default"))
    assert vs_ce.set_index("method").loc["kd", "mean"] == pytest.approx(1.5)


def test_mapped_rows_carry_conversion_qualifier_and_caveat() -> None:
    table = results.compare(_summary([make_record()]))
    assert {"converted", "qualifier", "caveat", "note"} <= set(table.columns)
    cd = table[(table["paper"] == "CD") & (table["dataset"] == "CIFAR-100") & (table["method"] == "CD(our)")
               & (table["metric"] == "top1_err")].iloc[0]
    assert cd["reported_acc"] == pytest.approx(79.92) and cd["converted"]
    assert "100 − the published top-1 error 20.08" in cd["caveat"]
    final = table[table["value"].astype(str) == "74.3 (final epoch)"].iloc[0]
    assert final["qualifier"] == "(final epoch)" and "(final epoch)" in final["caveat"]
    assert not final["converted"]
    kd = table[(table["paper"] == "CD") & (table["method"] == "KD")].iloc[0]
    assert "KD weights are not documented" in kd["caveat"]  # the mapping's note reaches the row


def test_cd_gkd_on_imagenet_decays_the_cd_weight_and_ie_augmented_is_uncertain() -> None:
    reported = pd.read_csv(results.REPORTED_CSV, dtype=str, keep_default_na=False, na_values=[""])
    mapped = results.map_reported(reported, results.load_method_map())
    cd_gkd = mapped[(mapped["paper"] == "CD") & (mapped["dataset"] == "ImageNet")
                    & (mapped["method"] == "CD+GKD(our)")].iloc[0]
    assert cd_gkd["variant"] == "edt=paper,edt_dataset=imagenet,gkd_weight=1.0"
    config = make_config("cd", {"edt": "paper", "edt_dataset": "imagenet", "gkd_weight": 1.0})
    for epoch, cd_weight in ((1, 6.0), (30, 6 * 0.9), (95, 6 * 0.9**3)):  # 6·0.9^⌊e/30⌋, CE and GKD always on
        w = edt_weights(epoch, config.edt_dataset, config.edt, epochs=100)
        assert w == {"ce": 1.0, "gkd": 1.0, "cd": pytest.approx(cd_weight)}
    ie = mapped[mapped["method"] == "IE-KD (IE-augmented method)"].iloc[0]
    assert ie["variant"] == "exp_weight=50.0,inh_weight=50.0" and "uncertain" in ie["note"]
