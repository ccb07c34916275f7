"""When things go wrong with a run's folder and its processes (the second red-team pass; each test fails on
the code before its fix):

- a run killed between the renames of its last checkpoint, then resumed, ends with the last epoch's files;
- ``--resume`` refuses other training data, and a ``last.pt`` whose optimiser state does not fit;
- a folder holding a completed run is never trained over, even without its ``last.pt``;
- a study's record reaches the results folder whole or not at all;
- a launcher's variables that describe no process of a run are one line, never an unlocked run or a
  traceback; a broken tensorboard install is one line before anything loads;
- a failure to clean up (the lock file, the failed record) never hides why the run stopped.

Kills are exact: a ``sitecustomize.py`` on the subprocess's ``PYTHONPATH`` wraps ``os.replace`` and sends
SIGKILL to its own process just before the N-th rename onto a given file name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import write_fashion_mnist, write_teacher
from test_reliability import ENV, REPO, TIMEOUT, kdlib, one_error_line, train_args

from kdlib import runlock
from kdlib.config import TrainConfig, plan
from kdlib.record import record_failures
from kdlib.study import grid

KILL_BEFORE_RENAME = '''
import os, signal
_replace, _seen = os.replace, {}
_name, _count = os.environ["KDLIB_KILL_BEFORE_RENAME"].split(":")
def replace(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) == _name:
        _seen[_name] = _seen.get(_name, 0) + 1
        if _seen[_name] == int(_count):
            os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)
os.replace = replace
'''
THREE_EPOCHS = ("--epochs", "3", "--subset", "40", "--eval-subset", "20", "--batch-size", "10")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The data and teacher that ``train_args`` expects."""
    root = tmp_path_factory.mktemp("reliability_runs")
    write_fashion_mnist(root / "data", train_per_class=26, test_per_class=7)
    return {"root": root, "data": root / "data",
            "teacher": write_teacher(root / "resnet14.pt", arch="resnet14", num_classes=10)}


def kdlib_with(env: dict[str, str], args: list[str]) -> subprocess.CompletedProcess[str]:
    """``python -m kdlib args`` with the tests' environment and ``env`` on top."""
    return subprocess.run([sys.executable, "-m", "kdlib", *args], cwd=REPO, env={**ENV, **env},
                          capture_output=True, text=True, timeout=TIMEOUT)


