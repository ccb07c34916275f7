"""The staged protocol's driver (kdlib.study.staged): teacher, tuning, final, in order, resumable, on a tiny
profile of the same shape as proxy_v2."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import write_fashion_mnist, write_teacher

from kdlib import report_studies, staged_forest, staged_report, stats, study
from kdlib.study import staged


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A staged profile (as ``notebooks/profiles/tiny.json``) over generated Fashion-MNIST images."""
    root = tmp_path_factory.mktemp("staged")
    write_fashion_mnist(root / "data", train_per_class=20, test_per_class=4)
    profile = {"version": 2, "stages": {
        "common": {"dataset": "fashion_mnist", "pair": "resnet8->resnet8", "recipe": "smoke", "epochs": 1,
                   "subset": 100, "val_subset": 50, "eval_subset": None, "device": "cpu",
                   "train_options": {"precision": "fp32", "workers": 0, "data_root": str(root / "data")},
                   "out_dir": str(root / "runs"), "results_dir": str(root / "results")},
        "teacher": {"method": "ce", "student": "resnet8", "subset": None, "seed": 0,
                    "teachers_dir": str(root / "teachers")},
        "tuning": {"methods": ["kd"], "multipliers": [0.25, 1], "seeds": [100]},
        "final": {"configurations": ["ce", "kd"], "seeds": [0, 1], "baselines": ["kd", "ce"], "alpha": 0.05},
    }}
    (root / "profiles").mkdir()
    (root / "profiles" / "tiny.json").write_text(json.dumps(profile))
    return root


@pytest.fixture
def profiles(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(staged, "PROFILES_DIR", tiny / "profiles")
    return tiny


def _records(folder: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(folder)): json.loads(p.read_text()) for p in folder.rglob("record.json")}


def test_the_proxy_v2_plan() -> None:
    """proxy_v2 plans 42 tuning runs (7 methods × 3 weights × 2 seeds) with the teacher's settings fixed in
    its protocol, and refuses notebooks."""
    s = staged.load_staged("proxy_v2")
    teacher = staged.teacher_run(s).config
    assert (teacher.method, teacher.student, teacher.subset, teacher.val_subset, teacher.epochs) == (
        "ce", "resnet32", None, 5000, 7)
    assert (teacher.precision, teacher.fast) == ("fp32", True)
    runs = staged.tuning_runs(s)  # with the committed teacher
    assert len(runs) == 42 and {r.seed for r in runs} == {100, 101}
    assert all(r.key.startswith("tuning/fashion_mnist/repdistiller/resnet32-resnet8/") for r in runs)
    kd = {r.config.variant.get("kd_weight") for r in runs if r.variant.method == "kd"}
    assert kd == {0.225, None, 3.6}  # ×¼, the default (no override), ×4 of α = 0.9
    assert all(r.config.val_subset == 5000 and r.config.subset == 5000 for r in runs)
    with pytest.raises(ValueError, match="staged protocol"):
        study.load_profile("proxy_v2")
    # its records decide the rest: every tuning record in place, 80 final runs, none missing
    assert len(staged.planned_runs(s)) == 122 and not staged._missing(s, staged.planned_runs(s))


@pytest.mark.parametrize(("profile", "teacher", "final"), [("proxy_v3", "resnet32", 11 * 15 + 5 * 5),
                                                          ("proxy_v3_resnet56", "resnet56", 6 * 10)])
