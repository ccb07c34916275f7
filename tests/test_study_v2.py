"""The book's view of the second proxy study, through the report path of every staged study
(kdlib.staged_report): its records stay out of version 1's tables, KD is compared at its chosen weight, and no
answer is written from part of the final runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdlib import comparison, report, staged_report, stats
from kdlib.paths import RESULTS_DIR

CONFIGURATIONS = ("ce", "kd", "ickd", "ccs", "cd", "cwt", "iekd", "pkt")
#: Each configuration's true gain over KD in the synthetic final stage (top-1 points).
GAIN = {"ce": -3.0, "kd": 0.0, "ickd": 2.0, "ccs": 0.0, "cd": 0.1, "cwt": -0.1, "iekd": 0.0, "pkt": 0.2}


def _final(seeds: range = range(10), kd_variant: str = "kd_weight=3.6") -> pd.DataFrame:
    """A final stage's records: every configuration on ``seeds``, KD at a weight other than its default,
    seed effects shared by all configurations (paired) and a small independent noise."""
    rng = np.random.default_rng(0)
    seed_effect = {s: rng.normal(0, 1.0) for s in seeds}
    rows = []
    for method in CONFIGURATIONS:
        variant = kd_variant if method == "kd" else "default"
        for seed in seeds:
            top1 = 80 + GAIN[method] + seed_effect[seed] + rng.normal(0, 0.2)
            rows.append({"method": method, "variant": variant, "seed": seed, "status": "completed",
                         "top1_last": top1, "val_top1_last": top1 + 0.5, "dataset": "fashion_mnist",
                         "student": "resnet8", "teacher": None if method == "ce" else "resnet32",
                         "recipe": "repdistiller", "epochs": 7, "subset": 5000})
    return pd.DataFrame(rows)


def test_v2_records_stay_out_of_version_1_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = next((RESULTS_DIR / "proxy").rglob("record.json"))
    for folder in ("proxy/a", "proxy_v2/final/b", "smoke/c"):
        (tmp_path / folder).mkdir(parents=True)
        shutil.copyfile(v1, tmp_path / folder / "record.json")
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    # the copies are one run (same config_id and seed): the first in sorted order is the one read
    assert [Path(p).parent.name for p in report.study_records(tmp_path)["path"]] == ["a"]
    assert len(report.study_records(tmp_path / "proxy_v2")) == 1  # read when named


def test_kd_is_compared_at_its_chosen_weight() -> None:
    """On synthetic final records with KD at a weight other than its default, KD is the baseline at that
    weight: every other configuration is paired with it, and the verdicts follow Holm's p."""
    records = _final()
    assert comparison.baseline_variant(records, "kd") == "kd_weight=3.6"
    raw = comparison.holm_comparisons(records, "kd").set_index("method")
    assert len(raw) == 7 and set(raw["n"]) == {10}
    assert raw.loc["ickd", "verdict"] == "above" and raw.loc["ce", "verdict"] == "below"
    assert raw.loc["ccs", "verdict"] == "within the corrected noise"
    assert raw.loc["ickd", "p_holm"] >= raw.loc["ickd", "p"]


def test_the_v2_page_renders_its_records_through_the_staged_report() -> None:
    """study_v2's tables come from kdlib.staged_report (one report path for every staged study): KD minus
    nothing, each configuration paired on its 10 seeds, the numbers holm_comparisons gives, p as "< 0.001"."""
    table = staged_report.family_comparison("proxy_v2", "vs kd").set_index("configuration")
    final = staged_report.stage_records("proxy_v2", "final")
    raw = comparison.holm_comparisons(final, "kd").set_index("method")
    assert len(table) == 7 and set(table["paired seeds"]) == {10}
    cd = table.loc["CD (cd_weight 24)"]
    mean, lo, hi = raw.loc["cd", ["mean", "lo", "hi"]]
    assert cd["minus KD"] == report.mean_ci(mean, lo, hi, 10)
    assert cd["Holm p"] == stats.format_p(raw.loc["cd", "p_holm"]) == "< 0.001" and cd["verdict"] == "above"
    final = staged_report.final("proxy_v2").set_index("configuration")
    assert set(final["runs"]) == {10} and final.loc["KD (default weights)", "hardware"] == "AMD EPYC (10)"


def test_no_answer_from_part_of_the_final_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Version 2's final records with accuracies of known gains over KD (:data:`GAIN`): no answer while a
    seed is missing; then the answer is Holm's over the records, each configuration named as readers do."""
    real = staged_report.stage_records
    final = real("proxy_v2", "final")
    rng = np.random.default_rng(0)
    seed_effect = {s: rng.normal(0, 1.0) for s in final["seed"].unique()}
    final = final.assign(top1_last=[80 + GAIN[m] + seed_effect[s] + rng.normal(0, 0.2)
                                    for m, s in zip(final["method"], final["seed"], strict=True)])

    def use(records: pd.DataFrame) -> None:
        monkeypatch.setattr(staged_report, "stage_records",
                            lambda profile, stage: records if (profile, stage) == ("proxy_v2", "final")
                            else real(profile, stage))

    use(final[final["seed"] != 9])
    assert "all 42 tuning runs and 72 of the 80 final runs are recorded" in staged_report.answer("proxy_v2")
    use(final)
    text = staged_report.answer("proxy_v2")
    assert "1 of 7 configurations beats KD beyond the Holm-corrected noise" in text
    assert "cannot be told apart from KD" in text and "/" not in text.replace("×1/4", "")
    ickd = comparison.holm_comparisons(final, "kd").set_index("method").loc["ickd"]
    assert (f"ICKD (ickd_weight 10) {ickd['mean']:+.2f} [{ickd['lo']:+.2f}, {ickd['hi']:+.2f}] (Holm p "
            in text)
    assert "points here, with 80% power" in text  # the realised noise's detectable difference
    assert "6 of the 7 tuned weights sit at an end of the ×1/4, ×1, ×4 grid" in text


def test_the_cost_is_summed_from_the_records() -> None:
    cost = staged_report.cost("proxy_v2").set_index("stage")
    assert cost.loc["teacher", "runs"] == 1 and cost.loc["teacher", "hardware"] == "NVIDIA H200"
    assert float(cost.loc["teacher", "wall time, hours"]) > 0
    assert cost.loc["final", "runs"] == 80 and cost.loc["final", "hardware"] == "AMD EPYC"