def killed_before_rename(tmp_path: Path, args: list[str], name: str, count: int) -> None:
    """Run ``python -m kdlib args`` and SIGKILL it just before its ``count``-th rename onto ``name``."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(KILL_BEFORE_RENAME)
    done = kdlib_with({"PYTHONPATH": f"{site}{os.pathsep}{ENV['PYTHONPATH']}",
                       "KDLIB_KILL_BEFORE_RENAME": f"{name}:{count}"}, args)
    assert done.returncode == -9, done.stderr[-2000:]


def _student(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_a_run_killed_before_its_last_model_rename_resumes_to_the_last_epoch(
        tiny: dict[str, Path], tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert kdlib(train_args(tiny, straight, *THREE_EPOCHS)).returncode == 0
    killed_before_rename(tmp_path, train_args(tiny, killed, *THREE_EPOCHS), "model.pt", 3)
    assert torch.load(killed / "last.pt", weights_only=True)["state"]["epoch"] == 3  # written before model.pt
    done = kdlib(train_args(tiny, killed, *THREE_EPOCHS, "--resume"))
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _student(straight / "model.pt"), _student(killed / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the epoch-3 student
    record = json.loads((killed / "record.json").read_text())
    assert record["status"] == "completed" and len(record["history"]) == 3


def test_resume_refuses_other_training_data(tiny: dict[str, Path], tmp_path: Path) -> None:
    out, other = tmp_path / "run", tmp_path / "other_data"
    killed_before_rename(tmp_path, train_args(tiny, out, *THREE_EPOCHS), "last.pt", 2)  # epoch 1 saved
    shutil.copytree(tiny["data"], other)
    images = next(other.rglob("train-images-idx3-ubyte"))
    raw = bytearray(images.read_bytes())
    raw[16:] = bytes(255 - b for b in raw[16:])  # the same file format, other pixels
    images.write_bytes(bytes(raw))
    before = (out / "last.pt").read_bytes()
    args = train_args(tiny, out, *THREE_EPOCHS, "--resume")
    args[args.index("--data-root") + 1] = str(other)
    line = one_error_line(kdlib(args), 2)
    assert "cannot resume: the training data differs from the data" in line and "--data-root" in line, line
    assert (out / "last.pt").read_bytes() == before


def test_a_completed_run_without_last_pt_is_never_trained_over(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert kdlib(train_args(tiny, out, method="ce")).returncode == 0
    (out / "last.pt").unlink()
    kept = {name: (out / name).read_bytes() for name in ("record.json", "model.pt")}
    for extra in ([], ["--resume"]):
        line = one_error_line(kdlib(train_args(tiny, out, *extra, method="kd")), 2)
        assert "holds a run's record.json (completed) but no last.pt to resume from" in line, line
        assert {name: (out / name).read_bytes() for name in kept} == kept


OPTIMIZER_DAMAGE = {
    "empty optimizer state": lambda ckpt: ckpt.update(optimizer={}),
    "momentum of another shape": lambda ckpt: next(
        s for s in ckpt["optimizer"]["state"].values()).update(momentum_buffer=torch.zeros(3)),
}


@pytest.mark.parametrize("kind", list(OPTIMIZER_DAMAGE))
def test_resume_from_a_last_pt_whose_optimizer_does_not_fit_is_one_line(
        tiny: dict[str, Path], tmp_path: Path, kind: str) -> None:
    out = tmp_path / "run"
    killed_before_rename(tmp_path, train_args(tiny, out, *THREE_EPOCHS), "last.pt", 2)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    OPTIMIZER_DAMAGE[kind](ckpt)
    torch.save(ckpt, out / "last.pt")
    before = (out / "last.pt").read_bytes()
    line = one_error_line(kdlib(train_args(tiny, out, *THREE_EPOCHS, "--resume")), 2)
    assert f"cannot resume from {out / 'last.pt'}: " in line and "delete it (and record.json)" in line, line
    assert (out / "last.pt").read_bytes() == before


def test_a_record_reaches_the_results_whole_or_not_at_all(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out, results = tmp_path / "run", tmp_path / "results"
    out.mkdir()
    config = TrainConfig("ce", "resnet8", "fashion_mnist", out, recipe="smoke", precision="fp32")
    run = grid.Run(config, grid.Variant("ce"), grid.Pair("resnet8", "resnet8"), "ce/seed0", "abc")
    (out / "record.json").write_text(json.dumps({"config_id": "abc", "status": "completed", "seed": 0}))

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    outcome = grid.collect(run, results)
    assert outcome.status == "failed" and "No space left on device" in outcome.message
    assert not [p for p in results.rglob("*") if p.is_file()]  # no partial record, no temporary file
    monkeypatch.undo()
    assert grid.collect(run, results).status == "trained"
    assert json.loads((results / "ce/seed0/record.json").read_text())["config_id"] == "abc"


LAUNCHER_ENV = {  # variables: part of the one line
    "RANK without WORLD_SIZE": ({"RANK": "1"}, "RANK=1 in the environment is not below WORLD_SIZE=1"),
    "RANK not a number": ({"RANK": "abc"}, "RANK='abc' in the environment is not an integer >= 0"),
    "WORLD_SIZE without a launcher": ({"WORLD_SIZE": "2"},
                                      "WORLD_SIZE=2 in the environment without MASTER_ADDR and MASTER_PORT"),
}


@pytest.mark.parametrize("kind", list(LAUNCHER_ENV))
def test_launcher_variables_that_describe_no_process_are_one_line(
        tiny: dict[str, Path], tmp_path: Path, kind: str) -> None:
    variables, message = LAUNCHER_ENV[kind]
    done = kdlib_with(variables, train_args(tiny, tmp_path / "run", method="ce"))
    assert message in one_error_line(done, 2)
    assert not (tmp_path / "run").exists()


def test_a_rank_without_a_run_of_several_processes_takes_the_lock(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with runlock.run_lock(tmp_path) as lock:
        assert lock.read_text().strip() == str(os.getpid())


def test_a_broken_tensorboard_is_one_line_before_anything_loads(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import now fails
    config = TrainConfig("ce", "resnet8", "fashion_mnist", tmp_path, recipe="smoke", tensorboard=True)
    with pytest.raises(ValueError, match=r"^--tensorboard: the tensorboard package does not import \("
                                         r"\w*Error: .*\); reinstall it: pip install"):
        plan(config)


def test_a_failure_to_clean_up_never_hides_why_the_run_stopped(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    original_unlink = Path.unlink

    def read_only(path: Path, *args: Any, **kwargs: Any) -> None:
        if path.name in (runlock.LOCK_NAME, ".record.json.tmp"):
            raise PermissionError(1, "Operation not permitted", str(path))
        original_unlink(path, *args, **kwargs)

    def cannot_write(*args: Any) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(Path, "unlink", read_only)
    monkeypatch.setattr("kdlib.files.open", lambda *a, **k: cannot_write(), raising=False)
    record: dict[str, Any] = {"status": "running"}
    with pytest.raises(OSError, match="cannot write 'last.pt'"):
        with runlock.run_lock(tmp_path), record_failures(record, tmp_path):
            raise OSError(1, "cannot write 'last.pt'")
    assert record["status"] == "failed" and "cannot write 'last.pt'" in record["failure_reason"]


def test_runs_side_by_side_never_oversubscribe(caplog: pytest.LogCaptureFixture) -> None:
    assert grid.share_cores(2, None, cores=2) == (2, 1)
    assert grid.share_cores(1, None, cores=16) == (1, 16)
    assert grid.share_cores(4, None, cores=2) == (2, 1)  # more jobs than cores: as many at a time as cores
    assert "4 jobs on 2 cores: running 2 at a time" in caplog.text
    caplog.clear()
    assert grid.share_cores(2, 2, cores=2) == (1, 2)  # two 2-thread runs on 2 cores: one at a time
    assert grid.share_cores(3, 1, cores=4) == (3, 1) and not caplog.records[1:]
    assert grid.share_cores(1, 4, cores=2) == (1, 4)  # one run's threads: kept, with a warning
    assert "4 threads on 2 cores" in caplog.text


def test_a_figure_whose_run_failed_says_why(tmp_path: Path) -> None:
    """Two notebooks racing on one grid: the loser's run is in use elsewhere; its figure names that failure,
    not a missing baseline."""
    from kdlib.study.outcomes import trained

    config = TrainConfig("ce", "resnet8", "fashion_mnist", tmp_path, recipe="smoke", precision="fp32")
    run = grid.Run(config, grid.Variant("ce"), grid.Pair("resnet8", "resnet8"), "ce/seed0", "abc")
    busy = grid.Outcome(run, "failed", None, tmp_path / "record.json", 0.0,
                        "--out '…' is in use by another kdlib run (pid 7)")
    with pytest.raises(LookupError, match=r"the run of ce/default did not complete \(failed: --out '…' is in "
                                          r"use by another kdlib run \(pid 7\)\)"):
        trained([busy], "ce")
    with pytest.raises(LookupError, match="no completed run of kd/default among this notebook's runs"):
        trained([busy], "kd")


def test_a_validation_split_larger_than_the_training_set_is_one_line(tiny: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    done = kdlib(train_args(tiny, tmp_path / "run", "--val-subset", "260", method="ce"))  # 26 x 10 images
    assert ("fashion_mnist: val_subset 260 leaves none of the 260 training images to train on; pass a "
            "smaller --val-subset") in one_error_line(done, 2)
