"""Several processes (kdlib.distributed): sharding, and real 2-process ``torchrun`` runs on CPU (gloo).

The comparison of a 2-process run with a 1-process run uses ``bn="frozen"`` (BatchNorm in eval mode: running
statistics, not updated): then each image's forward does not depend on the other images of the batch, so
splitting the global batch over processes changes nothing but the order of floating-point sums, and the two
runs must agree to float tolerance. With the default per-process batch statistics they differ by design
(each process normalises its 4 images, the 1-process run all 8), as in any plain DDP run; SyncBatchNorm, which
would remove the difference, needs CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import write_image_folder, write_torchvision_weights

from kdlib import train
from kdlib.data import EpochSampler, load_data
from kdlib.train import TrainConfig

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "GROUP_RANK", "TORCHELASTIC_RUN_ID")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    # 9 validation images: the two processes evaluate 5 and 4 of them
    write_image_folder(root / "data", num_classes=4, train_per_class=4, val_per_class=[3, 2, 2, 2])
    return {
        "data": root / "data",
        "teacher": write_torchvision_weights(root / "teacher.pth", num_classes=4, seed=1),
        "student": write_torchvision_weights(root / "student.pth", num_classes=4, seed=2),
    }


#: The run compared across process counts: ICKD's ImageNet configuration (AdamW, pretrained student, the
#: imagenet loss variant whose 1/B² must use the global batch), one step of a global batch of 8.
ICKD_RUN = {
    "method": "ickd", "student": "resnet18", "teacher": "resnet18", "dataset": "imagenet",
    "recipe": "ickd_imagenet", "epochs": 1, "batch_size": 8, "subset": 8, "bn": "frozen",
    "variant": {"ce_weight": "0.5", "kd_weight": "0.5", "T": "1", "ickd_weight": "500",
                "variant": "imagenet"},
}


def _config(tiny: dict[str, Path], out: Path, run: dict[str, Any], **kw: Any) -> TrainConfig:
    teacher = {"teacher_ckpt": tiny["teacher"]} if run.get("teacher") else {}
    return TrainConfig(out=out, data_root=tiny["data"], student_weights=tiny["student"], device="cpu",
                       workers=0, progress=False, recipe_overrides={"image_size": "64"}, **teacher,
                       **{"precision": "fp32", **run, **kw})


def _argv(config: TrainConfig) -> list[str]:
    """The command line of ``config`` (the fields the tests set)."""
    argv = ["train", "--method", config.method, "--student", config.student, "--dataset", config.dataset,
            "--recipe", config.recipe, "--epochs", str(config.epochs), "--batch-size", str(config.batch_size),
            "--data-root", str(config.data_root), "--student-weights", str(config.student_weights),
            "--bn", config.bn, "--device", "cpu", "--precision", config.precision, "--workers", "0",
            "--no-progress", "--out", str(config.out)]
    if config.teacher:
        argv += ["--teacher", config.teacher, "--teacher-ckpt", str(config.teacher_ckpt)]
    if config.subset:
        argv += ["--subset", str(config.subset)]
    if config.variant:
        argv += ["--variant", ",".join(f"{k}={v}" for k, v in config.variant.items())]
    argv += [f"--set={k}={v}" for k, v in config.recipe_overrides.items()]
    return argv + (["--resume"] if config.resume else [])


def torchrun(config: TrainConfig, processes: int = 2) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --standalone`` (a free local port, no network) ``-m kdlib train``."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(processes), "-m", "kdlib", *_argv(config)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def _assert_same_run(a: dict[str, Any], b: dict[str, Any], tol: float) -> None:
    assert a["config_id"] == b["config_id"] and a["status"] == b["status"] == "completed"
    assert (a["teacher_top1"], a["teacher_top5"]) == (b["teacher_top1"], b["teacher_top5"])
    assert len(a["history"]) == len(b["history"])
    for x, y in zip(a["history"], b["history"], strict=True):
        assert (x["epoch"], x["lr"], x["top1"], x["top5"]) == (y["epoch"], y["lr"], y["top1"], y["top5"])
        assert x["losses"].keys() == y["losses"].keys()
        for name in x["losses"]:
            assert x["losses"][name] == pytest.approx(y["losses"][name], rel=tol, abs=tol)


# --- sharding (no processes needed) ---------------------------------------------------------------
@pytest.mark.parametrize("world_size", [2, 4])
def test_each_process_gets_its_share_of_the_same_global_batches(world_size: int) -> None:
    n, batch = 22, 8
    single = list(EpochSampler(n, seed=3))
    shares = [list(EpochSampler(n, seed=3, rank=r, world_size=world_size, batch_size=batch))
              for r in range(world_size)]
    local = batch // world_size
    assert all(len(share) == 16 // world_size for share in shares)  # the partial 3rd global batch is dropped
    for k in range(2):
        union = [i for share in shares for i in share[k * local:(k + 1) * local]]
        assert sorted(union) == sorted(single[k * batch:(k + 1) * batch])
    assert EpochSampler(n, seed=3, rank=0, world_size=world_size, batch_size=batch).images_per_epoch == 16
    assert EpochSampler(n, seed=3).images_per_epoch == n and len(single) == n  # one process keeps all


def test_each_test_image_in_exactly_one_share(tiny: dict[str, Path]) -> None:
    shares = [load_data("imagenet", tiny["data"], batch_size=8, workers=0, image_size=64, rank=r,
                        world_size=2) for r in range(2)]
    indices = [list(d.test.dataset.indices) for d in shares]
    assert sorted(indices[0] + indices[1]) == list(range(9)) and not set(indices[0]) & set(indices[1])
    assert [len(i) for i in indices] == [5, 4] and shares[1].test_size == 9  # no padding
    assert shares[0].train.batch_size == 4 and shares[0].images_per_epoch == 16


def test_plan_checks_the_process_count(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "3"}.items():
        monkeypatch.setenv(name, value)  # a launcher's variables (nothing connects: plan() only checks them)
    with pytest.raises(ValueError, match="global batch size 8 is not divisible by the 3 processes"):
        train.plan(_config(tiny, tmp_path, ICKD_RUN))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert train.plan(_config(tiny, tmp_path, ICKD_RUN)).world_size == 2
    with pytest.raises(ValueError, match="fast path .* runs in one process, not 2"):
        train.plan(_config(tiny, tmp_path, ICKD_RUN, fast=True))
    # ImageNet never defaults to the fast path (it does not fit on the device): bf16 splits as fp32 does
    assert train.plan(_config(tiny, tmp_path, {**ICKD_RUN, "precision": "bf16"})).fast is False
    with pytest.raises(ValueError, match="bn 'sync' .* needs CUDA"):
        train.plan(_config(tiny, tmp_path, {**ICKD_RUN, "bn": "sync"}))


# --- torchrun -------------------------------------------------------------------------------------
def test_two_processes_match_one_process(tiny: dict[str, Path], tmp_path: Path) -> None:
    one = train.train(_config(tiny, tmp_path / "one", ICKD_RUN))
    torchrun(_config(tiny, tmp_path / "two", ICKD_RUN))
    out = tmp_path / "two"
    assert sorted(p.name for p in out.iterdir()) == ["last.pt", "model.pt", "record.json"]  # rank 0 only
    two = json.loads((out / "record.json").read_text())
    assert two["distributed"] == {"world_size": 2, "backend": "gloo", "per_process_batch": 4,
                                  "global_batch": 8, "images_per_epoch": 8, "bn": "frozen"}
    assert one["distributed"]["world_size"] == 1
    # every validation image evaluated once: 5 + 4 summed, and the same accuracy as one process
    assert one["test_images"] == two["test_images"] == 9
    _assert_same_run(one, two, tol=1e-5)
    a, b = _weights(tmp_path / "one" / "model.pt"), _weights(out / "model.pt")
    start = torch.load(tiny["student"], weights_only=True)
    assert not torch.equal(a["fc.weight"], start["fc.weight"])  # a step was taken
    # AdamW moves each weight by about lr (2e-4) whatever its gradient's size, so where a gradient is at noise
    # level (gloo's sum of two halves rounds otherwise than one process) the step differs by a fraction of lr:
    # seen 1.1e-5 on an AMD EPYC (AVX2), so the bound is a quarter of lr, not 1e-5
    lr = two["recipe"]["lr"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=lr / 4, msg=name)
    assert two["epoch_times"][0]["data_s"] >= 0 and two["epoch_times"][0]["compute_s"] > 0


def test_resume_under_two_processes(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = {"method": "ce", "student": "resnet18", "dataset": "imagenet", "recipe": "imagenet", "epochs": 2,
           "batch_size": 8, "bn": "frozen", "variant": {}}
    straight = train.train(_config(tiny, tmp_path / "straight", run))

    class Stop(Exception):
        pass

    original = train.train_one_epoch

    def stop_at_epoch_2(*args: Any, **kwargs: Any) -> Any:
        if args[4] == 2:
            raise Stop
        return original(*args, **kwargs)

    with monkeypatch.context() as m:  # one process trains epoch 1, then dies
        m.setattr(train, "train_one_epoch", stop_at_epoch_2)
        with pytest.raises(Stop):
            train.train(_config(tiny, tmp_path / "resumed", run))
    torchrun(_config(tiny, tmp_path / "resumed", run, resume=True))  # two processes train epoch 2
    resumed = json.loads((tmp_path / "resumed" / "record.json").read_text())
    assert [(r["after_epoch"], r["world_size"]) for r in resumed["resumes"]] == [(1, 2)]
    _assert_same_run(straight, resumed, tol=1e-4)
    a, b = _weights(tmp_path / "straight" / "model.pt"), _weights(tmp_path / "resumed" / "model.pt")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4, msg=name)
