"""The study runner (kdlib.study): parameter checks, run planning and identity, resumable grids, profiles."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import papermill
import pytest
import torch
from helpers import write_fashion_mnist, write_teacher

from kdlib import cli, results, study, train
from kdlib.config import from_args, plan
from kdlib.losses import dkd
from kdlib.record import config_id_of
from kdlib.runlock import run_lock
from kdlib.study import profiles

README = study.REPO / "README.md"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("study")
    write_fashion_mnist(root / "data", train_per_class=8, test_per_class=4)
    teachers = root / "teachers"
    write_teacher(teachers / "fashion_mnist" / "resnet14" / "model.pt", arch="resnet14", num_classes=10)
    return {"root": root, "data": root / "data", "teachers": teachers}


def good(tiny: dict[str, Path], tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        method="ickd", dataset="fashion_mnist", pairs=["resnet14->resnet8"], epochs=1, recipe="smoke",
        seeds=[0], variants=["default"], baselines=["ce"], device="cpu", subset=40, eval_subset=20,
        out_dir=tmp_path / "runs", teachers_dir=tiny["teachers"], data_root=tiny["data"], batch_size=20,
    )
    values.update(overrides)
    return values


# --- parameters -----------------------------------------------------------------------------------
def test_good_parameters_are_normalised(tiny: dict[str, Path], tmp_path: Path) -> None:
    variants = ["default", {"variant": "paper"}, "kd_weight=1"]
    p = study.check_parameters(**good(tiny, tmp_path, variants=variants))
    assert [v.label for v in p.variants] == ["ickd/default", "ickd/variant=paper", "ickd/kd_weight=1.0"]
    assert [v.label for v in p.baselines] == ["ce/default"]
    assert p.pairs == [study.Pair("resnet14", "resnet8")]
    assert p.teacher_ckpts["resnet14"] == tiny["teachers"] / "fashion_mnist" / "resnet14" / "model.pt"
    assert p.label == study.SMOKE_LABEL and p.results_dir is None
    summary = p.summary()
    assert summary["epochs"] == 1 and summary["variants"][1] == "ickd/variant=paper"


@pytest.mark.parametrize(("name", "value"), [
    ("dataset", "mnist"), ("dataset", 3),
    ("pairs", "resnet14->resnet9"), ("pairs", []), ("pairs", ["resnet14"]), ("pairs", 5),
    ("pairs", ["resnet14->resnet8", "resnet14->resnet8"]),
    ("epochs", 0), ("epochs", "2"), ("epochs", 2.5), ("epochs", True),
    ("recipe", "fast"), ("recipe", None),
    ("seeds", -1), ("seeds", [0, 0]), ("seeds", "a,b"), ("seeds", []), ("seeds", [0.5]),
    ("variants", ["variant=nope"]), ("variants", ["nokey=1"]), ("variants", ["variant"]), ("variants", [3]),
    ("variants", [{"ickd_weight": -1}]),
    ("baselines", ["nomethod"]), ("baselines", ["ce:kd_weight=1"]),
    ("device", "tpu"), ("device", 0),
    ("subset", 0), ("subset", "all"), ("eval_subset", -3),
    ("out_dir", "data/results/x"), ("out_dir", 3), ("out_dir", ""),
    ("jobs", 0), ("jobs", 1.0), ("threads", 0), ("label", ""), ("batch_size", 0),
])
def test_bad_parameter_is_named(tiny: dict[str, Path], tmp_path: Path, name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"parameter '{name}'"):
        study.check_parameters(**good(tiny, tmp_path, **{name: value}))


def test_missing_teacher_is_an_error_naming_pairs(tiny: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="parameter 'pairs'.*no checkpoint of teacher 'resnet20'"):
        study.check_parameters(**good(tiny, tmp_path, pairs=["resnet20->resnet8"]))
    # a grid without a teacher-needing method, or with require_teachers=False, does not need it
    p = study.check_parameters(**good(tiny, tmp_path, pairs=["resnet20->resnet8"], variants=[],
                                      baselines=["ce"], method=None))
    assert p.teacher_ckpts == {}
    with pytest.raises(ValueError, match="parameter 'pairs'"):  # but 00_teachers (not training) needs it
        study.check_parameters(**good(tiny, tmp_path, pairs=["resnet20->resnet8"], variants=[], method=None,
                                      require_teachers=True))


def test_string_forms_of_list_parameters(tiny: dict[str, Path], tmp_path: Path) -> None:
    p = study.check_parameters(**good(
        tiny, tmp_path, method=None, pairs="resnet14->resnet8; resnet14 → resnet14", seeds="0,1",
        variants="ce;kd;ickd:variant=paper,kd_weight=1", baselines=[]))
    assert [str(x) for x in p.pairs] == ["resnet14 → resnet8", "resnet14 → resnet14"]
    assert p.seeds == [0, 1]
    assert [v.label for v in p.variants] == ["ce/default", "kd/default", "ickd/kd_weight=1.0,variant=paper"]
    dicts = study.parse_variants([{"method": "cd", "edt": "paper"}, "cwt"], None)
    assert [v.label for v in dicts] == ["cd/edt=paper", "cwt/default"]
    # papermill -p passes a list as its text: JSON and Python lists are read as lists
    for text in ('["default", {"variant": "paper"}]', "['default', {'variant': 'paper'}]"):
        assert [v.label for v in study.parse_variants(text, "ickd")] == ["ickd/default", "ickd/variant=paper"]
    assert [str(p) for p in study.parse_pairs('["resnet14->resnet8"]')] == ["resnet14 → resnet8"]
    with pytest.raises(study.ParameterError, match="parameter 'variants'.*neither a JSON nor a Python list"):
        study.parse_variants('["default"', "ickd")


def test_unknown_notebook_parameter_stops_the_run() -> None:
    """papermill only warns about ``-p epoch 3``; the notebook's first cell after the parameters stops."""
    namespace = {**study.parameter_defaults("01_ickd"), "epoch": 3, "pd": pytest, "In": [], "_i1": "x"}
    with pytest.raises(study.ParameterError) as error:
        study.check_parameter_names("01_ickd", namespace)
    message = str(error.value)
    assert message.startswith("unknown parameter 'epoch' (did you mean 'epochs'?)")
    assert "the parameters of 01_ickd are: dataset, pairs, epochs" in message
    assert error.value._render_traceback_() == [f"ParameterError: {message}"]  # the notebook shows one line
    study.check_parameter_names("01_ickd", study.parameter_defaults("01_ickd"))  # the defaults pass


