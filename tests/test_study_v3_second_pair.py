"""Version 3's second pair (resnet56 → resnet20) the day its last run lands: its committed records, copied to
a temporary results folder, with every run the protocol still plans written as a record of known accuracy (a
tuning run below the best weight measured so far, so the bracketing rule stops; a final run at a known gain
over KD, :data:`GAIN`). The protocol's own planning decides which runs those are, and every page of the book
that names the pair (the landing answer, the claims table, the CD and CWT chapters, study_v3's tables and
figure) is then written from them, so the switch from "under way" to an answer cannot break the book. Once the
pair is complete, nothing is written and these tests read its real records."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdlib import comparison, report_methods, report_studies, staged_forest, staged_report
from kdlib.files import file_sha256
from kdlib.methods import make_config
from kdlib.study import staged
from kdlib.study.grid import RECORD

P2 = "proxy_v3_resnet56"
#: Each configuration's true gain over KD in the written final runs (top-1 points): above, within and below.
GAIN = {"ce": -3.0, "kd": 0.0, "dkd": 0.0, "cd": 3.0, "cwt": -1.5}


def _write(s: staged.Staged, run, template: dict, **results: float) -> None:
    teacher = run.config.teacher_ckpt
    record = {**template, "status": "completed", "config_id": run.config_id, "method": run.variant.method,
              "variant": run.variant.variant,
              "method_config": dataclasses.asdict(make_config(run.variant.method, run.variant.overrides)),
              "seed": run.seed, "subset_seed": run.config.subset_seed,
              "teacher": run.config.teacher, "teacher_ckpt": str(teacher) if teacher else None,
              "teacher_ckpt_sha256": file_sha256(teacher) if teacher else None, **results}
    path = s.results_dir / run.key / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


@pytest.fixture(scope="module")
def second_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Profiles as committed, but the second pair's results in a temporary copy, completed as the module's
    docstring says."""
    root = tmp_path_factory.mktemp("second_pair")
    real = staged.load_staged(P2)
    if not staged._teachers_ready(real):
        pytest.skip("the second pair's teachers are not committed")
    shutil.copytree(staged.PROFILES_DIR, root / "profiles")
    profile = json.loads((root / "profiles" / f"{P2}.json").read_text())
    profile["stages"]["common"]["results_dir"] = str(root / "results")
    (root / "profiles" / f"{P2}.json").write_text(json.dumps(profile))
    if real.results_dir.is_dir():
        shutil.copytree(real.results_dir, root / "results")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(staged, "PROFILES_DIR", root / "profiles")
        _complete(staged.load_staged(P2))
    return root


def _complete(s: staged.Staged) -> None:
    """Write a record for every run the protocol plans and ``s.results_dir`` lacks."""
    templates = sorted(s.results_dir.rglob(RECORD))
    if not templates:
        pytest.skip("no record of the second pair yet")
    template = json.loads(templates[0].read_text())  # the fields every record has, then overwritten
    rng = np.random.default_rng(0)
    for _ in range(20):  # a round writes what the rule plans so far; it extends a grid at most 3 times
        records = staged._tuning_records(s)
        runs = {r.key: r for r in staged.tuning_runs(s, records)}
        missing = staged._missing(s, list(runs.values()))
        if not missing:
            break
        best = staged.chosen_weights(s, records).set_index("method")["val_top1"]
        for key in missing:
            method = runs[key].variant.method
            top = best.get(method, math.nan)
            val = (80.0 if math.isnan(top) else top) - 2.0 - abs(rng.normal(0, 0.2))
            _write(s, runs[key], template, val_top1_last=val, top1_last=val)
    else:
        pytest.fail("the bracketing rule did not stop")
    effect: dict[int, float] = {}
    final = staged.final_runs(s, staged.chosen_weights(s))
    by_key = {r.key: r for r in final}
    for key in staged._missing(s, final):
        run = by_key[key]
        effect.setdefault(run.seed, rng.normal(0, 1.0))
        top1 = 85.0 + GAIN[run.variant.method] + effect[run.seed] + rng.normal(0, 0.3)
        _write(s, run, template, top1_last=top1, top1_best=top1, val_top1_last=top1 + 0.5)


