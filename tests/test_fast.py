"""The fast path (kdlib.fast) against the reference DataLoader path: same pixels, same distribution."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_cifar100, write_fashion_mnist, write_teacher
from PIL import Image
from torch._dynamo.backends.common import aot_autograd
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from kdlib import distributed, loop, models, train
from kdlib.data import PAD_MODES, load_data
from kdlib.fast import (
    CompiledOrEager,
    DeviceLoader,
    DeviceMetrics,
    cast_teacher_weights,
    crop_flip,
    dataset_arrays,
    reference_draws,
    run_teacher_in_inference_mode,
    source_index,
    to_model_input,
)
from kdlib.methods import build_distiller

OFFSETS = 2 * 4 + 1  # RandomCrop(32, padding=4): 9 row and 9 column offsets


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fast")
    write_cifar100(root / "cifar", train_per_class=3, test_per_class=1)
    write_fashion_mnist(root / "fashion", train_per_class=8, test_per_class=4)
    return {"cifar100": root / "cifar", "fashion_mnist": root / "fashion"}


# --- pixels ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("pad_mode", PAD_MODES)
def test_source_index_matches_numpy_pad(pad_mode: str) -> None:
    axis = np.arange(1, 8)
    padded = np.pad(axis, 4, mode=pad_mode)  # kdlib's pad modes are NumPy's names
    index, valid = source_index(torch.arange(-4, 7 + 4), 7, pad_mode)
    ours = torch.from_numpy(axis)[index]
    if valid is not None:
        ours = ours * valid
    assert ours.tolist() == padded.tolist()


@pytest.mark.parametrize("pad_mode", PAD_MODES)
@pytest.mark.parametrize("channels", [3, 1])
def test_crop_flip_is_torchvision_pixel_for_pixel(pad_mode: str, channels: int) -> None:
    """Every offset and flip: our gather equals hflip(crop(pad(PIL image))) exactly."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(32, 32, channels), dtype=np.uint8)
    image = Image.fromarray(array[..., 0] if channels == 1 else array)
    top, left, flip = (t.flatten() for t in torch.meshgrid(
        torch.arange(OFFSETS), torch.arange(OFFSETS), torch.arange(2), indexing="ij"))
    flip = flip.bool()
    ours = crop_flip(torch.from_numpy(array)[None], torch.zeros(len(top), dtype=torch.int64), top, left, flip,
                     pad=4, pad_mode=pad_mode)
    assert ours.shape == (len(top), 32, 32, channels) and ours.dtype == torch.uint8
    padded = TF.pad(image, 4, fill=0, padding_mode=pad_mode)
    for k in range(len(top)):
        crop = TF.crop(padded, int(top[k]), int(left[k]), 32, 32)
        expected = np.asarray(TF.hflip(crop) if flip[k] else crop).reshape(32, 32, channels)
        assert np.array_equal(ours[k].numpy(), expected), (pad_mode, int(top[k]), int(left[k]), bool(flip[k]))


def test_crop_flip_rejects_oversized_reflect_padding() -> None:
    images, zero = torch.zeros(1, 4, 4, 3, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="pad 4 too large for reflect"):
        crop_flip(images, zero, zero, zero, zero.bool(), pad=4, pad_mode="reflect")


# --- distribution ---------------------------------------------------------------------------------
def _coded_image() -> np.ndarray:
    """Channel 0 codes the row (1..32), channel 1 the column (1..32): a crop reveals its offset and flip."""
    rows, cols = np.meshgrid(np.arange(1, 33), np.arange(1, 33), indexing="ij")
    return np.stack([rows, cols, np.full_like(rows, 200)], axis=-1).astype(np.uint8)


def _decode(crops: np.ndarray) -> np.ndarray:
    """Cell ``(top·9 + left)·2 + flip`` of ``(B, 32, 32, 3)`` crops of the coded image, from central pixels.

    The pixels (16, 16) and (16, 17) lie inside the unpadded image for every offset, whatever the pad mode.
    """
    row = crops[:, 16, 16, 0].astype(int) - 1
    col, next_col = crops[:, 16, 16, 1].astype(int) - 1, crops[:, 16, 17, 1].astype(int) - 1
    flip = next_col < col
    top = row - 16 + 4
    left = np.where(flip, col - 15 + 4, col - 16 + 4)
    assert ((top >= 0) & (top < OFFSETS) & (left >= 0) & (left < OFFSETS)).all()
    return (top * OFFSETS + left) * 2 + flip