def test_the_proxy_v3_plans(profile: str, teacher: str, final: int, tmp_path: Path) -> None:
    """Version 3's profiles: two teachers each, a teacher and a draw of training images per seed, fp32 on the
    fast path evaluated after the last epoch, a bracketing tuning on 3 seeds, final runs seed by seed."""
    s = staged.load_staged(profile)
    s = dataclasses.replace(s, teacher={**s.teacher, "teachers_dir": str(tmp_path)})  # stand-in teachers
    for seed in (1, 2):
        write_teacher(staged.teacher_checkpoint(s, seed), arch=teacher, num_classes=10, seed=seed)
    teachers = [staged.teacher_run(s, seed).config for seed in (1, 2)]
    assert [(t.student, t.seed, t.subset, t.val_subset, t.epochs) for t in teachers] == [
        (teacher, 1, None, 5000, 7), (teacher, 2, None, 5000, 7)]
    assert staged.teacher_checkpoint(s, 2).parts[-4:] == ("fashion_mnist", teacher, "seed2", "model.pt")
    no_records = staged._tuning_records(s).iloc[:0]
    tuning = staged.tuning_runs(s, no_records)
    assert len(tuning) == 9 * len(s.tuning["methods"]) and {r.seed for r in tuning} == {100, 101, 102}
    assert all((r.config.precision, r.config.fast, r.config.eval_every) == ("fp32", True, 7) for r in tuning)
    assert {(r.seed, r.config.subset_seed, Path(r.config.teacher_ckpt).parent.name) for r in tuning} == {
        (100, 100, "seed1"), (101, 101, "seed2"), (102, 102, "seed1")}
    assert {r.config.variant.get("warmup") for r in tuning if r.variant.method == "dkd"} == {1}
    chosen = pd.DataFrame([{"method": m, "overrides": {}} for m in s.tuning["methods"]])
    runs = staged.final_runs(s, chosen)
    assert len(runs) == final and len({r.key for r in runs}) == final
    assert [r.seed for r in runs] == sorted(r.seed for r in runs)  # seed by seed
    alone = [r for r in runs if r.variant.method == "cd" and r.config.variant.get("gkd_weight") == 0.0]
    assert len(alone) == len({r.seed for r in runs if r.variant.method == "cd"})


