"""The staged protocol's driver (kdlib.study.staged): teacher, tuning, final, in order, resumable, on a tiny
profile of the same shape as proxy_v2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import write_fashion_mnist

from kdlib import study
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
    runs = staged.tuning_runs(s, staged.teacher_checkpoint(s))  # the committed teacher
    assert len(runs) == 42 and {r.seed for r in runs} == {100, 101}
    assert all(r.key.startswith("tuning/fashion_mnist/repdistiller/resnet32-resnet8/") for r in runs)
    kd = {r.config.variant.get("kd_weight") for r in runs if r.variant.method == "kd"}
    assert kd == {0.225, None, 3.6}  # ×¼, the default (no override), ×4 of α = 0.9
    assert all(r.config.val_subset == 5000 and r.config.subset == 5000 for r in runs)
    with pytest.raises(ValueError, match="staged protocol"):
        study.load_profile("proxy_v2")


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