def _chi2_critical(dof: int, z: float = 3.719) -> float:
    """Wilson–Hilferty upper quantile of chi-square(dof) (z = 3.719: p = 1e-4)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_crop_and_flip_distribution_matches_torchvision(pad_mode: str) -> None:
    """(top, left, flip) of the device loader and of RandomCrop + RandomHorizontalFlip: same distribution."""
    n = 50 * OFFSETS * OFFSETS * 2  # 50 per cell
    coded = _coded_image()
    reference_transform = T.Compose([T.RandomCrop(32, padding=4, padding_mode=pad_mode),
                                     T.RandomHorizontalFlip()])
    torch.manual_seed(1)
    image = Image.fromarray(coded)
    reference = _decode(np.stack([np.asarray(reference_transform(image)) for _ in range(n)]))

    loader = DeviceLoader(torch.from_numpy(coded)[None].expand(n, -1, -1, -1), torch.arange(n),
                          mean=(0.0,) * 3, std=(1.0,) * 3, batch_size=1000, train=True, pad_mode=pad_mode)
    loader.set_epoch(7)
    batches = list(loader)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(n))  # a permutation
    pixels = torch.cat([x for x, _ in batches]).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)
    ours = _decode(pixels.numpy())

    cells = OFFSETS * OFFSETS * 2
    counts = np.stack([np.bincount(reference, minlength=cells), np.bincount(ours, minlength=cells)])
    # each against the uniform distribution over the 162 cells (independent uniform offsets, fair flip)
    for row in counts:
        chi2 = ((row - n / cells) ** 2 / (n / cells)).sum()
        assert chi2 < _chi2_critical(cells - 1), chi2
    # and against each other: chi-square test of homogeneity, and a total-variation bound
    expected = counts.sum(axis=0, keepdims=True) * counts.sum(axis=1, keepdims=True) / counts.sum()
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < _chi2_critical(cells - 1), chi2
    # two samples of one distribution: E[TV] ~ sqrt(cells / (pi n)) (normal approximation), 0.08 here
    total_variation = 0.5 * np.abs(counts[0] / n - counts[1] / n).sum()
    assert total_variation < 1.5 * math.sqrt(cells / (math.pi * n)), total_variation
    assert abs((ours % 2).mean() - 0.5) < 4 * 0.5 / math.sqrt(n)


# --- same batches as the DataLoader path ----------------------------------------------------------
@pytest.mark.parametrize("dataset", ["cifar100", "fashion_mnist"])
@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_same_draws_give_the_reference_batch(roots: dict[str, Path], dataset: str, pad_mode: str) -> None:
    """With the reference path's draws, the device loader's input is the DataLoader's, bit for bit."""
    subset = 120 if dataset == "cifar100" else None  # a subset: positions differ from dataset indices
    d = load_data(dataset, roots[dataset], batch_size=16, subset=subset, pad_mode=pad_mode, workers=0,
                  download=False)
    train_set = d.train.dataset
    d.set_epoch(1234)
    fast = DeviceLoader.from_dataset(train_set, d.spec, batch_size=16, train=True, pad_mode=pad_mode)
    positions = torch.arange(0, len(train_set), 3)
    expected = torch.stack([train_set[int(k)][0] for k in positions])
    labels = torch.tensor([train_set[int(k)][1] for k in positions])
    ours = fast.batch(positions, *reference_draws(1234, train_set.indices[positions.numpy()]))
    assert ours.shape == expected.shape == (len(positions), 3, 32, 32)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert torch.equal(fast.labels[positions], labels)


