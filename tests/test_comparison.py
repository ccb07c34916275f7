"""The second proxy protocol in code (kdlib.comparison): weights chosen on validation, Holm-corrected paired
comparisons and the answer in words, on synthetic records; the power statement on the committed v1 records."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from kdlib import comparison, report, report_studies


def _record(method: str, variant: str, seed: int, top1: float | None, val: float | None = None,
            status: str = "completed") -> dict:
    return {"method": method, "variant": variant, "seed": seed, "status": status, "top1_last": top1,
            "top1_best": top1, "val_top1_last": val, "dataset": "fashion_mnist", "student": "resnet8",
            "teacher": None if method == "ce" else "resnet32", "recipe": "repdistiller", "epochs": 8,
            "subset": 10000}


def test_candidates_scale_the_main_weight_and_label_as_the_records_do() -> None:
    ccs = comparison.candidates("ccs")
    assert [c["multiplier"] for c in ccs] == [0.25, 1.0, 4.0]
    assert ccs[0]["overrides"] == {"intra_weight": 2.5, "inter_weight": 2.5}
    assert ccs[1]["variant"] == "default"
    assert ccs[2]["variant"] == "inter_weight=40.0,intra_weight=40.0"
    assert comparison.candidates("cwt")[0]["overrides"] == {"cwt_weight": pytest.approx(0.00125)}


def test_weights_are_chosen_on_validation_with_divergence_missing_runs_and_ties_explicit() -> None:
    low, default, high = (c["variant"] for c in comparison.candidates("ickd"))
    rows = [
        # ickd: x4 best on validation (the test set would pick x1: it is never read)
        _record("ickd", low, 100, 99.0, 80.0), _record("ickd", low, 101, 99.0, 80.2),
        _record("ickd", default, 100, 99.9, 81.0), _record("ickd", default, 101, 99.9, 81.0),
        _record("ickd", high, 100, 10.0, 82.0), _record("ickd", high, 101, 10.0, 82.4),
    ]
    cd_low, cd_default, cd_high = (c["variant"] for c in comparison.candidates("cd"))
    rows += [  # cd: x4 diverged on one seed; x1/4 and x1 tie: the default wins the tie
        _record("cd", cd_low, 100, 80, 81.0), _record("cd", cd_low, 101, 80, 81.0),
        _record("cd", cd_default, 100, 80, 80.5), _record("cd", cd_default, 101, 80, 81.5),
        _record("cd", cd_high, 100, 90, 95.0), _record("cd", cd_high, 101, None, None, "diverged"),
    ]
    cwt_low, _, cwt_high = (c["variant"] for c in comparison.candidates("cwt"))
    rows += [  # cwt: x1 missing a seed; x1/4 and x4 tie: the smaller weight wins
        _record("cwt", cwt_low, 100, 80, 81.0), _record("cwt", cwt_low, 101, 80, 81.0),
        _record("cwt", "default", 100, 80, 90.0),
        _record("cwt", cwt_high, 100, 80, 81.0), _record("cwt", cwt_high, 101, 80, 81.0),
    ]
    iekd = [_record("iekd", c["variant"], s, None, None, "diverged")
            for c in comparison.candidates("iekd") for s in (100, 101)]
    chosen = comparison.select_weights(pd.DataFrame(rows + iekd), ["ickd", "cd", "cwt", "iekd"], [100, 101])
    chosen = chosen.set_index("method")
    assert chosen.loc["ickd", "multiplier"] == 4.0 and chosen.loc["ickd", "val_top1"] == pytest.approx(82.2)
    assert chosen.loc["cd", "chosen"] == "default" and "×4: diverged on seed 101" in chosen.loc["cd", "note"]
    assert chosen.loc["cwt", "multiplier"] == 0.25 and "×1: no run for seed 101" in chosen.loc["cwt", "note"]
    assert pd.isna(chosen.loc["iekd", "chosen"]) and math.isnan(chosen.loc["iekd", "val_top1"])


def test_fixed_options_join_every_candidate_and_dkd_tunes_beta() -> None:
    """DKD's main weight is β (``nckd_weight``); options every run takes (its warm-up) label every candidate,
    the default included, so records of the fixed options are told from the plain defaults."""
    low, default, high = comparison.candidates("dkd", fixed={"warmup": 1})
    assert low["overrides"] == {"nckd_weight": 2.0, "warmup": 1} and default["overrides"] == {"warmup": 1}
    assert (low["variant"], default["variant"], high["variant"]) == (
        "nckd_weight=2.0,warmup=1", "warmup=1", "nckd_weight=32.0,warmup=1")


def _val_curve(method: str, best: float, multipliers: list[float], seeds: tuple[int, ...] = (100, 101, 102),
               fixed: dict | None = None) -> list[dict]:
    """Tuning records whose validation top-1 peaks at multiplier ``best`` (80 minus its distance in ×4
    steps)."""
    return [_record(method, c["variant"], s, 0.0, 80 - abs(math.log(c["multiplier"] / best, 4)))
            for c in comparison.candidates(method, multipliers, fixed) for s in seeds]


@pytest.mark.parametrize(("best", "grid", "state"), [
    (1.0, [0.25, 1, 4], comparison.INTERIOR),            # already interior: nothing added
    (16.0, [0.25, 1, 4, 16, 64], comparison.INTERIOR),   # grown twice upwards, peak found inside
    (64.0, [0.25, 1, 4, 16, 64], comparison.AT_LIMIT),   # grown to the limit ×64
    (1 / 16, [1 / 16, 0.25, 1, 4], comparison.AT_LIMIT),  # the limit 1/16 reached downwards
])
def test_the_bracketing_rule_grows_a_grid_until_its_choice_is_interior_or_at_the_limit(
        best: float, grid: list[float], state: str) -> None:
    limit = 16.0 if best < 1 else 64.0
    records = pd.DataFrame(_val_curve("cd", best, [4.0 ** k for k in range(-3, 4)]))
    assert comparison.bracket(records, "cd", [100, 101, 102], [0.25, 1, 4], 4, limit) == (grid, state)


def test_the_bracketing_rule_waits_for_every_seed_and_never_reads_the_test_set() -> None:
    records = pd.DataFrame(_val_curve("kd", 4.0, [0.25, 1, 4]))
    assert comparison.bracket(records, "kd", [100, 101, 102], [0.25, 1, 4], 4, 64) == (
        [0.25, 1, 4, 16], comparison.WAITING)  # ×4 chosen: ×16 is next, and has no run yet
    partial = pd.DataFrame(_val_curve("kd", 4.0, [16], seeds=(100,)))
    grown = pd.concat([records, partial])
    assert comparison.bracket(grown, "kd", [100, 101, 102], [0.25, 1, 4], 4, 64)[1] == comparison.WAITING
    scrambled = records.assign(top1_last=range(len(records)), top1_best=range(len(records)))
    assert comparison.bracket(scrambled, "kd", [100, 101, 102], [0.25, 1, 4], 4, 64) == (
        [0.25, 1, 4, 16], comparison.WAITING)
    # without a factor the grid is fixed: an end is its limit
    assert comparison.bracket(records, "kd", [100, 101, 102], [0.25, 1, 4]) == ([0.25, 1, 4],
                                                                                 comparison.AT_LIMIT)
    diverged = pd.DataFrame([_record("kd", c["variant"], s, None, None, "diverged")
                             for c in comparison.candidates("kd") for s in (100, 101, 102)])
    assert comparison.bracket(diverged, "kd", [100, 101, 102], [0.25, 1, 4], 4, 64)[1] == (
        comparison.ALL_DIVERGED)


def _study(effects: dict[str, float], seeds: int = 10) -> pd.DataFrame:
    """Paired records: each method's top-1 = 80 + its effect + a seed effect shared by all + small noise."""
    rows = []
    for s in range(seeds):
        shared = [0.9, -0.4, 0.3, -1.1, 0.5, 0.0, -0.2, 0.8, -0.6, 0.1][s % 10]
        for k, (method, effect) in enumerate(effects.items()):
            noise = ((s * 7 + k * 3) % 5 - 2) * 0.1
            rows.append(_record(method, "default", s, 80 + effect + shared + noise))
    return pd.DataFrame(rows)