def test_stages_run_in_order_and_a_second_call_trains_nothing(profiles: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    results = profiles / "results"
    # the final stage refuses to choose weights before every tuning record is there
    assert study.main(["reproduce", "--profile", "tiny", "--stages", "teacher,final"]) == 1
    assert "tuning records are missing" in capsys.readouterr().err
    teacher = profiles / "teachers" / "fashion_mnist" / "resnet8"
    assert (teacher / "model.pt").is_file()
    assert json.loads((teacher / "record.json").read_text())["subset"] is None  # all but the validation split

    assert study.main(["reproduce", "--profile", "tiny"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "tiny: 6 trained"
    records = _records(results)
    tuning = sorted(k for k in records if k.startswith("tuning/"))
    final = sorted(k for k in records if k.startswith("final/"))
    assert len(tuning) == 2 and len(final) == 4
    assert all(records[k]["val_subset"] == 50 and records[k]["val_top1_last"] is not None for k in tuning)
    chosen = staged.chosen_weights(staged.load_staged("tiny"))
    [kd_variant] = chosen["chosen"]
    assert {records[k]["variant"] for k in final if "/kd/" in k} == {kd_variant}
    assert all(records[k]["teacher_ckpt_sha256"] for k in final if "/kd/" in k)

    assert study.main(["reproduce", "--profile", "tiny"]) == 0  # everything in place: nothing trains
    assert capsys.readouterr().out.strip().splitlines()[-1] == "tiny: 6 skipped"
    assert sorted(r.key for r in study.profile_runs("tiny", match=["final"])) == final
    assert _records(results) == records


def test_a_staged_profile_refuses_what_it_does_not_take(profiles: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert study.main(["reproduce", "--profile", "tiny", "--executor", "slurm"]) == 2
    assert "local executor" in capsys.readouterr().err
    assert study.main(["reproduce", "--profile", "tiny", "--stages", "tuning,nope"]) == 2
    assert "unknown stages" in capsys.readouterr().err
    assert study.main(["reproduce", "--profile", "smoke", "--stages", "tuning"]) == 2
    assert "for staged protocols" in capsys.readouterr().err
    (profiles / "profiles" / "bad.json").write_text(json.dumps({"stages": {"common": {}}}))
    with pytest.raises(ValueError, match=r"lack common\.dataset"):
        staged.load_staged("bad")


@pytest.fixture(scope="module")
def tiny_v3(tiny: Path) -> Path:
    """The tiny profile grown into version 3's shape: two teachers, a teacher and a draw of the training
    images per seed, a bracketing tuning with an option fixed, an ablation, and extra seeds for one."""
    profile = json.loads((tiny / "profiles" / "tiny.json").read_text())
    stages = profile["stages"]
    stages["common"] = {**stages["common"], "vary": ["teacher", "subset"], "subset": 60,
                        "out_dir": str(tiny / "runs_v3"), "results_dir": str(tiny / "results_v3")}
    stages["teacher"] = {"method": "ce", "student": "resnet8", "subset": None, "seeds": [0, 1],
                         "teachers_dir": str(tiny / "teachers_v3")}
    stages["tuning"] = {"methods": ["kd"], "multipliers": [1, 4], "seeds": [100, 101],
                        "extend": {"factor": 4, "limit": 4}, "fixed": {"kd": {"T": 2.0}}}
    stages["final"] = {"configurations": ["ce", "kd", {"name": "kd without ce", "method": "kd",
                                                       "set": {"ce_weight": 0.0}}],
                       "seeds": [0, 1, 2], "extra_seeds": {"seeds": [3], "configurations": ["kd"]},
                       "baselines": ["kd", "ce"], "alpha": 0.05,
                       "comparisons": {"vs kd": {"baseline": "kd", "configurations": ["ce"]},
                                       "ablations": {"pairs": [["kd", "kd without ce"]]}}}
    (tiny / "profiles" / "tiny_v3.json").write_text(json.dumps(profile))
    return tiny


def test_a_version_3_profile_varies_teacher_and_images_by_seed_and_brackets_its_tuning(
        tiny_v3: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(staged, "PROFILES_DIR", tiny_v3 / "profiles")
    assert study.main(["reproduce", "--profile", "tiny_v3"]) == 0
    s = staged.load_staged("tiny_v3")
    teachers = {seed: staged.teacher_checkpoint(s, seed) for seed in (0, 1)}
    assert [p.parent.name for p in teachers.values()] == ["seed0", "seed1"]
    sha = {seed: json.loads((p.parent / "record.json").read_text())["seed"] for seed, p in teachers.items()}
    assert sha == {0: 0, 1: 1}
    [state] = staged.chosen_weights(s).itertuples()
    assert state.state in ("interior", "at the limit") and set(state.scores) <= {0.25, 1.0, 4.0}
    tuning = _records(tiny_v3 / "results_v3" / "tuning")
    assert len(tuning) == 2 * len(state.scores) and all("T=2.0" in r["variant"] for r in tuning.values())
    final = _records(tiny_v3 / "results_v3" / "final")
    by_key = {(r["method"], r["variant"], r["seed"]): r for r in final.values()}
    kd_variant = f"{state.chosen}"
    assert {k[2] for k in by_key if k[:2] == ("kd", kd_variant)} == {0, 1, 2, 3}  # the extra seed
    assert {k[2] for k in by_key if k[0] == "ce"} == {0, 1, 2}
    ablation = {k for k in by_key if k[0] == "kd" and k[1] != kd_variant}
    assert {k[2] for k in ablation} == {0, 1, 2} and all("ce_weight=0.0" in k[1] for k in ablation)
    own_teacher = {seed: str(teachers[seed % 2]) for seed in (0, 1, 2, 3)}
    for (method, _, seed), r in by_key.items():
        assert r["subset_seed"] == seed
        if method != "ce":
            assert r["teacher_ckpt"] == own_teacher[seed]
    assert len({r["data_sha256"]["train"] for r in final.values()}) == 4  # one draw per seed
    assert len({r["data_sha256"]["val"] for r in final.values()}) == 1  # one validation split
    runs = staged.final_runs(s, staged.chosen_weights(s))
    assert [r.seed for r in runs] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]  # seed by seed
    capsys.readouterr()
    assert study.main(["reproduce", "--profile", "tiny_v3"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("skipped")


def test_the_report_of_a_version_3_study(tiny_v3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kdlib.staged_report over a finished tiny study of version 3's shape: where each stage stands, the
    teachers, the tuning with where its choice fell, the final configurations by name, a family and the
    ablation (paired on the seeds both have), and the noise split by teacher."""
    monkeypatch.setattr(staged, "PROFILES_DIR", tiny_v3 / "profiles")
    assert study.main(["reproduce", "--profile", "tiny_v3"]) == 0  # trained above, or now
    assert staged_report.progress("tiny_v3") == {"teacher": (2, 2), "tuning": (len(
        _records(tiny_v3 / "results_v3" / "tuning")),) * 2, "final": (10, 10)}
    assert staged_report.teachers("tiny_v3")["seed"].tolist() == [0, 1]
    tuned = staged_report.tuning("tiny_v3")
    multiples = [c for c in tuned.columns if c.startswith("×")]
    assert tuned["where"].iloc[0] in ("interior", "at the limit")
    assert tuned["runs"].iloc[0] == 2 * len(multiples) and tuned["chosen"].iloc[0] in multiples
    final = staged_report.final("tiny_v3")
    assert [c.split(" (")[0] for c in final["configuration"]] == ["ce", "KD", "KD without ce"]
    assert final["runs"].tolist() == [3, 4, 3] and "KD without ce (" in final["configuration"].iloc[2]
    [row] = staged_report.family_comparison("tiny_v3", "vs kd").itertuples()
    assert row.configuration == "ce (student alone)" and row._2 == 3  # kd's extra seed has no ce to pair with
    [ablation] = staged_report.ablations("tiny_v3").itertuples()
    assert ablation.comparison == "KD minus KD without ce" and ablation._2 == 3
    assert ablation.verdict in ("positive", "negative", "within the corrected noise")
    [noise] = staged_report.noise("tiny_v3").itertuples()
    assert noise.baseline == "kd" and noise._2.endswith("(2 df)")
    assert set(staged_report.cost("tiny_v3")["stage"]) == {"teacher", "tuning", "final"}
    words = staged_report.answer("tiny_v3")
    assert "KD beyond the Holm-corrected noise** (3 paired seeds" in words  # its only family
    assert "ce (student alone) " in words and "points here, with 80% power" in words
    # no channel method to name: the headline gives the conditions, counted from the final records
    assert staged_report.headline("tiny_v3").startswith(
        "It holds under narrow conditions: two teachers (resnet8), 4 training subsets of 60 Fashion-MNIST "
        "images, one pair (resnet8 → ")


def test_a_study_is_drawn_one_panel_per_family(tiny_v3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The forest plot and its caption come from the profile's families, whatever their number: the tiny
    study's one, then the same records compared in two families (as version 2 compared with KD and ce)."""
    monkeypatch.setattr(staged, "PROFILES_DIR", tiny_v3 / "profiles")
    assert study.main(["reproduce", "--profile", "tiny_v3"]) == 0  # trained above, or now
    (figure,) = staged_forest.forest("tiny_v3")
    assert [ax.get_title() for ax in figure.axes if ax.get_title()] == ["minus KD"]
    assert staged_forest.forest_text("tiny_v3")["caption"].startswith(
        "Version 2's final comparison on resnet8 → resnet8: each configuration at its tuned weight minus KD, "
        "on the")
    profile = json.loads((tiny_v3 / "profiles" / "tiny_v3.json").read_text())
    profile["stages"]["final"]["comparisons"] = {
        "vs kd": {"baseline": "kd", "configurations": ["ce"]},
        "vs ce": {"baseline": "ce", "configurations": ["kd"]}}
    (tiny_v3 / "profiles" / "tiny_v3_two.json").write_text(json.dumps(profile))
    data = staged_forest.forest_data("tiny_v3_two")
    assert data.groupby("baseline", sort=False).size().to_dict() == {"kd": 1, "ce": 1}
    (figure,) = staged_forest.forest("tiny_v3_two")
    assert [ax.get_title() for ax in figure.axes if ax.get_title()] == ["minus KD", "minus ce"]
    text = staged_forest.forest_text("tiny_v3_two")
    assert "minus KD (left) and minus ce, the student trained alone (right)" in text["caption"]
    assert "2 panels" in text["alt"] and "over each panel's 1 comparison (" in text["caption"]


def test_the_headline_names_the_channel_methods_above_below_and_within_the_noise() -> None:
    table = pd.DataFrame({
        "method": ["ce", "cd", "cwt", "ickd", "ccs", "iekd"],
        "label": ["ce", "CD (×4)", "CWT (×¼)", "ICKD (×16)", "CCS", "IE-KD"],
        "verdict": ["below", "above", "above", "below", "within the corrected noise", "below"],
        "mean": [-5.0, 3.77, 1.47, -1.05, 0.2, -2.52], "lo": [-6.0, 3.19, 1.03, -1.5, -0.4, -3.0],
        "hi": [-4.0, 4.35, 1.91, -0.6, 0.8, -2.0], "n": [15, 20, 20, 15, 15, 15]})
    assert staged_report.beats(table, "DKD") == (
        "**2 of the 5 channel methods beat DKD at this scale**: CD (×4) +3.77 [+3.19, +4.35]; CWT (×¼) "
        "+1.47 [+1.03, +1.91] points of test top-1 (mean and 95% interval over 15–20 paired seeds); ICKD "
        "(×16) and IE-KD fall below it and CCS is within its noise, after Holm's correction.")
    none = table.assign(verdict="within the corrected noise")
    assert staged_report.beats(none, "KD", short=str.upper) == (
        "**None of the 5 channel methods beats KD at this scale**; CD, CWT, ICKD, CCS and IEKD are within "
        "its noise, after Holm's correction.")
    one = table.assign(verdict=["below", "above", "above", "below", "above", "above"])
    assert staged_report.beats(one, "KD").endswith("ICKD (×16) falls below it, after Holm's correction.")


def test_the_landing_answer_is_version_3_once_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staged_report, "headline", lambda profile: f"{profile}'s headline")
    monkeypatch.setattr(staged_report, "complete", lambda profile: profile == "proxy_v2")
    assert report_studies.landing() == "*Version 2 (resnet32 → resnet8):*\n\nproxy_v2's headline"
    both = ("*Version 3, first pair (resnet32 → resnet8):*\n\nproxy_v3's headline\n\n"
            "*Version 3, second pair (resnet56 → resnet20):*\n\nproxy_v3_resnet56's headline")
    monkeypatch.setattr(staged_report, "complete", lambda profile: True)
    assert report_studies.landing() == both
    monkeypatch.setattr(staged_report, "complete", lambda profile: False)  # where the newest stands
    assert report_studies.landing() == both


def test_a_study_under_way_says_where_it_stands_and_compares_nothing(tiny_v3: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staged, "PROFILES_DIR", tiny_v3 / "profiles")
    profile = json.loads((tiny_v3 / "profiles" / "tiny_v3.json").read_text())
    profile["stages"]["final"]["seeds"] = [0, 1, 2, 4]  # one more seed than the records hold
    (tiny_v3 / "profiles" / "tiny_v3_more.json").write_text(json.dumps(profile))
    assert staged_report.progress("tiny_v3_more")["final"] == (10, 13)
    assert staged_report.family_comparison("tiny_v3_more", "vs kd").empty
    assert staged_report.ablations("tiny_v3_more").empty and staged_report.noise("tiny_v3_more").empty
    assert staged_report.answer("tiny_v3_more").startswith(
        "Under way: 2 of 2 teachers, all 6 tuning runs and 10 of the 13 final runs are recorded.")


def test_lists_and_seed_counts_read_as_words() -> None:
    assert [staged_report.in_words(items) for items in (["CD"], ["CD", "CWT"], ["CD", "CWT", "DKD"])] == [
        "CD", "CD and CWT", "CD, CWT and DKD"]
    assert stats.seed_range(pd.Series([15, 20, 15])) == "15–20"
    assert stats.seed_range(pd.Series([10, 10])) == "10"