@pytest.mark.parametrize("dataset", ["cifar100", "fashion_mnist"])
def test_eval_loader_is_the_test_dataloader(roots: dict[str, Path], dataset: str) -> None:
    d = load_data(dataset, roots[dataset], batch_size=16, workers=0, download=False)
    fast = DeviceLoader.from_dataset(d.test.dataset, d.spec, batch_size=32, train=False)
    reference, ours = list(d.test), list(fast)
    assert len(fast) == len(d.test) == len(ours)
    for (x_ref, y_ref), (x, y) in zip(reference, ours, strict=True):
        torch.testing.assert_close(x, x_ref, rtol=0, atol=0)
        assert torch.equal(y, y_ref)


def test_fashion_images_are_padded_to_the_input_size(roots: dict[str, Path]) -> None:
    d = load_data("fashion_mnist", roots["fashion_mnist"], batch_size=8, workers=0, download=False)
    pixels, labels = dataset_arrays(d.train.dataset, d.spec.input_shape)
    assert pixels.shape == (d.train_size, 32, 32, 1) and pixels.dtype == torch.uint8
    assert (pixels[:, :2] == 0).all() and (pixels[:, :, -2:] == 0).all()
    assert torch.equal(pixels[:, 2:30, 2:30, 0], d.train.dataset.base.data)
    assert labels.tolist() == d.train.dataset.base.targets.tolist()


# --- epochs ---------------------------------------------------------------------------------------
def _loader(n: int = 50, batch_size: int = 16, **kw) -> DeviceLoader:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8))
    return DeviceLoader(images, torch.arange(n), mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=batch_size,
                        train=True, **kw)


def test_epoch_is_a_function_of_its_seed() -> None:
    loader = _loader(chunk_batches=2)
    assert len(loader) == 4
    loader.set_epoch(3)
    first = list(loader)
    assert [len(y) for _, y in first] == [16, 16, 16, 2]  # the last, smaller batch is kept
    assert sorted(torch.cat([y for _, y in first]).tolist()) == list(range(50))
    loader.set_epoch(4)
    other = list(loader)
    loader.set_epoch(3)
    again = list(loader)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0][1], other[0][1])
    # chunking does not change the epoch
    whole = _loader(chunk_batches=100)
    whole.set_epoch(3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, list(whole), strict=True))
    # without set_epoch, passes continue the generator: two passes differ
    fresh = _loader()
    assert not torch.equal(next(iter(fresh))[1], next(iter(fresh))[1])


def test_channels_last_output() -> None:
    x, _ = next(iter(_loader(channels_last=True)))
    assert x.shape == (16, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    x, _ = next(iter(_loader(channels_last=False)))
    assert x.is_contiguous()


def test_loader_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="invalid pad_mode 'wrap'; choose one of: constant"):
        _loader(pad_mode="wrap")
    with pytest.raises(ValueError, match="one label each"):
        DeviceLoader(torch.zeros(3, 32, 32, 3), torch.arange(2), mean=(0,), std=(1,), batch_size=1,
                     train=False)


# --- metrics, compilation, teacher ----------------------------------------------------------------
def test_device_metrics_average_and_keep_every_step() -> None:
    metrics = DeviceMetrics(steps=3, device="cpu")
    metrics.add({"ce": torch.tensor(1.0), "kd": torch.tensor(2.0)}, batch_size=4)
    metrics.add({"ce": torch.tensor(3.0), "kd": torch.tensor(4.0)}, batch_size=2)
    assert metrics.read() == pytest.approx({"ce": (4 + 6) / 6, "kd": (8 + 8) / 6})
    assert metrics.steps_read == [{"ce": 1.0, "kd": 2.0}, {"ce": 3.0, "kd": 4.0}]
    metrics.add({"ce": torch.tensor(float("nan")), "kd": torch.tensor(0.0)}, batch_size=2)
    metrics.add({"ce": torch.tensor(1.0), "kd": torch.tensor(5.0)}, batch_size=2)  # beyond `steps`: grows
    assert math.isnan(metrics.read()["ce"])
    assert len(metrics.steps_read) == 4 and math.isnan(metrics.steps_read[2]["ce"])
    assert metrics.steps_read[3] == {"ce": 1.0, "kd": 5.0}
    with pytest.raises(ValueError, match="loss terms changed within an epoch"):
        metrics.add({"ce": torch.tensor(1.0)}, batch_size=1)


