"""Datasets and loaders: CIFAR-100, CIFAR-10 and Fashion-MNIST, one :class:`DatasetSpec` each.

A dataset is one entry of ``DATASETS``: its number of classes, one sample's input shape, the
normalisation constants, a function returning the raw (untransformed) torchvision dataset and one making the
transforms. ImageNet (an ``ImageFolder``) will be one more entry.

Augmentation is RepDistiller's [code: RepDistiller ``dataset/cifar100.py``]: ``RandomCrop(32, padding=4)`` +
``RandomHorizontalFlip`` + ``Normalize``; the crop's pad mode comes from the recipe (``constant`` = zeros as
in RepDistiller, ``reflect`` as in the CD and IE-KD code).

Reproducibility: every random choice of an epoch is a function of ``(seed, epoch)`` only, whatever the number
of loader workers and whether earlier epochs ran in this process:

- the shuffling order is a permutation seeded by :meth:`Data.set_epoch` (:class:`EpochSampler`);
- each training sample is augmented under a torch seed derived from the epoch seed and the sample's index
  (:class:`SeededTransform`), so worker processes and their own seeds play no part;
- workers still get ``worker_init_fn`` seeding numpy and ``random`` for transforms that use them.

The test set is full unless ``eval_subset`` is given; ``subset`` draws a class-balanced, deterministic subset
of the training set (:func:`balanced_subset`; it depends on ``subset_seed``, not on the run's seed, so runs
with different seeds see the same images).
"""

from __future__ import annotations

import gzip
import logging
import os
import random
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

log = logging.getLogger(__name__)

#: Where the Debian package ``dataset-fashion-mnist`` puts the gzipped IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: Pad modes accepted by a recipe's ``pad_mode`` (torchvision ``RandomCrop(padding_mode=...)``).
PAD_MODES = ("constant", "reflect", "edge", "symmetric")


class DataError(RuntimeError):
    """A dataset is missing or unreadable; the message says how to get it."""


def default_data_root() -> Path:
    """``$KDLIB_DATA`` if set, else ``~/.cache/kdlib``."""
    return Path(os.environ.get("KDLIB_DATA") or Path.home() / ".cache" / "kdlib").expanduser()


# --- dataset specifications -----------------------------------------------------------------------
RawLoader = Callable[[Path, bool, bool], Dataset]  # (root, train, download) -> dataset yielding (PIL, label)


