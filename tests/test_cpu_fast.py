"""The fast path on a CPU: precision resolved from the CPU's bf16 units, and the code a GPU runs (bf16
autocast, channels_last, ``torch.compile``) run here on every test run (kdlib.fast.resolve_precision,
kdlib.loop).

A CPU without bf16 units (AVX512-BF16 or AMX) computes bf16 emulated, slowly but with the same numerics, so
these tests run on any CPU; the tiny models keep them to about a minute, compilation included.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from helpers import write_fashion_mnist, write_teacher

from kdlib import config as kconfig
from kdlib import fast, loop, models, train
from kdlib.data import load_data
from kdlib.fast import DeviceLoader
from kdlib.methods import build_distiller
from kdlib.record import config_id_of

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cpu_fast")
    write_fashion_mnist(root / "fashion", train_per_class=4, test_per_class=2)
    return {"root": root / "fashion", "teacher": write_teacher(root / "teacher.pt", "resnet14", 10)}


def _config(data: dict[str, Path], out: Path, **kw) -> kconfig.TrainConfig:
    fields = {"method": "kd", "student": "resnet8", "dataset": "fashion_mnist", "out": out,
              "teacher_ckpt": data["teacher"], "recipe": "smoke", "epochs": 1, "subset": 32,
              "eval_subset": 20, "batch_size": 16, "data_root": data["root"], "workers": 0, "download": False,
              "progress": False, "device": "cpu", **kw}
    return kconfig.TrainConfig(**fields)


# --- precision and the defaults it brings ---------------------------------------------------------
def test_auto_precision_follows_the_cpu(bf16_cpu: None) -> None:
    assert fast.bf16_native(CPU)
    assert fast.resolve_precision("auto", CPU) == "bf16"
    assert fast.resolve_precision("fp32", CPU) == "fp32"


def test_auto_precision_is_fp32_without_bf16_units(plain_cpu: None, caplog: pytest.LogCaptureFixture) -> None:
    assert not fast.bf16_native(CPU)
    assert fast.resolve_precision("auto", CPU) == "fp32"
    with caplog.at_level(logging.WARNING, logger="kdlib.fast"):
        assert fast.resolve_precision("bf16", CPU) == "bf16"  # asked for: it runs, emulated
    assert "no native bf16" in caplog.text
    with pytest.raises(ValueError, match="invalid precision 'fp16'; choose one of: auto, bf16, fp32"):
        fast.resolve_precision("fp16", CPU)


def test_a_bf16_cpu_takes_the_fast_path_by_default(data: dict[str, Path], tmp_path: Path,
                                                   bf16_cpu: None) -> None:
    p = kconfig.plan(_config(data, tmp_path / "run"))
    assert (p.precision, p.fast, p.channels_last) == ("bf16", True, True)
    p = kconfig.plan(_config(data, tmp_path / "run", precision="fp32"))
    assert (p.precision, p.fast, p.channels_last) == ("fp32", False, False)
    p = kconfig.plan(_config(data, tmp_path / "run", precision="fp32", fast=True, channels_last=False))
    assert (p.precision, p.fast, p.channels_last) == ("fp32", True, False)


def test_a_plain_cpu_keeps_the_reference_path(data: dict[str, Path], tmp_path: Path, plain_cpu: None) -> None:
    p = kconfig.plan(_config(data, tmp_path / "run"))
    assert (p.precision, p.fast, p.channels_last) == ("fp32", False, False)


def test_precision_is_part_of_the_identity(data: dict[str, Path], tmp_path: Path, plain_cpu: None) -> None:
    """``auto`` resolved to fp32 is the same run as ``fp32`` asked for; ``bf16`` is another run."""
    auto, fp32, bf16 = (config_id_of(_config(data, tmp_path / "run", precision=p))
                        for p in ("auto", "fp32", "bf16"))
    assert auto == fp32 != bf16


def test_compilation_pays_on_long_runs_only() -> None:
    assert not loop.compile_pays(CPU, loop.CPU_COMPILE_MIN_STEPS - 1)
    assert loop.compile_pays(CPU, loop.CPU_COMPILE_MIN_STEPS)
    assert loop.compile_pays(torch.device("cuda"), 1)


# --- the code a GPU runs, on this CPU -------------------------------------------------------------
def test_compiled_bf16_channels_last_step_matches_eager(data: dict[str, Path]) -> None:
    """Two fast-path steps, bf16 autocast, channels_last: compiled (inductor's C++ code) and eager give the
    same loss terms and weights, to bf16's precision."""
    d = load_data("fashion_mnist", data["root"], batch_size=16, subset=32, workers=0, download=False)
    loader = DeviceLoader.from_dataset(d.train.dataset, d.spec, batch_size=16, train=True, channels_last=True)
    loader.set_epoch(1)
    batches = list(loader)
    torch.manual_seed(0)
    initial = build_distiller("kd", models.create_model("resnet8", num_classes=10),
                              models.load_teacher(data["teacher"], num_classes=10))
    initial.to(memory_format=torch.channels_last)
    rt = loop.Runtime(CPU, amp=True, channels_last=True, progress=False)
    runs = []
    for compiled in (False, True):
        distiller = copy.deepcopy(initial)
        forward = loop.prepare_fast(distiller, rt, compile=compiled, batch_size=16)
        optimizer = loop.sgd(distiller.trainable_parameters(), 0.05, 0.9, False, 5e-4)
        losses = loop.train_one_epoch_fast(forward, distiller, batches, optimizer, 1, rt)
        assert forward.is_compiled == compiled, forward.describe()
        runs.append((losses, distiller.student.state_dict()))
    (eager_losses, eager_state), (compiled_losses, compiled_state) = runs
    assert compiled_losses == pytest.approx(eager_losses, rel=2e-2)
    for name, value in eager_state.items():
        torch.testing.assert_close(compiled_state[name].float(), value.float(), rtol=2e-2, atol=2e-3,
                                   msg=name)


def test_a_whole_bf16_run_on_the_cpu_fast_path(data: dict[str, Path], tmp_path: Path) -> None:
    """A run with every switch a GPU run uses: its record says bf16, channels_last and compiled."""
    record = train.train(_config(data, tmp_path / "run", precision="bf16", fast=True, compile=True))
    assert record["status"] == "completed" and record["precision"] == "bf16"
    assert record["speed"]["path"] == "fast" and record["speed"]["channels_last"]
    assert record["speed"]["forward"] == "compiled (default)"
    compiled = record["speed"]["compile"]  # compiled once (forward and backward), from the caches or not
    assert compiled["seconds"] > 0 and compiled["frames"] == 1
    assert compiled["aot_autograd_cache_hits"] + compiled["aot_autograd_cache_misses"] == 1
    assert all(torch.isfinite(torch.tensor(v)) for v in record["history"][0]["losses"].values())


def test_the_fast_path_evaluates_the_validation_split(data: dict[str, Path], tmp_path: Path) -> None:
    """A run with images held out for validation takes them to the device like the test set: the fast path
    and the reference path score the same images with the same weights."""
    records = {fast: train.train(_config(data, tmp_path / str(fast), subset=20, val_subset=10, fast=fast,
                                         compile=False, epochs=2))
               for fast in (False, True)}
    for record in records.values():
        assert record["val_images"] == 10 and len(record["history"]) == 2
        assert all("val_top1" in h for h in record["history"])
        assert record["val_top1_last"] == record["history"][-1]["val_top1"]
    assert records[True]["data_sha256"]["val"] == records[False]["data_sha256"]["val"]
