"""Datasets and loaders on tiny data written in the real on-disk formats (kdlib.data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_cifar10, write_cifar100, write_fashion_mnist, write_fashion_mnist_gz
from PIL import Image
from torchvision import transforms as T

from kdlib import data
from kdlib.data import DataError, balanced_subset, get_dataset_spec, load_data
from kdlib.subsets import split_indices, split_sha256


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root, train_per_class=3, test_per_class=2)
    write_cifar10(root, train_per_class=5, test_per_class=3)
    return root


def _first_batch(loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(loader))


def test_registry_exposes_shapes_and_classes() -> None:
    assert data.available_datasets()[:3] == ["cifar100", "cifar10", "fashion_mnist"]
    assert get_dataset_spec("cifar100").num_classes == 100
    assert get_dataset_spec("cifar10").num_classes == 10
    assert get_dataset_spec("fashion_mnist").num_classes == 10
    for name in ("cifar100", "cifar10", "fashion_mnist"):
        assert get_dataset_spec(name).input_shape == (3, 32, 32)
    assert get_dataset_spec("imagenet").input_shape == (3, 224, 224)  # tests/test_imagenet.py
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; choose one of: cifar100"):
        get_dataset_spec("mnist")


def test_normalisation_constants() -> None:
    assert get_dataset_spec("cifar100").mean == (0.5071, 0.4867, 0.4408)  # RepDistiller
    assert get_dataset_spec("cifar100").std == (0.2675, 0.2565, 0.2761)
    assert get_dataset_spec("fashion_mnist").mean == (0.2860,) * 3
    assert get_dataset_spec("fashion_mnist").std == (0.3530,) * 3


def test_cifar100_loader_shapes_and_normalisation(cifar_root: Path) -> None:
    d = load_data("cifar100", cifar_root, batch_size=32, workers=0)
    assert (d.train_size, d.test_size) == (300, 200)
    x, y = _first_batch(d.train)
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (32,)
    # the test transform is exactly ToTensor + Normalize(mean, std)
    raw = d.test.dataset.base
    pixels = torch.from_numpy(raw.data[0]).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(d.spec.mean)[:, None, None], torch.tensor(d.spec.std)[:, None, None]
    x0, y0 = d.test.dataset[0]
    torch.testing.assert_close(x0, (pixels - mean) / std)
    assert y0 == raw.targets[0]


def test_cifar10_reads_five_batches(cifar_root: Path) -> None:
    d = load_data("cifar10", cifar_root, batch_size=16, workers=0)
    assert (d.train_size, d.test_size) == (50, 30)
    assert sorted(np.bincount(d.train.dataset.base.targets)) == [5] * 10
    x, _ = _first_batch(d.test)
    assert x.shape == (30, 3, 32, 32)  # evaluation batches are twice the training batch


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_pad_mode_of_the_random_crop(cifar_root: Path, pad_mode: str) -> None:
    d = load_data("cifar100", cifar_root, batch_size=8, pad_mode=pad_mode, workers=0)
    crop = next(t for t in d.train.dataset.transform.transforms if isinstance(t, T.RandomCrop))
    assert (crop.padding, crop.padding_mode, crop.size) == (4, pad_mode, (32, 32))
    # behaviour: a white image padded with zeros shows black borders, reflected it stays white
    spec = d.spec
    transform = spec.make_transform(spec, True, pad_mode)
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    torch.manual_seed(0)
    outputs = torch.stack([transform(white) for _ in range(20)])
    zero = ((0 - torch.tensor(spec.mean)) / torch.tensor(spec.std))[None, :, None, None]
    has_zero_pixels = torch.isclose(outputs, zero.expand_as(outputs)).any().item()
    assert has_zero_pixels == (pad_mode == "constant")


def test_balanced_subset_is_balanced_and_deterministic() -> None:
    targets = np.repeat(np.arange(10), 30)
    np.random.default_rng(0).shuffle(targets)
    idx = balanced_subset(targets, 47, seed=0)
    assert len(idx) == 47 and len(set(idx)) == 47 and list(idx) == sorted(idx)
    counts = np.bincount(targets[idx], minlength=10)
    assert counts.max() - counts.min() <= 1 and counts[:7].tolist() == [5] * 7
    assert np.array_equal(idx, balanced_subset(targets, 47, seed=0))
    assert not np.array_equal(idx, balanced_subset(targets, 47, seed=1))
    assert np.array_equal(balanced_subset(targets, 1000), np.arange(300))
    # a class with too few samples is exhausted and the others fill in
    skewed = np.array([0] * 2 + [1] * 20 + [2] * 20)
    assert np.bincount(skewed[balanced_subset(skewed, 12)]).tolist() == [2, 5, 5]


def test_subsets_in_loaders(cifar_root: Path) -> None:
    d = load_data("cifar10", cifar_root, batch_size=8, subset=20, eval_subset=10, workers=0)
    assert (d.train_size, d.test_size) == (20, 10)
    labels = np.asarray(d.train.dataset.base.targets)[d.train.dataset.indices]
    assert np.bincount(labels, minlength=10).tolist() == [2] * 10
    again = load_data("cifar10", cifar_root, batch_size=8, subset=20, eval_subset=10, workers=0, seed=5)
    assert np.array_equal(again.train.dataset.indices, d.train.dataset.indices)  # not tied to the run seed
    full = load_data("cifar10", cifar_root, batch_size=8, subset=20, workers=0)
    assert full.test_size == 30  # the test set is full unless eval_subset


def _epoch(d: data.Data, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    d.set_epoch(seed)
    return list(d.train)


def test_epoch_order_and_augmentation_depend_only_on_the_epoch_seed(cifar_root: Path) -> None:
    d = load_data("cifar10", cifar_root, batch_size=16, workers=0)
    first = _epoch(d, 123)
    _epoch(d, 7)  # another epoch in between must not matter
    torch.manual_seed(999)  # nor the global RNG
    d.set_epoch(123)
    iter(d.train)  # nor an abandoned iterator (tqdm.auto makes one)
    again = list(d.train)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = _epoch(d, 124)
    assert not torch.equal(first[0][1], other[0][1]) or not torch.equal(first[0][0], other[0][0])


def test_workers_do_not_change_the_batches(cifar_root: Path) -> None:
    serial = load_data("cifar10", cifar_root, batch_size=16, workers=0, seed=3)
    parallel = load_data("cifar10", cifar_root, batch_size=16, workers=2, seed=3)
    for (x1, y1), (x2, y2) in zip(_epoch(serial, 11), _epoch(parallel, 11), strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_fashion_mnist_idx(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, train_per_class=4, test_per_class=3)
    d = load_data("fashion_mnist", tmp_path, batch_size=8, workers=0, download=False)
    assert (d.train_size, d.test_size) == (40, 30)
    x, _ = d.test.dataset[0]
    assert x.shape == (3, 32, 32)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey repeated to three channels
    background = (0 - 0.2860) / 0.3530
    torch.testing.assert_close(x[:, :2, :], torch.full((3, 2, 32), background))  # the 2-pixel zero pad
    raw = d.test.dataset.base.data[0].float() / 255
    torch.testing.assert_close(x[0, 2:30, 2:30], (raw - 0.2860) / 0.3530)
    xb, yb = _first_batch(d.train)
    assert xb.shape == (8, 3, 32, 32) and yb.dtype == torch.int64


def test_fashion_mnist_installed_from_the_debian_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    debian = write_fashion_mnist_gz(tmp_path / "usr-share", train_per_class=2, test_per_class=1)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    root = tmp_path / "root"
    d = load_data("fashion_mnist", root, batch_size=4, workers=0, download=False)
    assert (d.train_size, d.test_size) == (20, 10)
    assert sorted(p.name for p in (root / "FashionMNIST" / "raw").iterdir()) == sorted(
        data.FASHION_MNIST_FILES
    )


def test_missing_data_gives_one_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as info:
        load_data("fashion_mnist", tmp_path, download=False)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=r"CIFAR-100 not found in .*cifar-100-python.*--data-root"):
        load_data("cifar100", tmp_path, download=False)


def test_data_root_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KDLIB_DATA", str(tmp_path))
    assert data.default_data_root() == tmp_path
    monkeypatch.delenv("KDLIB_DATA")
    assert data.default_data_root() == Path.home() / ".cache" / "kdlib"


@pytest.mark.skipif(
    not (data.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist_from_the_debian_package(tmp_path: Path) -> None:
    d = load_data(
        "fashion_mnist", tmp_path, batch_size=32, subset=100, eval_subset=50, workers=0, download=False
    )
    assert len(d.train.dataset.base) == 60000 and len(d.test.dataset.base) == 10000
    assert (d.train_size, d.test_size) == (100, 50)
    x, _ = _first_batch(d.train)
    assert x.shape == (32, 3, 32, 32)


def test_validation_split_is_disjoint_balanced_and_deterministic() -> None:
    """``val_subset``: held out of the whole training set first (so a teacher trained on every other image and
    a student trained on a subset of them share it), class-balanced, a function of the labels alone (the
    same for every ``subset_seed``, which draws other training images); without it the training subset is
    what it always was."""
    targets = np.repeat(np.arange(10), 60)
    np.random.default_rng(1).shuffle(targets)
    train, val = split_indices(targets, subset=200, val_subset=100)
    assert len(train) == 200 and len(val) == 100 and not set(train) & set(val)
    assert np.bincount(targets[val], minlength=10).tolist() == [10] * 10
    assert np.bincount(targets[train], minlength=10).tolist() == [20] * 10
    again_train, again_val = split_indices(targets, subset=200, val_subset=100)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    everything_else, same_val = split_indices(targets, val_subset=100)  # a teacher: all but the validation
    assert np.array_equal(val, same_val) and len(everything_else) == 500
    assert set(train) <= set(everything_else)
    other_train, other_val = split_indices(targets, subset=200, val_subset=100, subset_seed=1)
    assert np.array_equal(val, other_val) and not np.array_equal(train, other_train)
    assert not set(other_train) & set(val) and set(other_train) <= set(everything_else)
    assert np.bincount(targets[other_train], minlength=10).tolist() == [20] * 10
    assert not np.array_equal(val, balanced_subset(targets, 100))  # a stream of its own
    old, none = split_indices(targets, subset=200)
    assert none is None and np.array_equal(old, balanced_subset(targets, 200))
    with pytest.raises(ValueError, match="val_subset 600 leaves none"):
        split_indices(targets, val_subset=600)


def test_validation_loader_and_data_hashes(cifar_root: Path) -> None:
    d = load_data("cifar10", cifar_root, batch_size=8, subset=10, val_subset=10, workers=0)
    assert d.train_size == 10 and len(d.val.dataset) == 10
    assert not set(d.train.dataset.indices) & set(d.val.dataset.indices)
    assert d.val.dataset.base is d.train.dataset.base
    x, _ = _first_batch(d.val)
    assert torch.equal(x, _first_batch(d.val)[0])  # evaluated without augmentation
    plain = load_data("cifar10", cifar_root, batch_size=8, subset=10, workers=0)
    assert plain.val is None and plain.sha256["val"] is None
    assert plain.sha256["test"] == d.sha256["test"] and plain.sha256["train"] != d.sha256["train"]
    raw = plain.train.dataset.base
    assert plain.sha256["train"] == split_sha256(raw, plain.train.dataset.indices)
    assert split_sha256(raw, [0, 1]) != split_sha256(raw, [1, 0])
    before = split_sha256(raw, [0, 1])
    raw.data[0, 0, 0, 0] ^= 1  # one pixel changes the hash
    assert split_sha256(raw, [0, 1]) != before