@dataclass(frozen=True)
class DatasetSpec:
    """What the trainer needs to know about a dataset."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    load_raw: RawLoader
    #: ``make_transform(spec, train, pad_mode)``: the per-sample transform (PIL image -> normalised tensor).
    make_transform: Callable[[DatasetSpec, bool, str], Callable[[Any], torch.Tensor]]
    source: str = ""


def cifar_transform(spec: DatasetSpec, train: bool, pad_mode: str = "constant") -> Callable:
    """RepDistiller's CIFAR transform: crop (pad 4, ``pad_mode``) + flip when training, then normalise."""
    steps: list[Any] = []
    if train:
        steps += [T.RandomCrop(32, padding=4, padding_mode=pad_mode), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    return T.Compose(steps)


def fashion_mnist_transform(spec: DatasetSpec, train: bool, pad_mode: str = "constant") -> Callable:
    """28×28 grey → zero-pad 2 to 32×32 → (train: CIFAR augmentation) → 3 equal channels → normalise.

    [assumption] Fashion-MNIST gets the same crop/flip augmentation as CIFAR so that recipes carry over; its
    mean/std are those of the 28×28 training images (0.2860, 0.3530), repeated over the three channels.
    """
    steps: list[Any] = [T.Pad(2, fill=0)]
    if train:
        steps += [T.RandomCrop(32, padding=4, padding_mode=pad_mode), T.RandomHorizontalFlip()]
    steps += [T.Grayscale(num_output_channels=3), T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    return T.Compose(steps)


class _CIFAR10(tv_datasets.CIFAR10):
    """torchvision's CIFAR-10 reading the same on-disk pickles, checking files exist instead of their md5.

    The archive's md5 is still verified when torchvision downloads it; skipping the per-file md5 lets small
    test sets in the same format load through the real loader (and avoids hashing 160 MB at every start).
    """

    train_list = [[name, None] for name, _ in tv_datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in tv_datasets.CIFAR10.test_list]
    meta = {**tv_datasets.CIFAR10.meta, "md5": None}


class _CIFAR100(tv_datasets.CIFAR100):
    """torchvision's CIFAR-100 with the same existence-only file check as :class:`_CIFAR10`."""

    train_list = [[name, None] for name, _ in tv_datasets.CIFAR100.train_list]
    test_list = [[name, None] for name, _ in tv_datasets.CIFAR100.test_list]
    meta = {**tv_datasets.CIFAR100.meta, "md5": None}


def _cifar_loader(cls: type, title: str) -> RawLoader:
    def load(root: Path, train: bool, download: bool) -> Dataset:
        folder = root / cls.base_folder
        try:
            return cls(str(root), train=train, download=False)
        except RuntimeError:
            if not download:
                raise DataError(
                    f"{title} not found in {folder}: run once with network access (kdlib downloads it into "
                    f"the data root, --data-root or $KDLIB_DATA), or extract {cls.filename} from "
                    f"{cls.url.rsplit('/', 1)[0]}/ into {root}"
                ) from None
        try:
            return cls(str(root), train=train, download=True)
        except Exception as error:  # network errors come in many types
            raise DataError(
                f"{title} not found in {folder} and the download failed ({type(error).__name__}: {error}); "
                f"extract {cls.filename} from {cls.url.rsplit('/', 1)[0]}/ into {root}"
            ) from None

    return load


FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def install_fashion_mnist(root: Path, source: Path | None = None) -> bool:
    """Gunzip the Debian package's IDX files (``source``, default :data:`DEBIAN_FASHION_MNIST`) into
    ``root/FashionMNIST/raw`` once; True if the files are there afterwards."""
    source = Path(source) if source is not None else DEBIAN_FASHION_MNIST
    raw = Path(root) / "FashionMNIST" / "raw"
    if all((raw / name).is_file() for name in FASHION_MNIST_FILES):
        return True
    if not all((source / f"{name}.gz").is_file() for name in FASHION_MNIST_FILES):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        if (raw / name).is_file():
            continue
        tmp = raw / f".{name}.tmp{os.getpid()}"
        with gzip.open(source / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, raw / name)
    log.info("copied Fashion-MNIST from %s to %s", source, raw)
    return True


def _load_fashion_mnist(root: Path, train: bool, download: bool) -> Dataset:
    raw = root / "FashionMNIST" / "raw"
    if install_fashion_mnist(root) or not download:
        try:
            return tv_datasets.FashionMNIST(str(root), train=train, download=False)
        except RuntimeError:
            raise DataError(
                f"Fashion-MNIST not found in {raw}: install the Debian package 'dataset-fashion-mnist' "
                f"(apt-get install dataset-fashion-mnist; kdlib copies it from {DEBIAN_FASHION_MNIST}), "
                f"or run once with network access, or put the IDX files ({', '.join(FASHION_MNIST_FILES)}) "
                f"into {raw}"
            ) from None
    try:
        return tv_datasets.FashionMNIST(str(root), train=train, download=True)
    except Exception as error:
        raise DataError(
            f"Fashion-MNIST not found in {raw} and the download failed ({type(error).__name__}: {error}); "
            f"install the Debian package 'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist)"
        ) from None


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "cifar100",
            100,
            (3, 32, 32),
            mean=(0.5071, 0.4867, 0.4408),
            std=(0.2675, 0.2565, 0.2761),
            load_raw=_cifar_loader(_CIFAR100, "CIFAR-100"),
            make_transform=cifar_transform,
            source="RepDistiller dataset/cifar100.py (mean/std, crop pad 4 + flip)",
        ),
        DatasetSpec(
            "cifar10",
            10,
            (3, 32, 32),
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            load_raw=_cifar_loader(_CIFAR10, "CIFAR-10"),
            make_transform=cifar_transform,
            source="[assumption] the training set's own per-channel mean/std; augmentation as CIFAR-100",
        ),
        DatasetSpec(
            "fashion_mnist",
            10,
            (3, 32, 32),
            mean=(0.2860,) * 3,
            std=(0.3530,) * 3,
            load_raw=_load_fashion_mnist,
            make_transform=fashion_mnist_transform,
            source="[assumption] offline stand-in: zero-padded to 32x32, grey repeated to 3 channels",
        ),
    )
}


def available_datasets() -> list[str]:
    return list(DATASETS)


