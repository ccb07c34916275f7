"""Version 3's pages once its first pair is complete, before it is: its committed records, each missing final
run copied from a recorded run of its configuration at another seed with an accuracy of known gain over KD
(:data:`GAIN`), stand in for the final stage. The answer, the landing headline, the forest plot, the chapters'
verdicts and the claims table then speak of version 3, in its three families (KD, DKD, ce), from those
records; so the day the last run lands cannot break the book."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from kdlib import comparison, report_methods, report_studies, staged_forest, staged_report
from kdlib.methods import CHANNEL_METHODS
from kdlib.study import staged

V3 = "proxy_v3"
#: Each method's true gain over KD in the synthetic runs (top-1 points): above, within and below KD.
GAIN = {"ce": -3.0, "kd": 0.0, "dkd": 0.0, "ickd": -2.0, "ccs": 0.0, "cd": 3.0, "cwt": 2.0, "iekd": -2.0}


@pytest.fixture(scope="module")
def completed() -> pd.DataFrame:
    """Every planned final run of version 3's first pair: its record where committed, else a copy of one of
    its configuration's records at another seed; every accuracy drawn as 80 + GAIN + a seed effect + noise."""
    s = staged.load_staged(V3)
    tuned, tuning = staged_report.progress(V3)["tuning"]
    if not tuning or tuned < tuning:
        pytest.skip("version 3's tuning is not complete")
    records = staged_report.stage_records(V3, "final")
    rng = np.random.default_rng(0)
    effect: dict[int, float] = {}
    rows = []
    for run in staged.final_runs(s, staged.chosen_weights(s)):
        v = run.variant
        mine = records[(records["method"] == v.method) & (records["variant"] == v.variant)]
        if not len(mine):
            pytest.skip(f"no final record of {run.variant} yet")
        row = (mine[mine["seed"] == run.seed] if (mine["seed"] == run.seed).any() else mine).iloc[0].copy()
        effect.setdefault(run.seed, rng.normal(0, 1.0))
        row["seed"], row["status"] = run.seed, "completed"
        row["top1_last"] = 80 + GAIN[run.variant.method] + effect[run.seed] + rng.normal(0, 0.3)
        rows.append(row)
    return pd.DataFrame(rows).reset_index(drop=True)


@pytest.fixture
def v3_complete(completed: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> pd.DataFrame:
    real = staged_report.stage_records
    monkeypatch.setattr(staged_report, "stage_records",
                        lambda profile, stage: completed if (profile, stage) == (V3, "final")
                        else real(profile, stage))
    return completed


def _holm(records: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Holm's comparisons of the methods' own configurations with ``baseline`` (the family the protocol
    names), recomputed from the records."""
    spec = next(f for f in staged_report.families(V3).values() if f["baseline"] == baseline)
    names = staged_report.names(V3)
    members = records[[names.get((m, v)) in (baseline, *spec["configurations"])
                       for m, v in zip(records["method"], records["variant"], strict=True)]]
    return comparison.holm_comparisons(members, baseline, staged.load_staged(V3).final["alpha"])


def test_the_answer_and_the_landing_page_speak_of_version_3(v3_complete: pd.DataFrame) -> None:
    assert staged_report.complete(V3) and staged_report.newest_complete() == V3
    answer = staged_report.answer(V3)
    for baseline in ("KD", "DKD", "ce"):
        assert re.search(rf"configurations? beats? {baseline} beyond the Holm-corrected noise", answer)
    kd = _holm(v3_complete, "kd").set_index("method")
    cd = kd.loc["cd"]
    assert f"CD (cd_weight 24) {cd['mean']:+.2f} [{cd['lo']:+.2f}, {cd['hi']:+.2f}]" in answer
    names = staged_report.names(V3)
    keys = zip(v3_complete["method"], v3_complete["variant"], strict=True)
    done = v3_complete.assign(configuration=[names[key] for key in keys])
    by_seed = done.pivot_table(index="seed", columns="configuration", values="top1_last")
    d = (by_seed["cd"] - by_seed["cd without GKD"]).dropna()
    assert len(d) == 20 and f"CD minus CD without GKD {d.mean():+.2f} [" in answer  # the ablations, in words
    assert answer.index("The ablations") < answer.index("What this cannot say")
    headline = report_studies.landing()
    lead = "*Version 3, first pair (resnet32 → resnet8):*\n\n"
    assert headline.startswith(lead) and "beat KD at this scale" in headline and "beat DKD" in headline
    above = kd[(kd["verdict"] == "above") & kd.index.isin(CHANNEL_METHODS)]
    assert headline.startswith(f"{lead}**{len(above)} of the 5 channel methods beat KD")
    assert "two teachers (resnet32)" in headline and "one pair (resnet32 → resnet8)" in headline
    # then the second pair's answer, or where it stands
    assert "\n\n*Version 3, second pair (resnet56 → resnet20):*\n\n" in headline


def test_the_forest_plot_has_a_panel_per_family(v3_complete: pd.DataFrame) -> None:
    (figure,) = staged_forest.forest(V3)
    assert [ax.get_title() for ax in figure.axes if ax.get_title()] == ["minus KD", "minus DKD", "minus ce"]
    text = staged_forest.forest_text(V3)
    assert "mean over 15–20 paired seeds with its 95% Student-t interval" in text["caption"]
    assert text["caption"].startswith("Version 3's final comparison on resnet32 → resnet8: each "
                                      "configuration at its tuned weight minus KD (left), minus DKD (middle) "
                                      "and minus ce")


@pytest.mark.parametrize("method", CHANNEL_METHODS)
def test_each_chapter_states_version_3s_verdict(v3_complete: pd.DataFrame, method: str) -> None:
    words = {"above": "above", "below": "below", "within the corrected noise": "within the noise of"}
    text = report_methods.verdict(method, "newest")
    assert text.startswith(f"Version 3 tuned {staged_report.display_name(method)}'s weight")
    for baseline in ("kd", "dkd", "ce"):
        table = _holm(v3_complete, baseline).set_index("method")
        verdict = f"{words[table.loc[method, 'verdict']]} {staged_report.short(baseline)}"
        assert f"**{verdict}**" in text
    rows = report_methods.final_rows("newest", [method])
    assert rows["minus"].tolist() == ["KD", "DKD", "ce"]


def test_the_claims_table_fills_in_version_3(v3_complete: pd.DataFrame) -> None:
    kd = _holm(v3_complete, "kd").set_index("method")
    cells = report_studies.claims_table().set_index("method")[report_studies.V3_COLUMN]
    for method in CHANNEL_METHODS:
        r = kd.loc[method]
        assert cells[staged_report.display_name(method)].startswith(
            f"{r['mean']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}], ")
