"""The trainer on tiny Fashion-MNIST: every method, records, checkpoints, resume, failures (kdlib.train)."""

from __future__ import annotations

import inspect
import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import write_fashion_mnist, write_teacher

from kdlib import data, loop, train
from kdlib.methods import available_methods, get_method
from kdlib.models import load_teacher
from kdlib.record import TrainingFailed
from kdlib.train import ResumeError, TrainConfig

RECORD_KEYS = {
    "status",
    "method",
    "variant",
    "method_config",
    "teacher",
    "student",
    "dataset",
    "subset",
    "recipe",
    "seed",
    "epochs",
    "teacher_top1",
    "teacher_ckpt_sha256",
    "history",
    "top1_last",
    "top1_best",
    "top5_last",
    "wall_time_s",
    "images_per_s",
    "device",
    "torch_version",
    "git_commit",
    "git_dirty",
    "created_at",
    "config_id",
    "best_epoch",
    "hardware",
    "failure_reason",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    write_fashion_mnist(root / "data", train_per_class=10, test_per_class=6)
    teacher = write_teacher(root / "teacher" / "model.pt", arch="resnet14", num_classes=10)
    return {"data": root / "data", "teacher": teacher}


def smoke_config(tiny: dict[str, Path], out: Path, method: str, **kw: Any) -> TrainConfig:
    needs_teacher = get_method(method).needs_teacher
    defaults: dict[str, Any] = dict(
        method=method,
        student="resnet8",
        dataset="fashion_mnist",
        out=out,
        recipe="smoke",
        epochs=1,
        subset=64,
        eval_subset=40,
        batch_size=32,
        data_root=tiny["data"],
        workers=0,
        download=False,
        teacher_ckpt=tiny["teacher"] if needs_teacher else None,
        progress=False,
    )
    defaults.update(kw)
    return TrainConfig(**defaults)


@pytest.mark.parametrize("method", available_methods())
def test_smoke_run_of_every_method(tiny: dict[str, Path], tmp_path: Path, method: str) -> None:
    record = train.train(smoke_config(tiny, tmp_path, method))
    assert record["status"] == "completed"
    assert RECORD_KEYS <= set(record)
    assert json.loads((tmp_path / "record.json").read_text()) == json.loads(json.dumps(record))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "model.pt", "record.json"]
    assert [h["epoch"] for h in record["history"]] == [1]
    entry = record["history"][0]
    assert set(entry) >= {"losses", "lr", "top1", "top5"} and entry["losses"]
    assert 0 <= record["top1_last"] <= 100 and record["top1_best"] == record["top1_last"]
    assert record["best_epoch"] == 1 and record["variant"] == "default"
    assert record["recipe"]["name"] == "smoke" and record["recipe"]["epochs"] == 1
    assert record["device"] == "cpu" and record["images_per_s"] > 0
    if get_method(method).needs_teacher:
        assert record["teacher"] == "resnet14" and record["teacher_top1"] is not None
        assert len(record["teacher_ckpt_sha256"]) == 64
    else:
        assert record["teacher"] is None and record["teacher_top1"] is None
    if get_method(method).has_pretrain:
        assert [h["epoch"] for h in record["pretrain_history"]] == [1]
    if method == "cd":  # EDT scaled to the 1-epoch schedule (total_epochs set): past the CE/GKD warm-up
        assert {"ce", "gkd", "cd"} <= set(entry["losses"])
    # checkpoints: last.pt loads with weights_only, model.pt is a RepDistiller-compatible teacher file
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["state"]["epoch"] == 1 and isinstance(last["rng"]["numpy"]["keys"], torch.Tensor)
    student = load_teacher(tmp_path / "model.pt")
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert (saved["arch"], saved["num_classes"]) == ("resnet8", 10) and set(saved) == {
        "model",
        "arch",
        "num_classes",
    }
    assert student.fc.out_features == 10 if hasattr(student, "fc") else True


class Interrupt(Exception):
    pass


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, function: str, epoch: int) -> None:
    original = getattr(train, function)
    signature = inspect.signature(original)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if signature.bind(*args, **kwargs).arguments["epoch"] == epoch:
            raise Interrupt(f"killed before {function} epoch {epoch}")
        return original(*args, **kwargs)

    monkeypatch.setattr(train, function, wrapped)


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    skip = {"wall_time_s", "images_per_s", "created_at", "updated_at", "hardware", "teacher_ckpt", "resumes",
            "epoch_times"}
    return {k: v for k, v in record.items() if k not in skip}