def get_dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` called ``name``; an unknown name raises an error listing them."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


# --- subsets, seeded augmentation, loaders ---------------------------------------------------------
def dataset_targets(dataset: Dataset) -> np.ndarray:
    """Integer labels of a torchvision dataset (``targets`` attribute)."""
    return np.asarray(dataset.targets, dtype=np.int64)


def balanced_subset(targets: Sequence[int] | np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` samples, class-balanced (counts differ by at most 1) and deterministic.

    Each class's samples are shuffled by ``seed``; then samples are taken by rank, round-robin over classes in
    label order (so with ``n % K = r`` the first ``r`` classes get one more, and a class that runs out is
    skipped).
    """
    targets = np.asarray(targets)
    if n >= len(targets):
        return np.arange(len(targets))
    rng = np.random.default_rng(seed)
    rank = np.empty(len(targets), dtype=np.int64)
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        rank[rng.permutation(members)] = np.arange(len(members))
    order = np.lexsort((targets, rank))  # by rank, then by label
    return np.sort(order[:n])


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 steps), stable across processes and Python versions."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 29
    return state & 0x7FFFFFFFFFFFFFFF


class SeededTransform(Dataset):
    """``base[indices[k]]`` transformed; with an epoch seed set, under a torch seed of (epoch seed, index).

    Torchvision's random transforms draw from the global torch RNG; forking it per sample makes a sample's
    augmentation independent of the process (main or worker) and of the order samples are drawn in.
    """

    def __init__(self, base: Dataset, indices: Sequence[int] | np.ndarray, transform: Callable) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.epoch_seed: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        index = int(self.indices[k])
        image, label = self.base[index]
        if self.epoch_seed is None:
            return self.transform(image), int(label)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.epoch_seed, index))
            return self.transform(image), int(label)


class EpochSampler(Sampler[int]):
    """A random permutation of ``range(n)``, a function of the seed set by :meth:`Data.set_epoch` alone.

    Unlike ``RandomSampler`` with a shared generator, the order does not depend on how often the generator
    was drawn from before (loader iterators also draw their workers' base seed from it).
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        self.seed = seed

    def set_epoch(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        return iter(torch.randperm(self.n, generator=generator).tolist())


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed numpy and ``random`` in a loader worker from its torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@dataclass
class Data:
    """A dataset's spec and its train/test loaders; call :meth:`set_epoch` before each training epoch."""

    spec: DatasetSpec
    train: DataLoader
    test: DataLoader

    @property
    def train_size(self) -> int:
        return len(self.train.dataset)

    @property
    def test_size(self) -> int:
        return len(self.test.dataset)

    def set_epoch(self, seed: int) -> None:
        """Make the next pass over ``train`` (order and augmentation) a function of ``seed`` alone."""
        self.train.sampler.set_epoch(seed)
        self.train.generator.manual_seed(seed)  # workers' base seeds (unused by the seeded transforms)
        self.train.dataset.epoch_seed = seed


def load_data(
    name: str,
    root: str | Path | None = None,
    *,
    batch_size: int = 64,
    eval_batch_size: int | None = None,
    subset: int | None = None,
    eval_subset: int | None = None,
    subset_seed: int = 0,
    pad_mode: str = "constant",
    workers: int = 2,
    seed: int = 0,
    download: bool = True,
    pin_memory: bool = False,
) -> Data:
    """Train and test loaders for dataset ``name`` (see the module docstring for the randomness contract).

    Raises :class:`DataError` with instructions when the files are missing and cannot be downloaded.
    """
    spec = get_dataset_spec(name)
    if pad_mode not in PAD_MODES:
        raise ValueError(f"invalid pad_mode '{pad_mode}'; choose one of: {', '.join(PAD_MODES)}")
    root = Path(root).expanduser() if root is not None else default_data_root()
    raw_train = spec.load_raw(root, True, download)
    raw_test = spec.load_raw(root, False, download)
    train_indices = balanced_subset(dataset_targets(raw_train), subset, subset_seed) if subset else None
    test_indices = (
        balanced_subset(dataset_targets(raw_test), eval_subset, subset_seed) if eval_subset else None
    )
    train_set = SeededTransform(
        raw_train,
        train_indices if train_indices is not None else np.arange(len(raw_train)),
        spec.make_transform(spec, True, pad_mode),
    )
    test_set = SeededTransform(
        raw_test,
        test_indices if test_indices is not None else np.arange(len(raw_test)),
        spec.make_transform(spec, False, pad_mode),
    )
    common = dict(
        num_workers=workers, worker_init_fn=seed_worker, pin_memory=pin_memory, persistent_workers=False
    )
    generator = torch.Generator()
    generator.manual_seed(seed)
    train = DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=EpochSampler(len(train_set), seed),
        generator=generator,
        **common,
    )
    test = DataLoader(
        test_set,
        batch_size=eval_batch_size or 2 * batch_size,
        shuffle=False,
        generator=torch.Generator().manual_seed(seed),
        **common,
    )
    log.info(
        "%s: %d training images%s, %d test images",
        name,
        len(train_set),
        f" (class-balanced subset of {len(raw_train)})" if subset else "",
        len(test_set),
    )
    return Data(spec, train, test)
