"""Bad input to the data loaders, the study's command line and its records: one stderr line, exit status 2,
nothing run or written; a data file never runs code (each test fails on the code before its fix).

- F6: a crafted CIFAR pickle under ``--data-root`` is refused unread, naming the file; a damaged one is one
  line; CIFAR's own files (Python 2 pickles) still load.
- F10-F14: ``python -m kdlib.study`` with a non-positive throughput, a usage error, an unknown notebook, a
  profile given as a path, a committed record of the wrong shape.
- F16: records whose grouping fields have the wrong type are skipped with a warning naming them.
- F17: a notebook's ``train_options.recipe_overrides`` are checked before any run starts.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
from pathlib import Path
from typing import Any

import nbclient
import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
from helpers import write_cifar10, write_cifar100

from kdlib import cli, results, study
from kdlib.data import DataError, load_data
from kdlib.study import staged


# --- F6: CIFAR's pickles -------------------------------------------------------------------------
class Payload:
    """An object whose unpickling runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch '{self.marker}'",)


CIFAR_FILES = {"cifar100": "cifar-100-python", "cifar10": "cifar-10-batches-py"}


def cifar_root(tmp_path: Path, dataset: str) -> Path:
    root = tmp_path / "data"
    (write_cifar100 if dataset == "cifar100" else write_cifar10)(root, 1, 1)
    return root


def train_argv(root: Path, dataset: str, out: Path) -> list[str]:
    return ["train", "--method", "ce", "--student", "resnet8", "--dataset", dataset, "--data-root", str(root),
            "--out", str(out), "--recipe", "smoke", "--epochs", "1", "--workers", "0", "--no-download",
            "--no-progress", "--device", "cpu"]


def kdlib_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The one stderr line of ``python -m kdlib`` (in this process) exiting with status 2."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("kdlib: error: ")
    return err.strip()


@pytest.mark.parametrize("dataset, name", [("cifar100", "train"), ("cifar100", "meta"),
                                           ("cifar10", "data_batch_3")])
def test_a_crafted_cifar_pickle_is_refused_without_running_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: str, name: str) -> None:
    root = cifar_root(tmp_path, dataset)
    path = root / CIFAR_FILES[dataset] / name
    marker = tmp_path / "MARKER"
    path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    line = kdlib_error(capsys, train_argv(root, dataset, tmp_path / "run"))
    assert f"refusing to load '{path}': it refers to {os.system.__module__}.system" in line, line
    with pytest.raises(DataError, match="which a CIFAR file never holds"):
        load_data(dataset, root, download=False, workers=0)
    assert not marker.exists()  # the payload never ran
    assert not (tmp_path / "run" / "record.json").exists()


def batch(rows: int, pixels: int, label: int) -> bytes:
    return pickle.dumps({"data": np.zeros((rows, pixels), np.uint8), "fine_labels": [label] * rows})


DAMAGED = {  # kind: (the CIFAR-100 training file's new content from its old one, part of the message)
    "truncated": (lambda old: old[:1000], "is not a readable CIFAR file ("),
    "empty": (lambda old: b"", "is not a readable CIFAR file (EOFError: Ran out of input)"),
    "a list": (lambda old: pickle.dumps([1, 2]), "'data' must be a uint8 array"),
    "label out of range": (lambda old: batch(1, 3072, 100),
                           "'fine_labels' must be a list of one label in 0..99 per row"),
    "rows of another size": (lambda old: batch(1, 10, 1),
                             "'data' must be a uint8 array of rows of 3072 pixels"),
}


@pytest.mark.parametrize("kind", list(DAMAGED))
def test_a_damaged_cifar_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          kind: str) -> None:
    root = cifar_root(tmp_path, "cifar100")
    damage, message = DAMAGED[kind]
    path = root / "cifar-100-python" / "train"
    path.write_bytes(damage(path.read_bytes()))
    line = kdlib_error(capsys, train_argv(root, "cifar100", tmp_path / "run"))
    assert f"'{path}' " in line and message in line, line
    assert f"extract cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/ into {root}" in line


class Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes what Python 2's cPickle wrote into CIFAR's files (protocol 2): strings and bytes as byte
    strings, numpy's globals under ``numpy.core``."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        head = pickle.SHORT_BINSTRING + bytes([len(obj)]) if len(obj) < 256 else (
            pickle.BINSTRING + struct.pack("<i", len(obj)))
        self.write(head + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__name__}\n".encode())
        self.memoize(obj)

    dispatch[bytes], dispatch[str] = save_bytes, save_str
    dispatch[type], dispatch[type(len)] = save_global, save_global


def test_cifar_files_as_python_2_wrote_them_still_load(tmp_path: Path) -> None:
    root = cifar_root(tmp_path, "cifar100")
    folder = root / "cifar-100-python"
    expected = load_data("cifar100", root, download=False, workers=0, batch_size=10)
    for name in ("train", "test", "meta"):
        with open(folder / name, "rb") as f:
            entry = pickle.load(f)
        buffer = io.BytesIO()
        Python2Pickler(buffer, protocol=2).dump(entry)
        assert b"numpy.core.multiarray\n_reconstruct" in buffer.getvalue() or name == "meta"
        (folder / name).write_bytes(buffer.getvalue())
    again = load_data("cifar100", root, download=False, workers=0, batch_size=10)
    assert again.sha256 == expected.sha256  # the same images and labels, read from Python 2's pickles
    assert again.train.dataset.base.classes[:2] == ["class_0", "class_1"]


# --- the study's command line -------------------------------------------------------------------
def study_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The one stderr line of ``python -m kdlib.study`` (in this process) returning 2."""
    assert study.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("kdlib.study: error: "), err
    return err.strip()


@pytest.mark.parametrize("extra", [
    ["--images-per-s", "0"], ["--images-per-s", "-5"], ["--images-per-s", "nan"], ["--images-per-s", "inf"],
    ["--images-per-s", "100", "--eval-images-per-s", "0"],
    ["--images-per-s", "100", "--eval-images-per-s", "-1"],
])
def test_estimate_takes_finite_positive_throughputs(capsys: pytest.CaptureFixture[str],
                                                    extra: list[str]) -> None:
    """F10."""
    line = study_error(capsys, ["estimate", "--profile", "proxy", *extra])
    assert "images_per_s must be a finite number of images per second > 0, got" in line
    assert capsys.readouterr().out == ""


def test_estimate_keeps_the_given_evaluation_throughput(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """F10: ``--eval-images-per-s`` beside a benchmarked training throughput is used, not replaced."""
    seen = {}
    monkeypatch.setattr(study.cli, "bench_throughput", lambda device, pairs: (1000.0, 3000.0, "bench"))
    monkeypatch.setattr(study.cli, "estimate", lambda profile, ips, eval_ips: seen.update(
        ips=ips, eval_ips=eval_ips) or pd.DataFrame({"notebook": ["total"]}))
    assert study.main(["estimate", "--profile", "proxy", "--eval-images-per-s", "50"]) == 0
    assert seen == {"ips": 1000.0, "eval_ips": 50.0}


@pytest.mark.parametrize("argv", [[], ["nosuch"], ["reproduce"], ["reproduce", "--profile"],
                                  ["reproduce", "--profile", "proxy", "--jobs", "x"],
                                  ["reproduce", "--profile", "proxy", "--jobs", "0"],
                                  ["verify", "--profile", "proxy", "--tolerance", "-1"]])
def test_a_usage_error_is_one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """F11: argparse's errors as one line, exit status 2, no usage text."""
    with pytest.raises(SystemExit) as info:
        study.main(argv)
    captured = capsys.readouterr()
    assert info.value.code == 2 and captured.out == ""
    assert len(captured.err.splitlines()) == 1, captured.err
    assert captured.err.startswith("kdlib.study: error: "), captured.err