def test_compiled_or_eager_falls_back() -> None:
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    def fn(x: torch.Tensor) -> torch.Tensor:
        return x * 2 + 1

    x = torch.arange(4.0)
    failing = CompiledOrEager(fn, backend=broken_backend)
    assert torch.equal(failing(x), fn(x))
    assert not failing.is_compiled and "no compiler here" in failing.fallback_reason
    working = CompiledOrEager(fn, backend="eager")
    assert torch.equal(working(x), fn(x)) and working.is_compiled
    assert working.describe() == "compiled (default)"
    assert not CompiledOrEager(fn, enabled=False).is_compiled


def test_compiled_or_eager_runs_other_batch_sizes_eagerly() -> None:
    calls = []

    def counting_backend(graph, example_inputs):
        calls.append(tuple(example_inputs[0].shape))
        return graph.forward

    fn = CompiledOrEager(lambda x: x.sum(1), backend=counting_backend, batch_size=8)
    fn(torch.ones(8, 3))
    fn(torch.ones(2, 3))  # the last, smaller batch: eager, no second compilation
    fn(torch.ones(8, 3))
    assert calls == [(8, 3)]


def test_runs_one_after_another_each_compile() -> None:
    """Twelve runs of differently shaped models in one process (the study with one job): each one compiled,
    where dynamo alone stops compiling after its recompile limit (8) and runs the rest eagerly."""
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    for width in range(12):
        model = torch.nn.Linear(4, 2 + width)
        forward = CompiledOrEager(model, backend=counting_backend)
        forward(torch.ones(3, 4))
        assert forward.is_compiled and forward.describe() == "compiled (default)"
    assert len(graphs) == 12


def test_the_recompile_limit_is_a_fallback_the_record_names() -> None:
    """A run that recompiles past dynamo's limit says it ran eagerly (dynamo alone only warns)."""
    forward = CompiledOrEager(lambda x: x * 2, backend="eager")
    for n in range(1, 12):  # a new static shape each call: one recompilation each
        assert torch.equal(forward(torch.ones(n)), torch.full((n,), 2.0))
    assert not forward.is_compiled and "ecompile" in forward.describe()


def test_a_backward_graph_that_fails_to_compile_falls_back() -> None:
    """The backward graph compiles with the forward, inside the fallback: a compiler that fails on it leaves
    an eager step whose gradients are the eager ones (torch alone would fail at the first .backward())."""

    def broken_backward(graph, example_inputs):
        raise RuntimeError("no backward compiler here")

    backend = aot_autograd(fw_compiler=lambda graph, example_inputs: graph.forward,
                           bw_compiler=broken_backward)
    model = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    forward = CompiledOrEager(lambda x: (model(x) ** 2).sum(), backend=backend)
    forward(x).backward()
    assert not forward.is_compiled and "no backward compiler here" in forward.describe()
    compiled_grad = model.weight.grad.clone()
    model.weight.grad = None
    (model(x) ** 2).sum().backward()
    assert torch.equal(compiled_grad, model.weight.grad)


def test_teacher_weights_cast_once_give_the_same_forward_under_autocast() -> None:
    """A frozen teacher's weights are cast to bf16 once, not at each autocast call: same logits and features,
    bit for bit, with one cast per forward left (the input's) instead of one per weight."""

    class Casts(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            self.count += func is torch.ops.aten._to_copy.default
            return func(*args, **(kwargs or {}))

    distiller = build_distiller("kd", models.create_model("resnet8"), models.create_model("resnet32"))
    teacher, x = distiller.teacher.eval(), torch.randn(4, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), Casts() as before:
        logits, feats = teacher(x, with_features=True)
    cast_teacher_weights(distiller, torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), Casts() as after:
        cast_logits, cast_feats = teacher(x, with_features=True)
    assert torch.equal(cast_logits, logits) and all(map(torch.equal, cast_feats, feats))
    assert before.count > 30 and after.count == 1
    assert teacher.fc.weight.dtype == torch.bfloat16 and teacher.bn1.weight.dtype == torch.float32


def test_uint8_pixels_become_the_cpu_quotients_on_any_device() -> None:
    """The division by 255 is a lookup in a table the CPU divided: CUDA's x * (1/255) differs from x / 255
    in the last bit for 126 of the 256 values, so dividing on the device would not give the CPU's batches."""
    values = torch.arange(256, dtype=torch.float32)
    assert int((values * (1 / 255) != values / 255).sum()) > 100  # the hazard, shown on the CPU
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1)
    x = to_model_input(pixels, torch.zeros(1), torch.ones(1))
    assert torch.equal(x.flatten(), values / 255)
    assert torch.equal(x.flatten(), TF.to_tensor(pixels[0].numpy()).flatten())