def test_relative_paths_are_relative_to_the_repository(tiny: dict[str, Path], tmp_path: Path) -> None:
    p = study.check_parameters(**good(tiny, tmp_path, out_dir="runs/x", results_dir="data/results/x"))
    assert p.out_dir == study.REPO / "runs" / "x" and p.results_dir == study.REPO / "data" / "results" / "x"
    assert p.label.startswith("study run")


# --- planning and identity ------------------------------------------------------------------------
def test_plan_runs_keys_and_dedup(tiny: dict[str, Path], tmp_path: Path) -> None:
    p = study.check_parameters(**good(tiny, tmp_path, pairs=["resnet14->resnet8", "resnet14->resnet14"],
                                      seeds=[0, 1], variants=["default", "kd_weight=1"]))
    runs = study.plan_runs(p)
    keys = [r.key for r in runs]
    assert len(keys) == len(set(keys)) == 2 * (1 + 2) * 2  # per pair: ce + 2 variants, 2 seeds
    assert "fashion_mnist/smoke/resnet8/ce/default/seed0" in keys
    assert "fashion_mnist/smoke/resnet14-resnet8/ickd/kd_weight=1.0/seed1" in keys
    assert all(r.out == p.out_dir / r.key for r in runs)
    assert len({r.config_id for r in runs}) == len(runs)


@pytest.mark.parametrize("method", ["ce", "ickd", "iekd"])
def test_config_id_matches_the_trainer(tiny: dict[str, Path], tmp_path: Path, method: str) -> None:
    variants = [] if method == "ce" else ["default"]
    p = study.check_parameters(**good(tiny, tmp_path, method=None if method == "ce" else method,
                                      variants=variants, baselines=["ce"] if method == "ce" else []))
    (run,) = study.plan_runs(p)
    record = train.train(run.config)
    assert record["config_id"] == run.config_id == config_id_of(run.config)