def test_help_still_prints_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        study.main(["reproduce", "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m kdlib.study reproduce")


def _never(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("a notebook was executed")


@pytest.mark.parametrize("argv", [
    ["refresh", "--keep-runs", "--notebooks", "01_ickd,nosuch"],
    ["reproduce", "--profile", "smoke", "--notebooks", "01_ickd,nosuch"],
    ["reproduce", "--profile", "smoke", "--notebooks", "nosuch", "--executor", "submitit-local"],
    ["reproduce", "--profile", "smoke", "--notebooks", "nosuch", "--records-only"],
])
def test_an_unknown_notebook_is_one_line_before_any_runs(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """F12."""
    monkeypatch.setattr(nbclient, "NotebookClient", _never)
    monkeypatch.setattr(nbformat, "write", _never)
    monkeypatch.setattr(papermill, "execute_notebook", _never)
    line = study_error(capsys, argv)
    assert "unknown notebook 'nosuch'; choose from: 00_teachers, 01_ickd" in line, line


def test_a_profile_is_a_name_never_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """F13: a JSON file elsewhere is no profile (its folders would be written to), staged or not."""
    for name in ("proxy", "proxy_v2"):
        shutil.copy(study.PROFILES_DIR / f"{name}.json", tmp_path / f"{name}.json")
    elsewhere = str(tmp_path / "proxy")
    with pytest.raises(ValueError, match="unknown profile '.*proxy'; choose one of: cifar100, .*not a path"):
        study.load_profile(elsewhere)
    relative = os.path.relpath(tmp_path / "proxy_v2", study.PROFILES_DIR)
    for bad in (elsewhere, relative):
        with pytest.raises(ValueError, match="unknown profile"):
            study.profile_runs(bad)
        for read in (staged.is_staged, staged.load_staged):  # the staged driver reads profiles itself
            with pytest.raises(ValueError, match="not a path"):
                read(bad)
    monkeypatch.setattr(papermill, "execute_notebook", _never)
    monkeypatch.setattr(study.cli, "reproduce_staged", _never)
    for argv in (["params", "--profile", elsewhere, "--notebook", "01_ickd"],
                 ["reproduce", "--profile", elsewhere], ["reproduce", "--profile", relative],
                 ["verify", "--profile", relative],
                 ["estimate", "--profile", elsewhere, "--images-per-s", "1"]):
        line = study_error(capsys, argv)
        assert "(a profile is the name of a file in notebooks/profiles/, not a path)" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proxy.json", "proxy_v2.json"]


@pytest.mark.parametrize("change, message", [
    ({"hardware": "x"}, "hardware must be an object, got 'x'"),
    ({"hardware": {"cpu": "AMD EPYC", "torch_threads": "two"}},
     "hardware.torch_threads must be an integer >= 1 or null, got 'two'"),
])
def test_verify_names_an_invalid_committed_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], change: dict[str, Any],
                                                  message: str) -> None:
    """F14: on a copy of the committed record, in a results folder of the test's own."""
    (run,) = study.profile_runs("proxy", ["kd/default/seed0"])
    committed = json.loads((study.profile_results_dir("proxy") / run.key / "record.json").read_text())
    path = tmp_path / "results" / run.key / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**committed, **change}))
    monkeypatch.setattr(study.cli, "profile_results_dir", lambda profile: tmp_path / "results")
    line = study_error(capsys, ["verify", "--profile", "proxy", "--match", "kd/default/seed0",
                                "--out", str(tmp_path / "verify")])
    assert f"invalid committed record {path}: {message}" in line, line
    assert not (tmp_path / "verify").exists()  # nothing retrained


# --- F16: records ---------------------------------------------------------------------------------
def record(seed: int, **change: Any) -> dict[str, Any]:
    return {"status": "completed", "config_id": "kd-resnet32-resnet8", "method": "kd", "variant": "default",
            "teacher": "resnet32", "student": "resnet8", "dataset": "fashion_mnist", "subset": 10000,
            "recipe_name": "repdistiller", "recipe": {"name": "repdistiller"}, "seed": seed, "epochs": 5,
            "top1_last": 80.0 + seed, "top1_best": 81.0, "top5_last": 99.0,
            "hardware": {"cpu": "test", "torch_threads": 1}, **change}