#: The paths a run can take, as a test names them: the reference path in fp32 (what ``auto`` gives on a CPU
#: without bf16 units), and the fast path in bf16 (what it gives on a CPU with them, and on CUDA).
PATHS = {"reference": {"precision": "fp32", "fast": False}, "fast-bf16": {"precision": "bf16", "fast": True}}
#: The function a path's epoch runs in (where the tests interrupt it).
EPOCH_FUNCTION = {"reference": "train_one_epoch", "fast-bf16": "train_one_epoch_fast"}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(
    ("method", "pretrain", "overrides"),
    [("kd", False, {}), ("cd", False, {}), ("iekd", True, {"pretrain_epochs": 2})],
)
def test_resume_matches_an_uninterrupted_run(
    tiny: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    pretrain: bool,
    overrides: dict[str, Any],
    path: str,
) -> None:
    """Killed before an epoch, then resumed: the record and the weights are those of the uninterrupted run,
    bit for bit, on either path (on one machine: another CPU type may round otherwise)."""
    kw = dict(epochs=2, recipe_overrides=overrides, **PATHS[path])
    straight = train.train(smoke_config(tiny, tmp_path / "straight", method, **kw))
    assert straight["speed"]["path"] == ("fast" if PATHS[path]["fast"] else "dataloader")

    with monkeypatch.context() as m:
        _interrupt_at(m, "pretrain_one_epoch" if pretrain else EPOCH_FUNCTION[path], 2)
        with pytest.raises(Interrupt):
            train.train(smoke_config(tiny, tmp_path / "resumed", method, **kw))
    killed = json.loads((tmp_path / "resumed" / "record.json").read_text())
    assert killed["status"] == "failed" and "killed before" in killed["failure_reason"]
    # whatever ran in this process before must not matter
    torch.manual_seed(12345)
    np.random.seed(1)
    random.seed(2)
    resumed = train.train(smoke_config(tiny, tmp_path / "resumed", method, resume=True, **kw))

    assert resumed["status"] == "completed" and resumed["failure_reason"] is None
    assert [r["after_epoch"] for r in resumed["resumes"]] == [0 if pretrain else 1]
    assert _comparable(resumed) == _comparable(straight)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["distiller"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["distiller"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("path", list(PATHS))
def test_evaluating_fewer_epochs_trains_the_same_run(tiny: dict[str, Path], tmp_path: Path,
                                                     path: str) -> None:
    """``eval_every`` skips the evaluation of some epochs and nothing else: the weights, the last epoch's
    numbers and the identity are those of a run evaluated every epoch (on one machine); the record says which
    epochs were evaluated, and its best epoch is the best of those."""
    kw = dict(epochs=3, val_subset=20, **PATHS[path])
    every = train.train(smoke_config(tiny, tmp_path / "every", "kd", **kw))
    fewer = train.train(smoke_config(tiny, tmp_path / "fewer", "kd", eval_every=2, **kw))
    assert [h["top1"] is None for h in fewer["history"]] == [True, False, False]  # epochs 2 and 3 (last)
    assert fewer["eval_every"] == 2 and every["eval_every"] is None
    assert fewer["config_id"] == every["config_id"]
    for key in ("top1_last", "top5_last", "val_top1_last"):
        assert fewer[key] == every[key]
    evaluated = [h for h in every["history"] if h["epoch"] > 1]
    assert fewer["top1_best"] == max(h["top1"] for h in evaluated) and fewer["best_epoch"] > 1
    assert [h["losses"] for h in fewer["history"]] == [h["losses"] for h in every["history"]]
    a = torch.load(tmp_path / "every" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "fewer" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("path", list(PATHS))
def test_nonfinite_loss_stops_the_run(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Both paths stop with the same message: the term, the epoch and step, every term of the step before
    (the fast path finds it when it reads the epoch's steps, at the end of the epoch)."""
    kd = get_method("kd")
    original = kd.forward
    calls = {"n": 0}

    def forward(self: Any, x: torch.Tensor, y: torch.Tensor) -> Any:
        logits, losses = original(self, x, y)
        if self.epoch == 2:  # set by the trainer's set_epoch (read here only because this runs eagerly)
            calls["n"] += 1
            if calls["n"] == 2:
                losses["kd"] = losses["kd"] * float("nan")
        return logits, losses

    monkeypatch.setattr(kd, "forward", forward)
    with pytest.raises(TrainingFailed, match=r"non-finite loss term 'kd' = nan at epoch 2, step 1") as info:
        train.train(smoke_config(tiny, tmp_path, "kd", epochs=2, **PATHS[path]))
    on_disk = json.loads((tmp_path / "record.json").read_text())
    assert on_disk["status"] == info.value.record["status"] == "diverged"
    assert "'kd'" in on_disk["failure_reason"] and len(on_disk["history"]) == 1
    # the diagnosis: every term of the step before, finite
    assert re.search(r"step 1 \(step 0: ce=\d\S*, kd=\d\S*\)$", on_disk["failure_reason"]), on_disk
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["state"]["epoch"] == 1  # the last good checkpoint is kept


def test_resume_refuses_another_configuration(tiny: dict[str, Path], tmp_path: Path) -> None:
    train.train(smoke_config(tiny, tmp_path, "ce"))
    with pytest.raises(ResumeError, match="already holds a run"):
        train.train(smoke_config(tiny, tmp_path, "ce"))
    with pytest.raises(ResumeError, match="belongs to another configuration"):
        train.train(smoke_config(tiny, tmp_path, "ce", seed=1, resume=True))
    done = train.train(smoke_config(tiny, tmp_path, "ce", resume=True))  # nothing left to do
    assert done["status"] == "completed" and len(done["history"]) == 1


def test_config_id_ignores_paths_and_time(tiny: dict[str, Path], tmp_path: Path) -> None:
    a = train.train(smoke_config(tiny, tmp_path / "a", "ce"))
    b = train.train(smoke_config(tiny, tmp_path / "b", "ce", workers=1))
    c = train.plan(smoke_config(tiny, tmp_path / "c", "ce", variant={"ce_weight": "0.5"}))
    assert a["config_id"] == b["config_id"]
    assert a["history"] == b["history"]  # workers do not change the result either
    assert c.method_config.ce_weight == 0.5


def test_plan_validates_without_loading(tiny: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown student 'resnet9'"):
        train.plan(smoke_config(tiny, tmp_path, "ce", student="resnet9"))
    with pytest.raises(ValueError, match="needs a teacher"):
        train.plan(smoke_config(tiny, tmp_path, "kd", teacher_ckpt=None))
    with pytest.raises(ValueError, match="does not exist"):
        train.plan(smoke_config(tiny, tmp_path, "kd", teacher_ckpt=tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="unknown option 'beta'"):
        train.plan(smoke_config(tiny, tmp_path, "kd", variant={"beta": "1"}))
    with pytest.raises(ValueError, match="unknown recipe field"):
        train.plan(smoke_config(tiny, tmp_path, "ce", recipe_overrides={"nope": "1"}))
    assert not (tmp_path / "record.json").exists()
    assert TrainConfig("ce", "resnet8", "cifar100", tmp_path).workers == 2


def test_rng_state_round_trip() -> None:
    state = loop.rng_state()
    draws = (random.random(), np.random.rand(), torch.rand(1))
    loop.seed_everything(99)
    loop.set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(1))
    assert draws[:2] == again[:2] and torch.equal(draws[2], again[2])


def test_evaluate_checkpoint(tiny: dict[str, Path]) -> None:
    result = loop.evaluate_checkpoint(
        None,
        tiny["teacher"],
        "fashion_mnist",
        data_root=tiny["data"],
        eval_subset=20,
        workers=0,
        download=False,
    )
    assert (
        result["model"] == "resnet14" and result["n"] == 20 and 0 <= result["top1"] <= result["top5"] <= 100
    )


def test_evaluate_checkpoint_resolves_precision_as_training_does(tiny: dict[str, Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: bf16 autocast where the device computes bf16 natively (faked here); fp32 otherwise, or asked."""
    from kdlib import fast

    real, made = loop.Runtime, []

    def recording(*args: Any, **kwargs: Any) -> Any:
        made.append(kwargs["amp"])
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "Runtime", recording)
    for native, precision in ((True, "auto"), (True, "fp32"), (False, "auto")):
        monkeypatch.setattr(fast, "bf16_native", lambda _device, native=native: native)
        loop.evaluate_checkpoint(None, tiny["teacher"], "fashion_mnist", data_root=tiny["data"],
                                 eval_subset=20, workers=0, download=False, precision=precision)
    assert made == [True, False, False]


@pytest.mark.skipif(
    not (data.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_smoke_run_on_the_real_fashion_mnist(tiny: dict[str, Path], tmp_path: Path) -> None:
    record = train.train(
        smoke_config(tiny, tmp_path / "run", "kd", data_root=tmp_path / "data", subset=128, eval_subset=64)
    )
    assert record["status"] == "completed" and record["subset"] == 128


def test_finite_check_names_the_first_bad_step_when_checking_in_batches() -> None:
    check = loop.FiniteCheck("epoch 3", every=3)
    check(0, {"ce": torch.tensor(1.0), "cd": torch.tensor(2.0)})
    check(1, {"ce": torch.tensor(1.0), "cd": torch.tensor(float("inf"))})
    with pytest.raises(loop.NonFiniteLoss, match=r"'cd' = inf at epoch 3, step 1"):
        check(2, {"ce": torch.tensor(float("nan")), "cd": torch.tensor(1.0)})


def test_repdistiller_format_teacher(tiny: dict[str, Path], tmp_path: Path) -> None:
    state = torch.load(tiny["teacher"], weights_only=True)["model"]
    torch.save({"model": state, "epoch": 240, "best_acc": 0.0}, tmp_path / "resnet14_vanilla.pth")
    cfg = smoke_config(
        tiny, tmp_path / "run", "kd", teacher="resnet14", teacher_ckpt=tmp_path / "resnet14_vanilla.pth"
    )
    record = train.train(cfg)
    assert record["teacher"] == "resnet14" and record["status"] == "completed"
