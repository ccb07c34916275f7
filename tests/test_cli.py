"""The command line: every invalid argument exits 2 with one stderr line; train and eval work (kdlib.cli)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import write_fashion_mnist, write_teacher

from kdlib import data
from kdlib.cli import main
from kdlib.methods import METHODS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    write_fashion_mnist(root / "data", train_per_class=4, test_per_class=2)
    teacher = write_teacher(root / "teacher" / "model.pt", arch="resnet14", num_classes=10)
    (root / "a_file").write_text("not a folder")
    used = root / "used"
    used.mkdir()
    (used / "last.pt").write_bytes(b"")
    return {"root": root, "data": root / "data", "teacher": teacher}


def _train_args(tiny: dict[str, Path], *extra: str, method: str = "kd", out: str | None = None) -> list[str]:
    args = [
        "train",
        "--method",
        method,
        "--student",
        "resnet8",
        "--dataset",
        "fashion_mnist",
        "--data-root",
        str(tiny["data"]),
        "--out",
        out or str(tiny["root"] / "out"),
        "--recipe",
        "smoke",
        "--epochs",
        "1",
        "--subset",
        "20",
        "--eval-subset",
        "10",
        "--batch-size",
        "10",
        "--workers",
        "0",
        "--no-download",
        "--no-progress",
    ]
    if method != "ce" and "--teacher-ckpt" not in extra:
        args += ["--teacher-ckpt", str(tiny["teacher"])]
    return [*args, *extra]


def _usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    assert info.value.code == 2, captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdlib: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


INVALID = {
    "method": (["--method", "nope"], "unknown method 'nope'; choose one of: ce, kd"),
    "student": (["--student", "resnet9"], "unknown student 'resnet9'; choose one of:"),
    "teacher": (["--teacher", "resnet7"], "unknown teacher 'resnet7'"),
    "dataset": (["--dataset", "mnist"], "unknown dataset 'mnist'; choose one of: cifar100"),
    "recipe": (["--recipe", "fast"], "unknown recipe 'fast'; choose one of: repdistiller"),
    "variant key": (["--variant", "beta=1"], "unknown option 'beta' for method 'kd'; choose one of:"),
    "variant value": (["--variant", "T=hot"], "invalid value 'hot' for T"),
    "variant form": (["--variant", "T"], "invalid --variant 'T'; expected key=value"),
    "variant choice": (["--method", "ickd", "--variant", "variant=fancy"], "invalid variant 'fancy'"),
    "set field": (["--set", "lrr=0.1"], "unknown recipe field 'lrr'; choose one of: name, epochs"),
    "set value": (["--set", "lr=fast"], "recipe field 'lr' must be a number, got 'fast'"),
    "set form": (["--set", "lr"], "invalid --set 'lr'; expected key=value"),
    "epochs": (["--epochs", "0"], "argument --epochs: must be an integer >= 1, got '0'"),
    "seed": (["--seed", "x"], "argument --seed: must be an integer >= 0"),
    "subset seed": (["--subset-seed", "-1"], "argument --subset-seed: must be an integer >= 0"),
    "eval every": (["--eval-every", "0"], "argument --eval-every: must be an integer >= 1, got '0'"),
    "teacher ckpt missing": (
        ["--teacher-ckpt", "/nonexistent/t.pt"],
        "teacher checkpoint '/nonexistent/t.pt' does not exist",
    ),
    "device": (["--device", "tpu"], "invalid device 'tpu'; choose one of: auto, cpu, cuda"),
}


@pytest.mark.parametrize("kind", list(INVALID))
def test_invalid_train_arguments(
    tiny: dict[str, Path], capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    extra, message = INVALID[kind]
    method = extra[extra.index("--method") + 1] if "--method" in extra else "kd"
    argv = _train_args(tiny, method=method)
    for flag, value in zip(extra[::2], extra[1::2], strict=False):
        if flag in argv and flag not in ("--variant", "--set"):
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value] if value is not None else [flag]
    if len(extra) % 2:
        argv.append(extra[-1])
    assert message in _usage_error(capsys, argv)
    assert not (tiny["root"] / "out").exists()  # nothing was started


def test_teacher_rules(tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    argv = _train_args(tiny)
    i = argv.index("--teacher-ckpt")
    no_teacher = argv[:i] + argv[i + 2 :]
    assert "method 'kd' needs a teacher: pass --teacher-ckpt" in _usage_error(capsys, no_teacher)
    with_teacher = _train_args(tiny, "--teacher-ckpt", str(tiny["teacher"]), method="ce")
    assert "method 'ce' trains without a teacher" in _usage_error(capsys, with_teacher)


def test_output_folder_rules(tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert "is not a folder" in _usage_error(capsys, _train_args(tiny, out=str(tiny["root"] / "a_file")))
    assert "already holds a run" in _usage_error(capsys, _train_args(tiny, out=str(tiny["root"] / "used")))
    if os.geteuid() != 0:  # root can write anywhere
        locked = tiny["root"] / "locked"
        locked.mkdir(mode=0o500, exist_ok=True)
        assert "is not writable" in _usage_error(capsys, _train_args(tiny, out=str(locked / "run")))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_unavailable_cuda(tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert "device 'cuda' is not available" in _usage_error(capsys, _train_args(tiny, "--device", "cuda"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: command"),
        (["fly"], "invalid choice: 'fly'"),
        (["train", "--method", "kd"], "the following arguments are required: --student, --dataset, --out"),
        (
            ["eval", "--ckpt", "/nonexistent.pt", "--dataset", "cifar100"],
            "checkpoint '/nonexistent.pt' does not exist",
        ),
        (["eval", "--model", "resnet9", "--ckpt", "x", "--dataset", "cifar100"], "unknown model 'resnet9'"),
        (["eval", "--ckpt", "x", "--dataset", "svhn"], "unknown dataset 'svhn'"),
    ],
)
def test_invalid_commands(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert message in _usage_error(capsys, argv)


def test_eval_checkpoint_of_another_architecture(
    tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "eval",
        "--model",
        "resnet8",
        "--ckpt",
        str(tiny["teacher"]),
        "--dataset",
        "fashion_mnist",
        "--data-root",
        str(tiny["data"]),
        "--workers",
        "0",
        "--no-download",
    ]
    assert "holds a 'resnet14' model, but 'resnet8' was requested" in _usage_error(capsys, argv)


def test_missing_data_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny: dict[str, Path]
) -> None:
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    argv = _train_args(tiny, method="ce", out=str(tmp_path / "run"))
    argv[argv.index("--data-root") + 1] = str(tmp_path / "empty")
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "dataset-fashion-mnist" in err[0]


def test_train_then_eval(tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "student"
    assert (
        main(
            _train_args(
                tiny,
                "--variant",
                "ce_weight=0.5,kd_weight=0.5",
                "--set",
                "lr=0.1",
                "--seed",
                "3",
                out=str(out),
            )
        )
        == 0
    )
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "completed" and record["variant"] == "ce_weight=0.5,kd_weight=0.5"
    assert record["recipe"]["lr"] == 0.1 and record["seed"] == 3 and record["subset"] == 20
    assert (
        main(
            _train_args(
                tiny,
                "--variant",
                "ce_weight=0.5,kd_weight=0.5",
                "--set",
                "lr=0.1",
                "--seed",
                "3",
                "--resume",
                out=str(out),
            )
        )
        == 0
    )  # already complete: nothing to do
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--ckpt",
                str(out / "model.pt"),
                "--dataset",
                "fashion_mnist",
                "--data-root",
                str(tiny["data"]),
                "--workers",
                "0",
                "--no-download",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "resnet8" and result["n"] == 20 and result["top1"] == record["top1_last"]


def test_listings(capsys: pytest.CaptureFixture[str]) -> None:
    for command, expected in (
        ("methods", "iekd"),
        ("models", "resnet8x4"),
        ("datasets", "fashion_mnist"),
        ("recipes", "iekd_cifar"),
    ):
        assert main([command]) == 0
        assert expected in capsys.readouterr().out


def test_real_subprocess(tiny: dict[str, Path]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    bad = subprocess.run(
        [sys.executable, "-m", "kdlib", *_train_args(tiny, "--variant", "beta=2")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [bad.stderr.strip()]
    assert bad.stderr.startswith("kdlib: error: unknown option 'beta' for method 'kd'")
    good = subprocess.run(
        [sys.executable, "-m", "kdlib", "methods"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert good.returncode == 0 and len(good.stdout.splitlines()) == len(METHODS)