def test_a_traced_teacher_runs_under_no_grad_and_pixels_use_one_table_per_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While torch.compile traces, the teacher's region is no_grad (inference mode failed to compile on torch
    2.11); eager, it stays inference mode. The pixel table is copied to a device once, not per batch."""
    from kdlib import fast

    assert isinstance(fast._teacher_mode(), torch.inference_mode)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert isinstance(fast._teacher_mode(), torch.no_grad)
    cpu = torch.device("cpu")
    assert fast.unit_table(cpu) is fast.unit_table(cpu)
    assert torch.equal(fast.unit_table(cpu), fast.UINT8_TO_UNIT)


@pytest.mark.parametrize("method", ["kd", "ickd", "iekd"])
def test_inference_mode_teacher_trains_like_no_grad(method: str) -> None:
    """Same losses and gradients with the teacher under inference mode; IE-KD's stage A learns from it."""
    torch.manual_seed(0)
    student, teacher = models.create_model("resnet8"), models.create_model("resnet14")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    results = []
    for inference in (False, True):
        torch.manual_seed(1)  # identical method parts in both distillers
        d = build_distiller(method, student, teacher)
        if inference:
            run_teacher_in_inference_mode(d)
            logits_t, feats_t = d.teacher_forward(x)
            assert not logits_t.is_inference() and not any(f.is_inference() for f in feats_t)
            modes = []  # what the teacher runs under in the method's own calls (ICKD, IE-KD: last_map)
            d.teacher.register_forward_pre_hook(
                lambda *_, seen=modes: seen.append(torch.is_inference_mode_enabled()))
        d.zero_grad(set_to_none=True)
        if d.has_pretrain:
            d.pretraining = True
            d.pretrain_loss(x)["reconstruction"].backward()  # the auto-encoder takes teacher features
            d.pretraining = False
        _, losses = d(x, y)
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in d.named_parameters() if p.grad is not None}
        results.append(({k: v.item() for k, v in losses.items()}, grads))
        if inference:  # a deep copy runs its own teacher
            assert modes and all(modes), modes
            twin = copy.deepcopy(d)
            assert twin.teacher_forward.__self__ is twin and twin.teacher_last_map.__self__ is twin
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, msg=name)


# --- the trainer's two paths ---------------------------------------------------------------------
CPU_RUNTIME = loop.Runtime(torch.device("cpu"), amp=False, channels_last=False, progress=False)


def test_the_fast_step_is_never_wired_to_several_processes() -> None:
    """The fast step averages no gradient across processes: preparing it for a run of two is an error (the
    plan refuses such runs first; this holds even if that check were relaxed)."""
    distiller = build_distiller("kd", models.create_model("resnet8"), models.create_model("resnet14"))
    two = dataclasses.replace(CPU_RUNTIME, dist=distributed.Dist(rank=0, world_size=2, backend="gloo"))
    with pytest.raises(ValueError, match="fast path trains in one process, not 2: .* averages no gradient"):
        loop.prepare_fast(distiller, two, compile=False, batch_size=8)
    assert loop.prepare_fast(distiller, CPU_RUNTIME, compile=False, batch_size=8).describe() == "eager"