def test_holm_comparisons_and_the_answer_in_words() -> None:
    records = _study({"ce": -2.0, "kd": 0.0, "ickd": 1.5, "cd": 0.05, "ccs": -1.0})
    kd = comparison.holm_comparisons(records, "kd").set_index("method")
    assert kd.loc["ickd", "verdict"] == "above" and kd.loc["ce", "verdict"] == "below"
    assert kd.loc["cd", "verdict"] == "within the corrected noise"
    assert (kd["p_holm"] >= kd["p"]).all() and kd.loc["ickd", "n"] == 10
    records = pd.concat([records, pd.DataFrame([_record("cwt", "default", 0, None, None, "diverged")])])
    text = comparison.answer(records, detectable=1.56)
    assert text.startswith("**1 of 4 configurations beats KD beyond the Holm-corrected noise** (10 paired")
    assert "ickd/default (+1.50, Holm p < 0.001)" in text and "2 fall below KD: ccs/default" in text
    assert "1 cannot be told apart from KD: cd/default (+0.05)" in text
    assert "**4 of 4 configurations beat ce" in text
    assert "Diverged runs (no accuracy, left out of the comparisons): cwt/default." in text
    assert "about 1.56 points here, with 80% power" in text
    quiet = comparison.answer(_study({"kd": 0.0, "cd": 0.0}, seeds=3), baselines=("kd",))
    assert quiet.startswith("**No configuration beats KD beyond the Holm-corrected noise** (3 paired seeds")


def test_power_statement_from_the_committed_v1_records() -> None:
    """The first study's noise (pooled paired SD 1.11 points over 17 comparisons of 3 seeds) sets the second
    study's power: with 10 seeds and 7 comparisons with KD, about 1.56 points."""
    v1 = report.study_records()
    v1 = v1[v1["epochs"] == 5]
    sd, df = comparison.pooled_paired_sd(v1)
    assert sd == pytest.approx(1.1108, abs=1e-3) and df == 34
    power = comparison.power_statement(v1, seeds=10, comparisons=7)
    assert power["detectable"] == pytest.approx(1.5608, abs=1e-3)
    assert power["detectable_uncorrected"] < power["detectable"]


def test_the_v2_profile_fixes_the_power_table_and_is_not_run_by_the_notebooks(
        capsys: pytest.CaptureFixture[str]) -> None:
    from kdlib import study

    table = report_studies.power_table()
    assert table["paired seeds"].tolist() == [3, 10] and set(table["comparisons with KD"]) == {7}
    assert table["detectable with 80% power, Holm"].tolist() == ["9.62", "1.56"]
    profile = study.PROFILES_DIR / "proxy_v2.json"
    final = json.loads(profile.read_text())["stages"]["final"]
    assert len(final["configurations"]) <= 10 and len(final["seeds"]) >= 10
    assert study.main(["estimate", "--profile", "proxy_v2"]) == 2
    assert "staged protocol" in capsys.readouterr().err