@pytest.fixture
def complete(second_pair: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(staged, "PROFILES_DIR", second_pair / "profiles")
    return second_pair


def _holm(baseline: str) -> pd.DataFrame:
    """Holm's comparisons of the family against ``baseline``, recomputed from the final records."""
    spec = next(f for f in staged_report.families(P2).values() if f["baseline"] == baseline)
    names = staged_report.names(P2)
    records = staged_report.stage_records(P2, "final")
    members = records[[names.get((m, v)) in (baseline, *spec["configurations"])
                       for m, v in zip(records["method"], records["variant"], strict=True)]]
    return comparison.holm_comparisons(members, baseline, staged.load_staged(P2).final["alpha"])


def test_every_planned_run_has_its_record_and_each_weight_is_interior_or_at_its_limit(complete: Path) -> None:
    assert staged_report.complete(P2)
    stand = staged_report.progress(P2)
    (tuned, tuning), (done, planned) = stand["tuning"], stand["final"]
    assert tuned == tuning >= 36 and done == planned == 60  # 6 configurations × 10 seeds
    where = staged_report.tuning(P2).set_index("method")["where"]
    assert set(where) <= {comparison.INTERIOR, comparison.AT_LIMIT}, where
    rows = report_methods.tuning_rows(P2)
    assert list(rows["method"]) == ["KD", "DKD", "CD", "CWT"]
    assert not (rows["chosen"] == report_methods.WAITING).any()


def test_the_landing_page_answers_from_the_second_pair(complete: Path) -> None:
    landing = report_studies.landing()
    lead = "\n\n*Version 3, second pair (resnet56 → resnet20):*\n\n"
    assert lead in landing
    second = landing.split(lead)[1]
    kd = _holm("kd").set_index("method")
    above = [m for m in ("cd", "cwt") if kd.loc[m, "verdict"] == "above"]
    assert second.startswith(f"**{len(above)} of the 2 channel methods beat")
    cd = kd.loc["cd"]
    assert f"+{cd['mean']:.2f} [{cd['lo']:+.2f}, {cd['hi']:+.2f}]" in second
    assert "two teachers (resnet56)" in second and "one pair (resnet56 → resnet20)" in second
    assert "10 training subsets" in second


def test_the_answer_states_each_family_and_the_ablation(complete: Path) -> None:
    answer = staged_report.answer(P2)
    for baseline in ("KD", "DKD", "ce"):
        assert re.search(rf"configurations? beats? {baseline} beyond the Holm-corrected noise", answer)
    assert "10 paired seeds" in answer and "CD minus CD without GKD" in answer
    ablation = staged_report.ablations(P2)
    assert list(ablation["comparison"]) == ["CD minus CD without GKD"]
    assert list(ablation["paired seeds"]) == [10]


@pytest.mark.parametrize("method", ["cd", "cwt"])
def test_the_chapters_state_the_second_pairs_verdict(complete: Path, method: str) -> None:
    words = {"above": "above", "below": "below", "within the corrected noise": "within the noise of"}
    text = report_methods.verdict(method, P2)
    for baseline in ("kd", "dkd", "ce"):
        verdict = _holm(baseline).set_index("method").loc[method, "verdict"]
        assert f"**{words[verdict]} {staged_report.short(baseline)}**" in text, text
    rows = report_methods.final_rows(P2, [method])
    assert rows["minus"].tolist() == ["KD", "DKD", "ce"] and set(rows["paired seeds"]) == {10}


def test_the_claims_table_adds_the_second_pair_for_cd_and_cwt(complete: Path) -> None:
    cells = report_studies.claims_table().set_index("method")[report_studies.V3_COLUMN]
    kd = _holm("kd").set_index("method")
    for method in ("cd", "cwt"):
        second = cells[staged_report.display_name(method)].split(". resnet56 → resnet20: ")[1]
        r = kd.loc[method]
        assert second.startswith(f"{r['mean']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}], ")
    assert ". resnet56 → resnet20: " not in cells["ICKD"]


def test_the_noise_and_the_figure(complete: Path) -> None:
    noise = staged_report.noise(P2)
    assert list(noise["baseline"]) == ["kd"] and noise["SD of paired differences"].iloc[0].endswith("df)")
    (figure,) = staged_forest.forest(P2)
    assert [ax.get_title() for ax in figure.axes if ax.get_title()] == ["minus KD", "minus DKD", "minus ce"]
    caption = staged_forest.forest_text(P2)["caption"]
    assert caption.startswith("Version 3's final comparison on resnet56 → resnet20: ")
    assert "mean over 10 paired seeds" in caption
    cost = staged_report.cost(P2)
    assert set(cost["stage"]) == {"teacher", "tuning", "final"}


def test_the_version_3_page_answers_for_each_pair() -> None:
    page = (Path(__file__).resolve().parents[1] / "book" / "study_v3.md").read_text()
    section = page.split("\n## The answer\n")[1].split("\n## ")[0]
    studies = re.findall(r"```\{kdlib-answer\} study\n:study: (\S+)\n```", section)
    assert studies == ["proxy_v3", *staged_report.MORE_PAIRS["proxy_v3"]]