def test_student_weights_make_a_variant_of_their_own(tiny: dict[str, Path], tmp_path: Path) -> None:
    weights = write_teacher(tmp_path / "init" / "resnet8.pt", arch="resnet8", num_classes=10)
    p = study.check_parameters(**good(tiny, tmp_path, variants=[
        "default", {"student_weights": str(weights)}, f"kd_weight=1,student_weights={weights}"]))
    assert [v.label for v in p.variants] == [
        "ickd/default", "ickd/student_weights=resnet8.pt", "ickd/kd_weight=1.0,student_weights=resnet8.pt"]
    assert p.variants[1].overrides == {} and p.variants[1].student_weights == str(weights)
    scratch, pretrained, _ = (r for r in study.plan_runs(p) if r.variant.method == "ickd")
    assert pretrained.config.student_weights == str(weights) and scratch.config.student_weights is None
    assert pretrained.key.endswith("ickd/student_weights=resnet8.pt/seed0")
    assert pretrained.config_id != scratch.config_id
    record = train.train(pretrained.config)  # the record's variant, as results reads it, is the study's
    assert record["config_id"] == pretrained.config_id
    assert results.run_variant(record["variant"], record["student_weights"]) == pretrained.variant.variant
    torchvision = study.parse_variants(["variant=imagenet,student_weights=torchvision"], "ickd")[0]
    assert torchvision.variant == "variant=imagenet,student_weights=torchvision"
    with pytest.raises(ValueError, match="parameter 'variants'.*student_weights: no file"):
        study.parse_variants([{"student_weights": "absent.pt"}], "ickd")


def test_cli_arguments_reproduce_the_configuration(tiny: dict[str, Path], tmp_path: Path) -> None:
    """A subprocess run trains exactly the planned configuration: every field reaches it (through
    kdlib.config.to_argv), with --resume and no progress bars."""
    weights = write_teacher(tmp_path / "resnet8.pt", arch="resnet8", num_classes=10)
    p = study.check_parameters(**good(tiny, tmp_path, variants=[
        {"variant": "paper", "grid": [2, 2]}, {"student_weights": str(weights)}]))
    for run in study.plan_runs(p):
        planned = dataclasses.replace(run.config, bn="frozen", fast=False, compile=False,
                                      precision="bf16")
        config = from_args(cli.build_parser().parse_args(study.train_argv(planned)))
        assert config_id_of(config) == config_id_of(planned)
        assert config.resume and config.progress is False
        assert (config.bn, config.fast, config.compile, config.precision) == ("frozen", False, False, "bf16")
        assert str(config.out) == str(run.config.out) and config.workers == run.config.workers