INVALID_RECORDS = {
    "epochs a string": ({"epochs": "5"}, "epochs must be an integer >= 1, got '5'"),
    "teacher a number": ({"teacher": 7}, "teacher must be a string or null, got 7"),
    "subset a list": ({"subset": [1]}, "subset must be an integer >= 1 or null, got [1]"),
    "recipe a number": ({"recipe_name": None, "recipe": 3},
                        "recipe must be a name or an object with a string 'name', got 3"),
    "torch_threads a word": ({"hardware": {"torch_threads": "two"}},
                             "hardware.torch_threads must be an integer >= 1 or null, got 'two'"),
    "cpu_flags a string": ({"hardware": {"cpu_flags": "avx2"}},
                           "hardware.cpu_flags must be a list of strings or null, got 'avx2'"),
}


def test_records_whose_grouping_fields_have_the_wrong_type_are_named_and_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each would form a group of its own (a wrong n, silently) or break ``summarize``."""
    records = [record(0), record(1), *(record(2 + i, **change) for i, (change, _) in
                                       enumerate(INVALID_RECORDS.values()))]
    for i, content in enumerate(records):
        path = tmp_path / f"run{i}" / "record.json"
        path.parent.mkdir()
        path.write_text(json.dumps(content))
    with caplog.at_level("WARNING", logger="kdlib.results"):
        df = results.load_records(tmp_path)
    assert sorted(df["seed"]) == [0, 1]
    for i, (_, message) in enumerate(INVALID_RECORDS.values(), start=2):
        assert f"skipping invalid record {tmp_path / f'run{i}' / 'record.json'}: {message}" in caplog.text
    (row,) = results.summarize(df).to_dict("records")
    assert row["n"] == 2 and row["seeds"] == [0, 1]
    (group,) = results.comparison_groups(df)
    assert len(group[1]) == 2


# --- F17: recipe_overrides in a notebook's train_options ---------------------------------------
def parameters(tmp_path: Path, overrides: Any) -> study.Parameters:
    return study.check_parameters(
        dataset="fashion_mnist", pairs=["resnet14->resnet8"], epochs=1, recipe="smoke", seeds=[0],
        variants=["ce"], out_dir=tmp_path / "runs", teachers_dir=tmp_path / "teachers", device="cpu",
        train_options={"recipe_overrides": overrides})


@pytest.mark.parametrize("overrides, message", [
    ({"lr": "abc"}, "recipe field 'lr' must be a number, got 'abc'"),
    ({"lr": [0.1]}, r"recipe field 'lr' must be a number, got \[0.1\]"),
    ({"nesterov": "maybe"}, "recipe field 'nesterov' must be true or false, got 'maybe'"),
    ({"milestones": 5}, "recipe field 'milestones' must be a list of integers, got 5"),
    ({"small_lr": "x"}, "recipe field 'small_lr' must be a number or null, got 'x'"),
    ({"lr": -1}, "recipe 'smoke': lr must be a finite number > 0, got -1.0"),
    ({"lrr": 0.1}, r"unknown recipe field 'lrr'; choose one of: name, epochs"),
    ({"epochs": 3}, "epochs 3 and the parameter 'epochs' \\(1\\) both set epochs; set only one"),
    ({"image_size": 64}, "dataset 'fashion_mnist' has a fixed image size 32"),
])
def test_recipe_overrides_are_checked_before_any_run(tmp_path: Path, overrides: dict[str, Any],
                                                     message: str) -> None:
    expected = f"^parameter 'train_options': recipe_overrides: {message}"
    with pytest.raises(study.ParameterError, match=expected):
        parameters(tmp_path, overrides)
    assert not (tmp_path / "runs").exists()


def test_recipe_overrides_as_set_spells_them_reach_every_run(tmp_path: Path) -> None:
    overrides = {"lr": "0.1", "milestones": [1], "nesterov": True, "small_lr": None}
    p = parameters(tmp_path, overrides)
    assert [run.config.recipe_overrides for run in study.plan_runs(p)] == [overrides]