@pytest.mark.parametrize("method, pad_mode", [("kd", "constant"), ("ickd", "reflect")])
def test_reference_and_fast_paths_same_loss_on_the_same_batches(
    roots: dict[str, Path], method: str, pad_mode: str
) -> None:
    """train_one_epoch (DataLoader batches) and train_one_epoch_fast (device loader, inference-mode teacher,
    the fast step) on the same two batches: the same loss terms, and the same weights after the steps."""
    d = load_data("cifar100", roots["cifar100"], batch_size=8, pad_mode=pad_mode, workers=0, download=False)
    train_set = d.train.dataset
    d.set_epoch(99)
    positions = [torch.arange(0, 8), torch.arange(100, 108)]
    reference_batches = [(torch.stack([train_set[int(k)][0] for k in ks]),
                          torch.tensor([train_set[int(k)][1] for k in ks])) for ks in positions]
    fast = DeviceLoader.from_dataset(train_set, d.spec, batch_size=8, train=True, pad_mode=pad_mode)
    fast_batches = [(fast.batch(ks, *reference_draws(99, train_set.indices[ks.numpy()])), fast.labels[ks])
                    for ks in positions]

    torch.manual_seed(0)
    initial = build_distiller(method, models.create_model("resnet8"), models.create_model("resnet14"))
    runs = []
    for path in ("reference", "fast"):
        distiller = copy.deepcopy(initial)
        optimizer = loop.sgd(distiller.trainable_parameters(), 0.05, 0.9, False, 5e-4)
        if path == "reference":
            losses = loop.train_one_epoch(distiller, distiller, reference_batches, optimizer, 1, CPU_RUNTIME)
        else:
            forward = loop.prepare_fast(distiller, CPU_RUNTIME, compile=False, batch_size=8)
            losses = loop.train_one_epoch_fast(forward, distiller, fast_batches, optimizer, 1, CPU_RUNTIME)
        runs.append((losses, distiller.state_dict()))
    (reference_losses, reference_state), (fast_losses, fast_state) = runs
    assert set(reference_losses) == set(fast_losses) and reference_losses
    assert fast_losses == pytest.approx(reference_losses, rel=1e-5)
    for name, value in reference_state.items():
        torch.testing.assert_close(fast_state[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("fast", [True, False, None])
def test_training_run_on_either_path(roots: dict[str, Path], tmp_path: Path, fast: bool | None,
                                     cpu_kind: str) -> None:
    """A whole (tiny) run on the path asked for; by default the fast path where the CPU has bf16 units (the
    run is then bf16), the DataLoader path elsewhere."""
    teacher = write_teacher(tmp_path / "teacher" / "model.pt", arch="resnet14", num_classes=10)
    config = train.TrainConfig(
        method="kd", student="resnet8", dataset="fashion_mnist", out=tmp_path / "run", teacher_ckpt=teacher,
        recipe="smoke", epochs=2, subset=40, eval_subset=20, batch_size=16, data_root=roots["fashion_mnist"],
        workers=0, download=False, progress=False, fast=fast,
    )
    record = train.train(config)
    assert record["status"] == "completed" and [h["epoch"] for h in record["history"]] == [1, 2]
    assert set(record["history"][0]["losses"]) == {"ce", "kd"}
    assert all(math.isfinite(v) for h in record["history"] for v in h["losses"].values())
    assert record["precision"] == ("bf16" if cpu_kind == "amx" else "fp32")
    on_fast = fast or (fast is None and cpu_kind == "amx")
    expected = {"path": "fast", "forward": "eager", "fused_sgd": False, "teacher": "inference_mode",
                "channels_last": True, "compile": None} if on_fast \
        else {"path": "dataloader", "forward": "eager", "fused_sgd": False, "teacher": "no_grad",
              "channels_last": False, "compile": None}
    assert record["speed"] == expected


def test_fast_path_resume_matches_an_uninterrupted_run(
    roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast-path epoch is a function of (seed, epoch): a resumed run ends where a straight one does."""
    teacher = write_teacher(tmp_path / "teacher" / "model.pt", arch="resnet14", num_classes=10)

    def config(out: str, **kw) -> train.TrainConfig:
        return train.TrainConfig(
            method="kd", student="resnet8", dataset="fashion_mnist", out=tmp_path / out, teacher_ckpt=teacher,
            recipe="smoke", epochs=2, subset=40, eval_subset=20, batch_size=16,
            data_root=roots["fashion_mnist"], workers=0, download=False, progress=False, fast=True, **kw)

    straight = train.train(config("straight"))
    original = train.train_one_epoch_fast

    def killed_at_epoch_2(*args, **kwargs):
        if args[4] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(train, "train_one_epoch_fast", killed_at_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train.train(config("resumed"))
    torch.manual_seed(123)  # what ran before in this process must not matter
    resumed = train.train(config("resumed", resume=True))
    assert resumed["history"] == straight["history"]
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["distiller"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["distiller"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fast_epoch_reports_the_first_non_finite_step() -> None:
    class Exploding(torch.nn.Module):  # finite for two steps, then NaN
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))
            self.calls = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def forward(self, x, y):
            self.calls += 1
            scale = float("nan") if self.calls == 3 else 1.0
            return None, {"ce": self.w * x.mean() * scale, "kd": self.w * 0}

    model = Exploding()
    batches = [(torch.ones(4, 3), torch.zeros(4))] * 4
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    message = r"^non-finite loss term 'ce' = nan at epoch 7, step 2 \(step 1: ce=0.9, kd=0\)$"
    with pytest.raises(loop.NonFiniteLoss, match=message):
        loop.train_one_epoch_fast(model, model, batches, optimizer, 7, CPU_RUNTIME)


# --- the benchmark script -------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
NOT_ON_THE_GPU_MACHINE = ("pandas", "tqdm", "matplotlib", "seaborn", "scipy", "yaml", "papermill")


def test_bench_needs_only_torch_torchvision_numpy() -> None:
    """bench/bench.py and the kdlib modules it uses import nothing beyond torch, torchvision and numpy."""
    code = (
        "import sys, runpy\n"
        f"for name in {NOT_ON_THE_GPU_MACHINE!r}: sys.modules[name] = None\n"
        "bench = runpy.run_path('bench/bench.py', run_name='bench')\n"
        "from kdlib import loop\n"
        "assert loop.tqdm is None and bench['COLUMNS'][0] == 'date'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_bench_results_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("bench_module", REPO / "bench" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_module", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    committed = (REPO / "bench" / "results.csv").read_text().splitlines()
    assert committed[0] == ",".join(bench.COLUMNS)  # the committed file has the benchmark's columns
    out = tmp_path / "results.csv"
    row = {"date": "d", "pair": "kd resnet56->resnet20", "speedup": 9.87654, "overhead_vs_bare_pct": 1.234,
           "ours_ms": 1.23456, "projected_240ep_ours_with_eval_min": None}
    bench.append_rows(out, [row])
    bench.append_rows(out, [row])
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(bench.COLUMNS) and len(lines) == 3
    cells = dict(zip(bench.COLUMNS, lines[1].split(","), strict=True))
    assert (cells["speedup"], cells["overhead_vs_bare_pct"], cells["ours_ms"]) == ("9.877", "1.23", "1.235")
    assert cells["projected_240ep_ours_with_eval_min"] == ""
    other = tmp_path / "other.csv"
    other.write_text("date,speed\n")
    with pytest.raises(ValueError, match="other columns"):
        bench.append_rows(other, [row])


# --- on a GPU (skipped elsewhere) -----------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_cuda_loader_gives_the_cpu_batches(pad_mode: str) -> None:
    """Draws are made on the CPU, so an epoch is the same on either device; pixels and arithmetic too."""
    cpu, gpu = _loader(pad_mode=pad_mode), _loader(pad_mode=pad_mode, device="cuda", channels_last=True)
    cpu.set_epoch(5)
    gpu.set_epoch(5)
    for (x, y), (x_gpu, y_gpu) in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(x_gpu.cpu(), x, rtol=0, atol=0)
        assert torch.equal(y_gpu.cpu(), y)


@cuda
def test_cuda_epoch_without_host_syncs() -> None:
    """Steps of the loader (chunk boundaries included) with their metrics never wait for the GPU."""
    loader = _loader(n=500, device="cuda", chunk_batches=4)
    metrics = DeviceMetrics(len(loader), "cuda")
    batches = iter(loader)
    x, y = next(batches)  # the epoch's draws (copied once per epoch) and lazy initialisation: not checked
    metrics.add({"mean": x.mean(), "label": y.float().mean()}, len(y))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches:
            metrics.add({"mean": x.mean(), "label": y.float().mean()}, len(y))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    means = metrics.read()
    assert set(means) == {"mean", "label"} and len(metrics.steps_read) == len(loader)