# --- the grid -------------------------------------------------------------------------------------
def test_run_grid_trains_skips_and_copies_records_only(tiny: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    p = study.check_parameters(**good(tiny, tmp_path, results_dir=results))
    runs = study.plan_runs(p)
    first = study.run_grid(runs, p.results_dir)
    assert [o.status for o in first] == ["trained", "trained"]
    assert "[2/2] ickd/default resnet14 → resnet8 seed 0: trained" in capsys.readouterr().out
    copied = sorted(x.relative_to(results).as_posix() for x in results.rglob("*") if x.is_file())
    assert copied == sorted(f"{r.key}/record.json" for r in runs)
    assert all((r.out / "last.pt").is_file() for r in runs)
    for o in first:
        assert json.loads(o.record_path.read_text())["config_id"] == o.run.config_id

    again = study.run_grid(runs, p.results_dir)
    assert [o.status for o in again] == ["skipped", "skipped"]
    assert [o.record["top1_last"] for o in again] == [o.record["top1_last"] for o in first]

    # a figure needs the model: a missing checkpoint makes the run train again
    (runs[1].out / "last.pt").unlink()
    third = study.run_grid(runs, p.results_dir, need_checkpoint=lambda r: r.variant.method == "ickd")
    assert [o.status for o in third] == ["skipped", "trained"]
    assert third[1].record["top1_last"] == first[1].record["top1_last"]  # deterministic on CPU


def test_run_grid_replaces_another_configuration(tiny: dict[str, Path], tmp_path: Path) -> None:
    p1 = study.check_parameters(**good(tiny, tmp_path, variants=[]))
    p2 = study.check_parameters(**good(tiny, tmp_path, variants=[], subset=30))
    (run1,), (run2,) = study.plan_runs(p1), study.plan_runs(p2)
    assert run1.key == run2.key and run1.config_id != run2.config_id
    assert [o.status for o in study.run_grid([run1])] == ["trained"]
    (outcome,) = study.run_grid([run2])
    assert outcome.status == "trained" and outcome.record["config_id"] == run2.config_id


def test_run_grid_resumes_an_interrupted_run(tiny: dict[str, Path], tmp_path: Path) -> None:
    p = study.check_parameters(**good(tiny, tmp_path, variants=[], epochs=2))
    (run,) = study.plan_runs(p)
    reference = study.run_grid([run])[0].record
    # interrupt after epoch 1: keep the checkpoint of a 2-epoch run stopped early
    interrupted = study.check_parameters(**good(tiny, tmp_path / "b", variants=[], epochs=2))
    (run_b,) = study.plan_runs(interrupted)

    class Stop(Exception):
        pass

    calls = {"n": 0}
    original = train.evaluate

    def evaluate_then_stop(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the second evaluation = the end of epoch 2
            raise Stop
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "evaluate", evaluate_then_stop)
        with pytest.raises(Stop):
            study.run_grid([run_b])
    record = json.loads((run_b.out / "record.json").read_text())
    assert record["status"] == "failed" and len(record["history"]) == 1
    (resumed,) = study.run_grid([run_b])
    assert resumed.status == "trained" and len(resumed.record["history"]) == 2
    assert resumed.record["top1_last"] == reference["top1_last"]


def test_diverged_run_is_recorded_and_not_retried(tiny: dict[str, Path], tmp_path: Path) -> None:
    results = tmp_path / "results"
    p = study.check_parameters(**good(tiny, tmp_path, method=None, variants=["kd:kd_weight=1e308,T=0.01"],
                                      baselines=["ce"], results_dir=results))
    runs = study.plan_runs(p)
    outcomes = study.run_grid(runs, p.results_dir, verbose=False)
    assert [o.status for o in outcomes] == ["trained", "diverged"]
    assert "non-finite" in outcomes[1].message
    stored = json.loads((results / outcomes[1].run.key / "record.json").read_text())
    assert stored["status"] == "diverged" and stored["config_id"] == runs[1].config_id
    assert study.failures(outcomes) == [outcomes[1]] and not outcomes[1].ok
    table = study.outcomes_table(outcomes)
    assert list(table["status"]) == ["trained", "diverged"]
    metrics = json.loads(study.metrics(outcomes))
    assert metrics[1]["status"] == "diverged" and metrics[0]["losses_last"]["ce"] > 0
    assert list(study.records_frame(outcomes)["status"]) == ["completed", "diverged"]

    again = study.run_grid(runs, p.results_dir, verbose=False)  # a result of the configuration: kept
    assert [o.status for o in again] == ["skipped", "diverged"] and again[1].seconds == 0
    retried = study.run_grid(runs[1:], p.results_dir, retrain=True, verbose=False)
    assert [o.status for o in retried] == ["diverged"] and retried[0].seconds > 0


def test_run_grid_leaves_a_folder_in_use_alone(tiny: dict[str, Path], tmp_path: Path) -> None:
    p1 = study.check_parameters(**good(tiny, tmp_path, variants=[]))
    p2 = study.check_parameters(**good(tiny, tmp_path, variants=[], subset=30))
    (run1,), (run2,) = study.plan_runs(p1), study.plan_runs(p2)
    assert [o.status for o in study.run_grid([run1])] == ["trained"]
    with run_lock(run2.out):  # another process is training there
        (outcome,) = study.run_grid([run2], verbose=False)
        assert outcome.status == "failed" and "in use by another kdlib run" in outcome.message
        assert (run1.out / "last.pt").is_file()  # the stale run was not removed under the live one
        (outcome,) = study.run_grid([run1], retrain=True, verbose=False)
        assert outcome.status == "failed" and (run1.out / "last.pt").is_file()


@pytest.mark.slow
def test_run_grid_in_subprocesses(tiny: dict[str, Path], tmp_path: Path) -> None:
    """Subprocesses see this machine's real CPU (conftest.py): the runs say which precision they mean."""
    fp32 = {"train_options": {"precision": "fp32"}, "seeds": [0, 1], "variants": []}
    p = study.check_parameters(**good(tiny, tmp_path, threads=1, **fp32))
    runs = study.plan_runs(p)
    outcomes = study.run_grid(runs, jobs=2, threads=1, verbose=False)
    assert [o.status for o in outcomes] == ["trained", "trained"]
    here = study.run_grid(study.plan_runs(study.check_parameters(**good(tiny, tmp_path / "b", **fp32))),
                          verbose=False)
    assert [o.record["top1_last"] for o in outcomes] == [o.record["top1_last"] for o in here]


def test_load_distiller_restores_the_trained_parts(tiny: dict[str, Path], tmp_path: Path) -> None:
    p = study.check_parameters(**good(tiny, tmp_path, method="cwt", variants=["default"], baselines=[]))
    outcomes = study.run_grid(study.plan_runs(p), verbose=False)
    distiller = study.trained(outcomes, "cwt")
    saved = torch.load(outcomes[0].run.out / "model.pt", weights_only=True)["model"]
    for key, value in distiller.student.state_dict().items():
        assert torch.equal(value, saved[key]), key
    state = torch.load(outcomes[0].run.out / "last.pt", weights_only=True)["distiller"]
    assert torch.equal(distiller.transform[0].weight, state["transform.0.weight"])
    assert not distiller.training
    with pytest.raises(LookupError, match="no completed run of ce/default"):
        study.trained(outcomes, "ce")


# --- committed records, checked by retraining -----------------------------------------------------
def test_verify_finds_a_committed_number_this_code_does_not_compute(tiny: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    results = tmp_path / "results"
    p = study.check_parameters(**good(tiny, tmp_path, results_dir=results))
    runs = study.plan_runs(p)
    study.run_grid(runs, results)
    rows = study.verify(runs, results, tmp_path / "verify")
    assert [r["key"] for r in rows] == [r.key for r in runs] and all(r["identical"] for r in rows)
    assert rows[0]["top1_last"] == rows[0]["new top1_last"]
    path = results / runs[1].key / "record.json"  # a committed number that this code does not compute
    record = json.loads(path.read_text())
    record["history"][-1]["top1"] += 0.01
    path.write_text(json.dumps(record))
    rows = study.verify(runs, results, tmp_path / "verify")
    assert [r["identical"] for r in rows] == [True, False]
    (results / runs[0].key / "record.json").unlink()  # nothing committed: nothing to verify
    assert [r["key"] for r in study.verify(runs, results, tmp_path / "verify")] == [runs[1].key]


def test_verify_with_a_tolerance_passes_close_numbers_and_names_another_cpu(
        tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--tolerance P``: pass or fail per run on the last-epoch top-1 instead of bit for bit; a record made
    on another CPU (model or instruction-set flags) is named as such, and records without flags still work."""
    results = tmp_path / "results"
    p = study.check_parameters(**good(tiny, tmp_path, results_dir=results, baselines=[]))
    runs = study.plan_runs(p)
    study.run_grid(runs, results)
    path = results / runs[0].key / "record.json"
    record = json.loads(path.read_text())
    committed = record["top1_last"]
    record["history"][-1]["top1"] += 0.4
    record.update(top1_last=committed + 0.4, hardware={"cpu": "Intel Xeon", "torch_threads": 1})  # no flags
    path.write_text(json.dumps(record))
    monkeypatch.setattr(study.cli, "profile_runs", lambda profile, match: runs)
    monkeypatch.setattr(study.cli, "profile_results_dir", lambda profile: results)
    argv = ["verify", "--profile", "proxy", "--out", str(tmp_path / "verify")]
    assert study.main([*argv, "--tolerance", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "-0.40 points, pass at a tolerance of 0.5 points" in out
    assert "this CPU differs from the record's: model 'Intel Xeon' in the record" in out
    assert "the record does not say its instruction sets" in out
    assert study.main([*argv, "--tolerance", "0.3"]) == 1
    assert "FAIL at a tolerance of 0.3 points" in capsys.readouterr().out
    assert study.main(argv) == 1  # bit for bit
    out = capsys.readouterr().out
    assert "DIFFERENT" in out and "bit-for-bit is not expected" in out
    with pytest.raises(SystemExit):
        study.main([*argv, "--tolerance", "-1"])


def test_verify_command_selects_runs_by_whole_path_parts(capsys: pytest.CaptureFixture[str]) -> None:
    keys = [r.key for r in study.profile_runs("proxy", ["kd/default/seed0"])]
    assert keys == ["fashion_mnist/repdistiller/resnet32-resnet8/kd/default/seed0"]  # not ickd/default/seed0
    runs = study.profile_runs("proxy")  # the protocol is committed in full: make reproduce skips every run
    committed = {r.key: json.loads((study.profile_results_dir("proxy") / r.key / "record.json").read_text())
                 for r in runs}
    assert len(runs) == 60 and all(committed[r.key]["config_id"] == r.config_id for r in runs)
    assert study.main(["verify", "--profile", "proxy", "--match", "kd/default/seed9"]) == 2
    assert "no run of profile 'proxy' matches ['kd/default/seed9']" in capsys.readouterr().err


def test_proxy_runs_stay_fp32_on_a_cpu_with_bf16_units(bf16_cpu: None) -> None:
    """The proxy profile pins the precision its records were made in: on a CPU whose ``auto`` precision is
    bf16, make reproduce still finds every committed run."""
    runs = study.profile_runs("proxy", ["kd/default/seed0"])
    assert runs[0].config.precision == "fp32"
    record = json.loads((study.profile_results_dir("proxy") / runs[0].key / "record.json").read_text())
    assert runs[0].config_id == record["config_id"]
    unpinned = dataclasses.replace(runs[0].config, precision="auto")
    assert config_id_of(unpinned) != record["config_id"]


def test_train_options_reach_every_run(tiny: dict[str, Path], tmp_path: Path) -> None:
    options = {"precision": "bf16", "fast": True, "compile": False, "bn": "frozen"}
    p = study.check_parameters(**good(tiny, tmp_path, train_options=options))
    assert p.summary()["train_options"] == options
    for run in study.plan_runs(p):
        assert {k: getattr(run.config, k) for k in options} == options
        argv = study.train_argv(run.config)
        assert {"--precision", "bf16", "--fast", "--no-compile"} <= set(argv)


@pytest.mark.parametrize("options, message", [
    ({"seed": 3}, r"unknown option\(s\) \['seed'\]; choose from: .*precision"),
    ({"precision": "fp16"}, "invalid precision 'fp16'; choose one of: auto, bf16, fp32"),
    ({"fast": "yes"}, "option 'fast' is a switch: true or false or null, got 'yes'"),
    ({"channels_last": None}, "option 'channels_last' is a switch: true or false, got None"),
    (["precision"], "must be a dict of run options"),
])
def test_train_options_are_checked(tiny: dict[str, Path], tmp_path: Path, options: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"parameter 'train_options': {message}"):
        study.check_parameters(**good(tiny, tmp_path, train_options=options))


# --- profiles -------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", study.PROFILES)
def test_profiles_give_parameters_for_every_notebook(profile: str) -> None:
    for notebook in study.NOTEBOOKS:
        params = study.notebook_parameters(profile, notebook, jobs=3)
        declared = study.parameter_defaults(notebook)
        assert set(params) <= set(declared)
        assert params["jobs"] == 3 and params["dataset"]
        for name in ("dataset", "pairs", "epochs", "recipe", "seeds", "device", "subset", "out_dir"):
            assert name in params, (profile, notebook, name)
        assert not str(params["out_dir"]).startswith("data")
        if "results_dir" in params:
            assert params["results_dir"] == f"data/results/{profile}"
    table = study.estimate(profile, images_per_s=1000.0)
    total = table[table["notebook"] == "total"].iloc[0]
    assert total["runs"] > 0 and total["estimated hours"] > 0
    # the README's cost table states this profile's runs and training images
    row = re.search(rf"^\| `{profile}` \| ([\d,]+) \| ([\d.]+) ([MG]) \|", README.read_text(), re.M)
    assert row, f"README.md has no cost row for profile '{profile}'"
    assert int(row[1].replace(",", "")) == total["runs"]
    millions = float(row[2]) * {"M": 1, "G": 1000}[row[3]]
    assert millions == pytest.approx(total["train images (M)"], rel=0.05)


@pytest.mark.parametrize("profile", study.PROFILES)
def test_every_method_notebook_of_a_profile_has_what_its_figures_need(profile: str) -> None:
    """Notebooks 01-05 draw their figures from the grid's first variant and the vanilla student, and pair the
    other variants against the first: a profile whose grid lacks them would fail after all its training."""
    for notebook, method in study.NOTEBOOK_METHODS.items():
        if method is None:
            continue
        params = {**study.parameter_defaults(notebook), **study.notebook_parameters(profile, notebook)}
        variants = study.parse_variants(params["variants"], method)
        assert variants and variants[0].method == method, (profile, notebook)
        baselines = [v.label for v in study.parse_variants(params["baselines"], None, "baselines")]
        assert "ce/default" in baselines, (profile, notebook)


def test_the_reference_variant_is_the_first(tiny: dict[str, Path], tmp_path: Path) -> None:
    p = study.check_parameters(**good(tiny, tmp_path, variants=[{"variant": "paper"}, "default"]))
    assert p.reference.label == "ickd/variant=paper"
    with pytest.raises(LookupError, match="parameter 'variants' is empty"):
        _ = study.check_parameters(**good(tiny, tmp_path, variants=[])).reference


def test_proxy_profile_follows_the_protocol() -> None:
    common = study.load_profile("proxy")["common"]
    (pair,) = study.parse_pairs(common["pairs"])
    assert pair == study.Pair("resnet32", "resnet8") and common["epochs"] == 5 and common["subset"] == 10000
    assert common["seeds"] == [0, 1, 2] and common["recipe"] == "repdistiller"
    assert common["eval_subset"] is None
    head = study.notebook_parameters("proxy", "06_head_to_head")
    labels = [v.label for v in study.parse_variants(head["variants"])]
    assert labels == [
        "ce/default", "kd/default", "fitnet/default", "at/default", "sp/default", "rkd/default",
        "pkt/default",
        "ickd/default", "ickd/variant=paper", "ickd/kd_weight=1.0", "ickd/kd_weight=1.0,variant=paper",
        "ccs/default", "ccs/inter_variant=sample", "cd/default", "cd/edt=paper", "cd/teacher_bn=train",
        "cwt/default", "iekd/exp_weight=50.0,inh_weight=50.0",
        "iekd/exp_weight=50.0,inh_weight=50.0,split=random", "iekd/exp_weight=50.0,inh_weight=50.0,rec=l2",
    ]
    if study.teacher_checkpoint("fashion_mnist", pair.teacher) is not None:  # the committed teacher
        for notebook in study.NOTEBOOKS:
            params = {**study.parameter_defaults(notebook), **study.notebook_parameters("proxy", notebook)}
            study.check_notebook_parameters(notebook, params)


def test_cifar100_head_to_head_runs_dkd_with_mdistillers_beta_for_each_pair(tmp_path: Path) -> None:
    """DKD stands beside KD in the CIFAR-100 head-to-head: one variant, ``dkd/nckd_weight=mdistiller``, on
    every pair and seed, each run with the β of mdistiller's config for its pair (2, 6 or 8), read from
    :data:`kdlib.losses.dkd.MDISTILLER_CIFAR100_BETA` rather than written in the profile."""
    common = study.load_profile("cifar100")["common"]
    pairs = study.parse_pairs(common["pairs"])
    for teacher in {pair.teacher for pair in pairs}:  # RepDistiller's layout; planning hashes, never loads
        ckpt = tmp_path / "cifar100" / f"{teacher}_vanilla" / "ckpt_epoch_240.pth"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(teacher.encode())
    runs = study.profile_runs("cifar100", ["dkd"], ["06_head_to_head"], teachers_dir=str(tmp_path),
                              device="cpu")
    assert {run.label for run in runs} == {"dkd/nckd_weight=mdistiller"}
    beta = {(run.pair.teacher, run.pair.student, run.seed): plan(run.config).method_config.nckd_weight
            for run in runs}
    assert beta == {(pair.teacher, pair.student, seed): dkd.mdistiller_beta(pair.teacher, pair.student)
                    for pair in pairs for seed in common["seeds"]}
    assert (beta["resnet56", "resnet20", 0], beta["wrn_40_2", "wrn_16_2", 1],
            beta["resnet32x4", "resnet8x4", 2]) == (2.0, 6.0, 8.0)
    assert study.notebook_parameters("cifar100", "06_head_to_head")["baseline"] == "kd"


def test_profile_errors() -> None:
    with pytest.raises(ValueError, match="unknown profile 'nope'; choose one of: cifar100, imagenet, proxy"):
        study.load_profile("nope")
    bad = {"common": {"dataset": "fashion_mnist"}, "notebooks": {"01_ickd": {"variantz": ["default"]}}}
    with pytest.raises(ValueError, match=r"\['variantz'\] for 01_ickd are not among its parameters"):
        study.notebook_parameters(bad, "01_ickd")
    with pytest.raises(ValueError, match="unknown notebook"):
        study.notebook_parameters(bad, "07_nope")


def test_reproduce_checks_every_notebook_before_running_any(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    profile = json.loads((study.PROFILES_DIR / "proxy.json").read_text())
    profile["notebooks"]["03_cd"]["variants"] = ["default", {"edt": "sometimes"}]
    (tmp_path / "broken.json").write_text(json.dumps(profile))
    monkeypatch.setattr(profiles, "PROFILES_DIR", tmp_path)  # where load_profile reads it
    message = "profile 'broken', notebook 03_cd: parameter 'variants': invalid edt"
    with pytest.raises(ValueError, match=message):
        study.reproduce("broken", out_dir=tmp_path / "executed")
    assert not (tmp_path / "executed").exists()


@pytest.mark.parametrize("jobs, threads, ran", [(1, 4, 1), (2, 2, 2), (8, 1, 4)])
def test_reproduce_uses_every_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int,
                                   threads: int, ran: int) -> None:
    """One run with every core's threads (JOBS=1), or the cores shared out between the jobs: on a 2-core CPU
    both finish a grid in the same time (bench/parallel.csv), so no core is left idle; more jobs than cores
    run as many at a time as there are cores."""
    seen = {}
    monkeypatch.delenv("PYTHONPATH", raising=False)  # reproduce sets it for the kernels: restored after
    monkeypatch.setattr(papermill, "execute_notebook", lambda nb, out, parameters, **kw: seen.update(
        {Path(nb).stem: parameters}))
    monkeypatch.setattr(profiles.os, "cpu_count", lambda: 4)
    study.reproduce("proxy", jobs=jobs, out_dir=tmp_path / "executed")
    assert seen and all((p["jobs"], p["threads"]) == (ran, threads) for p in seen.values())


def test_estimate_from_bench_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "results.csv"
    csv.write_text("date,device,device_name,pair,ours_images_per_s,ours_eval_s\n"
                   "2026-01-01,cuda,H100,kd resnet56->resnet20,9000,1.0\n"
                   "2026-01-02,cuda,H100,kd resnet56->resnet20,8000,2.0\n"
                   "2026-01-02,cuda,H100,ickd resnet32x4->resnet8x4,5000,2.5\n")
    ips, eval_ips, basis = study.bench_throughput("cuda", study.parse_pairs(["resnet56->resnet20"]), csv)
    assert (ips, eval_ips) == (8000.0, 5000.0) and "kd resnet56->resnet20" in basis
    assert study.bench_throughput("cuda", (), csv)[0] == 5000.0  # no matching pair: the slowest
    with pytest.raises(ValueError, match="no cpu measurement"):
        study.bench_throughput("cpu", (), csv)
    assert study.main(["estimate", "--profile", "proxy", "--images-per-s", "100"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ESTIMATE (not a measurement) at 100 training images/s") and "total" in out
    assert study.main(["params", "--profile", "proxy", "--notebook", "01_ickd"]) == 0
    assert "results_dir: data/results/proxy" in capsys.readouterr().out
    assert study.main(["reproduce", "--profile", "nope"]) == 2


def test_every_figure_from_a_tiny_grid(tiny: dict[str, Path], tmp_path: Path) -> None:
    """The notebooks' figures from trained models of a tiny grid (the distillers' data, kdlib.plots)."""
    from matplotlib.figure import Figure

    from kdlib import plots, results

    p = study.check_parameters(**good(tiny, tmp_path, method=None, seeds=[0, 1], variants=[
        "kd", "ickd", "ccs", "cd", "cwt", "iekd", "iekd:split=random"]))
    outcomes = study.run_grid(study.plan_runs(p), verbose=False)
    assert not study.failures(outcomes)
    x, y = study.sample_batch("fashion_mnist", 16, data_root=tiny["data"])
    assert x.shape == (16, 3, 32, 32) and len(set(y.tolist())) == 10
    vanilla = study.trained(outcomes, "ce").student
    data_ickd = study.trained(outcomes, "ickd").correlation_data(x, vanilla)
    assert {k: v.shape for k, v in data_ickd.items()} == {
        "teacher": (64, 64), "ICKD student e(f_s)": (64, 64), "vanilla student": (64, 64)}
    data_ccs = study.trained(outcomes, "ccs").correlation_data(x, vanilla)
    assert all(abs(m).max() <= 1 + 1e-6 for part in data_ccs.values() for m in part.values())
    data_cd = study.trained(outcomes, "cd").attention_data(x, vanilla)
    assert sorted({row["stage"] for row in data_cd}) == [1, 2, 3]
    data_cwt = study.trained(outcomes, "cwt").transform_data(x)
    assert data_cwt["W1"].shape == (64, 64) and len(data_cwt["corr_transformed"]) == 64
    iekd = {o.run.label: study.load_distiller(o) for o in study.completed(outcomes, "iekd", seed=0)}
    data_iekd = {label: distiller.similarity_data(x) for label, distiller in iekd.items()}
    assert len(data_iekd) == 2
    assert all({row["part"] for row in rows} == {"inheritance", "exploration"} for rows in data_iekd.values())
    frame = study.records_frame(outcomes)
    (title, group), = results.comparison_groups(frame)
    assert "resnet14 → resnet8" in title and set(group["method"]) == {"ce", "kd", "ickd", "ccs", "cd", "cwt",
                                                                       "iekd"}
    figures = [
        plots.training_curves(study.records_of(outcomes), title="t"),
        plots.loss_terms(study.records_of(outcomes)),
        plots.ickd_correlations(data_ickd), plots.ccs_matrices(data_ccs), plots.cd_attention(data_cd),
        plots.cwt_transform({"cwt/default": data_cwt}), plots.iekd_similarity(data_iekd),
        plots.ranking(results.paired_differences(group)),
        plots.ranking(results.summarize(group), value="top1_last_mean", lo="top1_last_lo", hi="top1_last_hi",
                      reference=None),
        plots.training_curves([]),
    ]
    assert all(isinstance(f, Figure) and f.axes for f in figures)
    teachers = plots.training_curves(study.records_of(outcomes), label="student", legend_title="teacher")
    [legend] = teachers.legends
    assert legend.get_title().get_text() == "teacher" and legend.get_texts()[0].get_fontsize() >= 9
