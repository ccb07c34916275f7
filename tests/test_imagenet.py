"""ImageNet: the ImageFolder dataset, its recipes, pretrained students, torchvision weights, fetch-teachers.

Everything runs on a generated ``imagenet/{train,val}/<class>/*.png`` tree of 4 classes at 64×64, with the
recipes' ``image_size`` set to 64 (the real runs crop 224).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import write_cifar100, write_image_folder, write_teacher, write_torchvision_weights
from PIL import Image
from torchvision import transforms as T

from kdlib import train, weights
from kdlib.cli import main
from kdlib.data import DataError, get_dataset_spec, load_data, resolve_dataset_spec
from kdlib.recipes import get_recipe
from kdlib.record import config_id_of, new_record
from kdlib.train import TrainConfig

ICKD_IMAGENET = {  # ICKD's ImageNet loss: 0.5·CE + 0.5·KD(T=1) + 500·ICKD (imagenet variant)
    "ce_weight": "0.5", "kd_weight": "0.5", "T": "1", "ickd_weight": "500", "variant": "imagenet"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imagenet")
    # val/ lacks class 2: its labels must still be the training set's
    write_image_folder(root / "data", num_classes=4, train_per_class=4, val_per_class=[3, 2, 0, 4])
    return {
        "data": root / "data",
        "teacher": write_torchvision_weights(root / "resnet18_teacher.pth", num_classes=4, seed=1),
        "student": write_torchvision_weights(root / "resnet18_student.pth", num_classes=4, seed=2),
    }


def imagenet_config(tiny: dict[str, Path], out: Path, **kw: Any) -> TrainConfig:
    defaults: dict[str, Any] = dict(
        method="ickd",
        student="resnet18",
        teacher="resnet18",
        teacher_ckpt=tiny["teacher"],
        student_weights=tiny["student"],
        dataset="imagenet",
        data_root=tiny["data"],
        recipe="ickd_imagenet",
        variant=dict(ICKD_IMAGENET),
        recipe_overrides={"image_size": "64"},
        epochs=1,
        batch_size=8,
        device="cpu",
        workers=0,
        progress=False,
        out=out,
    )
    defaults.update(kw)
    return TrainConfig(**defaults)


def test_imagenet_folder_loader(tiny: dict[str, Path]) -> None:
    spec = resolve_dataset_spec("imagenet", tiny["data"], image_size=64)
    assert (spec.num_classes, spec.input_shape) == (4, (3, 64, 64))  # classes: the folders of train/
    assert get_dataset_spec("imagenet").input_shape == (3, 224, 224)  # the default crop
    d = load_data("imagenet", tiny["data"], batch_size=8, workers=0, image_size=64)
    assert (d.train_size, d.test_size, d.images_per_epoch) == (16, 9, 16)
    x, y = next(iter(d.train))
    assert x.shape == (8, 3, 64, 64) and y.shape == (8,)
    # val/ has no folder for class 2, yet its labels are train/'s: n00000003 is 3, not 2
    raw = d.test.dataset.base
    assert raw.classes == ["n00000000", "n00000001", "n00000002", "n00000003"]
    assert sorted(set(raw.targets)) == [0, 1, 3]
    assert all(Path(path).parent.name == f"n{label:08d}" for path, label in raw.samples)
    # evaluation: resize round(64·256/224) = 73, centre crop 64, normalise (torchvision's reference)
    path, label = raw.samples[0]
    expected = T.Compose([T.Resize(73), T.CenterCrop(64), T.ToTensor(), T.Normalize(d.spec.mean, d.spec.std)])
    x0, y0 = d.test.dataset[0]
    torch.testing.assert_close(x0, expected(Image.open(path).convert("RGB")))
    assert y0 == label
    # training: RandomResizedCrop + flip under the (epoch, image) seed: the same for the same epoch
    d.set_epoch(5)
    a = d.train.dataset[3][0]
    d.set_epoch(5)
    assert torch.equal(a, d.train.dataset[3][0])
    d.set_epoch(6)
    assert not torch.equal(a, d.train.dataset[3][0])


def test_missing_imagenet_says_how_to_arrange_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"imagenet/train/<class>/<image> and imagenet/val/<class>/<image>"):
        load_data("imagenet", tmp_path, batch_size=8, workers=0)


def test_image_size_applies_to_imagenet_only(tiny: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'cifar100' has a fixed image size 32.*applies to: imagenet"):
        train.plan(TrainConfig("ce", "resnet8", "cifar100", tmp_path, recipe_overrides={"image_size": "64"}))
    with pytest.raises(ValueError, match="image_size must be an integer >= 8"):
        get_recipe("imagenet", image_size="4")


def test_imagenet_recipes() -> None:
    r = get_recipe("imagenet", "resnet18")
    assert (r.epochs, r.batch_size, r.optimizer, r.lr, r.momentum, r.weight_decay) == (100, 256, "sgd", 0.1,
                                                                                       0.9, 1e-4)
    assert (r.milestones, r.gamma, r.image_size) == ((30, 60, 90), 0.1, None)
    i = get_recipe("ickd_imagenet", "resnet18")
    assert (i.epochs, i.batch_size, i.optimizer, i.lr, i.weight_decay) == (100, 256, "adamw", 2e-4, 5e-4)
    assert (i.milestones, i.gamma) == ((30, 60, 90), 0.1)
    with pytest.raises(ValueError, match="invalid optimizer 'adam'; choose one of: sgd, adamw"):
        get_recipe("imagenet", optimizer="adam")


def test_ickd_imagenet_run_from_pretrained_weights(tiny: dict[str, Path], tmp_path: Path) -> None:
    config = imagenet_config(tiny, tmp_path)
    record = train.train(config)
    assert record["status"] == "completed" and record["dataset"] == "imagenet"
    assert record["config_id"] == config_id_of(config)  # what the study plans with
    # the resolved ICKD ImageNet configuration and recipe are in the record
    config = record["method_config"]
    assert (config["ce_weight"], config["kd_weight"], config["T"]) == (0.5, 0.5, 1.0)
    assert (config["ickd_weight"], config["variant"]) == (500.0, "imagenet")
    assert (record["recipe"]["optimizer"], record["recipe"]["lr"], record["recipe"]["image_size"]) == (
        "adamw", 2e-4, 64)
    assert record["student_weights"] == str(tiny["student"]) and len(record["student_weights_sha256"]) == 64
    assert record["teacher"] == "resnet18" and record["teacher_top1"] is not None
    assert record["test_images"] == 9 and record["distributed"]["world_size"] == 1
    entry = record["history"][0]
    assert set(entry["losses"]) == {"ce", "kd", "ickd"}
    (times,) = record["epoch_times"]  # where the epoch's time went
    assert times["epoch"] == 1 and times["data_s"] >= 0 and times["compute_s"] > 0
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert "exp_avg" in next(iter(last["optimizer"]["state"].values()))  # AdamW
    # the student started from the weights file: two AdamW steps of lr 2e-4 move each weight by < 1e-3
    start = torch.load(tiny["student"], weights_only=True)
    trained = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    torch.testing.assert_close(trained["conv1.weight"], start["conv1.weight"], atol=1e-3, rtol=0)
    assert not torch.equal(trained["conv1.weight"], start["conv1.weight"])
    # from scratch is another configuration
    scratch = imagenet_config(tiny, tmp_path / "scratch", student_weights=None)
    assert config_id_of(scratch) != config_id_of(imagenet_config(tiny, tmp_path / "x"))


def test_new_options_leave_earlier_config_ids_alone(tmp_path: Path) -> None:
    """Runs that use none of the options added for ImageNet keep the config_id they had before (fp32 runs, as
    every run was then on a CPU)."""
    p = train.plan(TrainConfig("ce", "resnet8", "fashion_mnist", tmp_path, recipe="smoke", epochs=1,
                               precision="fp32"))
    earlier_identity = {
        "method": "ce",
        "method_config": dataclasses.asdict(p.method_config),
        "teacher": None,
        "teacher_ckpt_sha256": None,
        "student": "resnet8",
        "dataset": "fashion_mnist",
        "subset": None,
        "eval_subset": None,
        "recipe": {k: v for k, v in p.recipe.as_dict().items() if k not in ("optimizer", "image_size")},
        "seed": 0,
        "precision": "fp32",
    }
    # the hash as record version 1 computed it: canonical JSON of the identity (tuples as lists), SHA-256
    text = json.dumps(earlier_identity, sort_keys=True, separators=(",", ":"))
    earlier_id = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert new_record(p, None, None)["config_id"] == earlier_id
    frozen = train.plan(TrainConfig("ce", "resnet8", "fashion_mnist", tmp_path, recipe="smoke", epochs=1,
                                    precision="fp32", bn="frozen"))
    assert new_record(frozen, None, None)["config_id"] != earlier_id


def test_torchvision_weights_are_validated_and_fail_offline_in_one_line(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="--teacher-ckpt torchvision needs --teacher, one of: resnet18"):
        train.plan(imagenet_config(tiny, tmp_path, teacher=None, teacher_ckpt="torchvision"))
    with pytest.raises(ValueError, match="torchvision publishes no weights for 'resnet8'"):
        train.plan(imagenet_config(tiny, tmp_path, student="resnet8", student_weights="torchvision"))
    with pytest.raises(ValueError, match="student weights '.*nope.pth' do not exist"):
        train.plan(imagenet_config(tiny, tmp_path, student_weights=tmp_path / "nope.pth"))

    def offline(*args: Any, **kwargs: Any) -> None:
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(weights.WeightsError, match=r"download torchvision's ResNet18_Weights.IMAGENET1K_V1"):
        weights.torchvision_weights_file("resnet18")
    argv = ["train", "--method", "ce", "--student", "resnet18", "--student-weights", "torchvision",
            "--dataset", "imagenet", "--data-root", str(tiny["data"]), "--recipe", "imagenet", "--set",
            "image_size=64", "--batch-size", "8", "--epochs", "1", "--workers", "0", "--device", "cpu",
            "--no-progress", "--out", str(tmp_path / "out")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "could not download torchvision's" in _one_stderr_line(capsys)
    # a file already in the cache is used without the network
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(tiny["student"].read_bytes())
    assert weights.resolve_weights("torchvision", "resnet18") == (cached,
                                                                  "torchvision:ResNet18_Weights.IMAGENET1K_V1")


def _one_stderr_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_fetch_teachers_offline_fails_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args: Any, **kwargs: Any) -> None:
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    with monkeypatch.context() as m:  # the default URL, no network
        m.setattr(weights.urllib.request, "urlopen", offline)
        with pytest.raises(SystemExit) as info:
            main(["fetch-teachers", "--dest", str(tmp_path / "teachers")])
    line = _one_stderr_line(capsys)
    assert info.value.code == 2 and line.startswith("kdlib: error: could not download ")
    assert weights.MDISTILLER_TEACHERS_URL in line and "--url" in line
    assert not list((tmp_path / "teachers").glob("*"))  # no partial download left behind
    # and a real failing connection, in a fresh interpreter: one line on stderr, no traceback
    done = subprocess.run(
        [sys.executable, "-m", "kdlib", "fetch-teachers", "--url", "http://127.0.0.1:9/cifar_teachers.tar",
         "--dest", str(tmp_path / "teachers")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "could not download" in done.stderr


def test_fetch_teachers_evaluates_and_records_the_advertised_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_cifar100(tmp_path / "data", train_per_class=1, test_per_class=1)
    model = write_teacher(tmp_path / "t" / "model.pt", arch="resnet56", num_classes=100)
    state = torch.load(model, weights_only=True)["model"]
    buffer = io.BytesIO()
    torch.save({"model": state, "epoch": 240, "best_acc": torch.tensor(72.3)}, buffer)  # RepDistiller's
    archive = tmp_path / "cifar_teachers.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth")
        info.size = len(buffer.getvalue())
        tar.addfile(info, io.BytesIO(buffer.getvalue()))
    dest = tmp_path / "teachers" / "cifar100"
    assert main(["fetch-teachers", "--url", archive.as_uri(), "--dest", str(dest), "--data-root",
                 str(tmp_path / "data"), "--device", "cpu", "--workers", "0", "--no-download"]) == 0
    assert (dest / "resnet56_vanilla" / "ckpt_epoch_240.pth").is_file()  # where kdlib.study looks
    summary = json.loads((dest / "teachers.json").read_text())
    (row,) = summary["teachers"]
    assert row["arch"] == "resnet56" and row["test_images"] == 100 and 0 <= row["top1"] <= 100
    assert row["advertised_top1"] == 72.34 and "RepDistiller" in row["advertised_source"]
    assert row["top1_minus_advertised"] == pytest.approx(row["top1"] - 72.34)
    assert "resnet56" in capsys.readouterr().out


def test_config_id_of_resolves_torchvision_weights(tiny: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``torchvision`` weights (teacher and student) enter ``config_id`` as the file they resolve to, as in
    the run's own record: the study plans with the identity the trainer writes."""
    files = {"resnet18": tiny["student"]}
    monkeypatch.setattr(weights, "torchvision_weights_file", lambda arch: files[arch])
    config = imagenet_config(tiny, tmp_path, teacher_ckpt="torchvision", student_weights="torchvision")
    record = train.train(config)
    assert record["student_weights"] == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert record["config_id"] == config_id_of(config)
    files["resnet18"] = tiny["teacher"]  # other weights behind the same name: another configuration
    assert config_id_of(config) != record["config_id"]
