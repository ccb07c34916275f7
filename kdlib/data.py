"""Datasets and loaders: CIFAR-100, CIFAR-10, Fashion-MNIST and ImageNet, one :class:`DatasetSpec` each.

A dataset is one entry of ``DATASETS``: its number of classes, one sample's input shape, the
normalisation constants, a function returning the raw (untransformed) torchvision dataset and one making the
transforms.

ImageNet is an ``ImageFolder`` tree, ``<data root>/imagenet/{train,val}/<class>/<image>`` (or ``train/`` and
``val/`` directly under the data root); it is never downloaded. Its transforms are the torchvision reference
scripts': ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip`` for training, ``Resize(256)`` +
``CenterCrop(224)`` for evaluation, then ``Normalize`` with the ImageNet mean and std. The image size is a
recipe field (``--set image_size=64`` scales the crop to 64 and the resize to ``round(64·256/224)``), used by
the tests and CPU proxies; the class count is the number of class folders in ``train/``
(:func:`resolve_dataset_spec`), 1000 for ILSVRC-2012.

CIFAR's files are Python pickles; they are read with a restricted unpickler (:mod:`kdlib.cifar`) that
rebuilds dicts, lists, strings, numbers and numpy arrays only, so a file under the data root can hold data but
never run code, and a damaged one is a :class:`DataError` naming it.

Augmentation is RepDistiller's [code: RepDistiller ``dataset/cifar100.py``]: ``RandomCrop(32, padding=4)`` +
``RandomHorizontalFlip`` + ``Normalize``; the crop's pad mode comes from the recipe (``constant`` = zeros as
in RepDistiller, ``reflect`` as in the CD and IE-KD code).

Reproducibility: every random choice of an epoch is a function of ``(seed, epoch)`` only, whatever the number
of loader workers and whether earlier epochs ran in this process:

- the shuffling order is a permutation seeded by :meth:`Data.set_epoch` (:class:`EpochSampler`);
- each training sample is augmented under a torch seed derived from the epoch seed and the sample's index
  (:class:`SeededTransform`), so worker processes and their own seeds play no part;
- workers still get ``worker_init_fn`` seeding numpy and ``random`` for transforms that use them.

Several processes (``torchrun``, :mod:`kdlib.distributed`): every process draws the same permutation and takes
every ``world_size``-th position of it (:class:`EpochSampler`), so the global batches are the one-process
run's; with more than one process the last, partial global batch is dropped. The test set is split the same
way without padding, so each test image is evaluated by exactly one process.

The test set is full unless ``eval_subset`` is given; ``subset`` draws a class-balanced, deterministic subset
of the training set, and ``val_subset`` holds a class-balanced validation set out of it (:mod:`kdlib.subsets`:
neither depends on the run's seed, so runs with different seeds see the same images; ``subset_seed`` picks
which class-balanced draw of the training images, and never changes the validation or test images).
"""

from __future__ import annotations

import dataclasses
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

from kdlib.cifar import CIFAR10, CIFAR100, CifarFileError, CIFARFiles
from kdlib.idx import check_idx_split
from kdlib.subsets import TEST_SEED, balanced_subset, split_indices, split_sha256

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
    #: True when the transforms crop to ``input_shape``'s size, so a recipe's ``image_size`` may change it.
    resizable: bool = False
    #: Counts the classes of the data under a root (an ImageFolder counts its class folders), or None.
    count_classes: Callable[[Path], int] | None = None
    #: False for datasets too large to hold on the device (the fast path needs it, :mod:`kdlib.fast`).
    device_resident: bool = True

    def with_image_size(self, size: int | None) -> DatasetSpec:
        """This spec with ``size``×``size`` inputs (None: unchanged); an error for fixed-size datasets."""
        if size is None or size == self.input_shape[-1]:
            return self
        if not self.resizable:
            resizable = ", ".join(n for n, s in DATASETS.items() if s.resizable)
            raise ValueError(
                f"dataset '{self.name}' has a fixed image size {self.input_shape[-1]}, got image_size "
                f"{size}; image_size applies to: {resizable}"
            )
        if not isinstance(size, int) or size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {size!r}")
        return dataclasses.replace(self, input_shape=(self.input_shape[0], size, size))


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


def imagenet_transform(spec: DatasetSpec, train: bool, pad_mode: str = "constant") -> Callable:
    """The torchvision reference scripts' ImageNet transform at size S = ``input_shape[-1]`` (224 by default).

    Training: ``RandomResizedCrop(S)`` (scale 0.08-1, ratio 3/4-4/3, bilinear) + ``RandomHorizontalFlip``;
    evaluation: ``Resize(round(S·256/224))`` (the shorter side) + ``CenterCrop(S)``; then ``ToTensor`` and
    ``Normalize`` [code: torchvision ``references/classification/presets.py``; CD @ 2464d30 and the ICKD
    ImageNet code use the same]. ``pad_mode`` does not apply.
    """
    size = spec.input_shape[-1]
    if train:
        steps: list[Any] = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(round(size * 256 / 224)), T.CenterCrop(size)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(spec.mean, spec.std)])


def _cifar_loader(cls: type[CIFARFiles]) -> RawLoader:
    def load(root: Path, train: bool, download: bool) -> Dataset:
        folder, title = root / cls.base_folder, cls.title
        try:
            return cls(str(root), train=train, download=False)
        except CifarFileError as error:
            raise DataError(str(error)) from None
        except FileNotFoundError:
            if not download:
                raise DataError(
                    f"{title} not found in {folder}: run once with network access (kdlib downloads it into "
                    f"the data root, --data-root or $KDLIB_DATA), or extract {cls.filename} from "
                    f"{cls.url.rsplit('/', 1)[0]}/ into {root}"
                ) from None
        try:
            return cls(str(root), train=train, download=True)
        except CifarFileError as error:
            raise DataError(str(error)) from None
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
        check_idx_split(raw, train, DataError)  # a damaged file: torchvision would only assert
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


IMAGENET_LAYOUT = "imagenet/train/<class>/<image> and imagenet/val/<class>/<image>"


def imagenet_folder(root: Path) -> Path:
    """The ImageNet folder (with ``train/`` and ``val/``) under ``root``: ``root/imagenet`` or ``root``."""
    for candidate in (root / "imagenet", root):
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return candidate
    raise DataError(
        f"ImageNet not found under {root}: expected {IMAGENET_LAYOUT} (or train/ and val/ directly under "
        "the data root: --data-root or $KDLIB_DATA); it is never downloaded: get ILSVRC-2012 from "
        "image-net.org and sort the validation images into class folders (README: 'ImageNet and several "
        "GPUs')"
    )


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def imagenet_classes(root: Path) -> list[str]:
    """The class names: the sorted folder names under ``train/`` (what ``ImageFolder`` uses)."""
    folder = imagenet_folder(root)
    classes = _class_folders(folder / "train")
    if not classes:
        raise DataError(f"ImageNet: {folder / 'train'} holds no class folders (expected {IMAGENET_LAYOUT})")
    return classes


class _ImageFolder(tv_datasets.ImageFolder):
    """``ImageFolder`` with the class list given (the training set's), so that validation labels are the
    training labels even where ``val/`` lacks a class."""

    def __init__(self, root: Path, classes: list[str], allow_empty: bool) -> None:
        self._given_classes = classes
        super().__init__(str(root), allow_empty=allow_empty)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._given_classes, {name: i for i, name in enumerate(self._given_classes)}


def _load_imagenet(root: Path, train: bool, download: bool) -> Dataset:
    folder = imagenet_folder(root)
    classes = imagenet_classes(root)
    split = folder / ("train" if train else "val")
    if not train:
        unknown = sorted(set(_class_folders(split)) - set(classes))
        if unknown:
            raise DataError(
                f"ImageNet: {split} has class folders that train/ lacks ({', '.join(unknown[:5])}"
                f"{', ...' if len(unknown) > 5 else ''}); val/ must use the training set's class folder names"
            )
    try:
        dataset = _ImageFolder(split, classes, allow_empty=not train)
    except (FileNotFoundError, OSError) as error:
        raise DataError(f"ImageNet: cannot read {split}: {error}") from None
    if len(dataset) == 0:
        raise DataError(f"ImageNet: {split} holds no images (expected {IMAGENET_LAYOUT})")
    return dataset


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "cifar100",
            100,
            (3, 32, 32),
            mean=(0.5071, 0.4867, 0.4408),
            std=(0.2675, 0.2565, 0.2761),
            load_raw=_cifar_loader(CIFAR100),
            make_transform=cifar_transform,
            source="RepDistiller dataset/cifar100.py (mean/std, crop pad 4 + flip)",
        ),
        DatasetSpec(
            "cifar10",
            10,
            (3, 32, 32),
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            load_raw=_cifar_loader(CIFAR10),
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
        DatasetSpec(
            "imagenet",
            1000,
            (3, 224, 224),
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            load_raw=_load_imagenet,
            make_transform=imagenet_transform,
            source="ILSVRC-2012 as an ImageFolder tree; torchvision reference transforms (RandomResizedCrop "
            "224 + flip / resize 256 + center crop 224)",
            resizable=True,
            count_classes=lambda root: len(imagenet_classes(root)),
            device_resident=False,
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


def resolve_dataset_spec(
    name: str, root: str | Path | None = None, image_size: int | None = None
) -> DatasetSpec:
    """The spec as a run sees it: ``image_size`` applied and, for ImageFolder datasets, the class count of
    the folders under ``root`` (default :func:`default_data_root`); :class:`DataError` if they are missing."""
    spec = get_dataset_spec(name).with_image_size(image_size)
    if spec.count_classes is not None:
        root = Path(root).expanduser() if root is not None else default_data_root()
        spec = dataclasses.replace(spec, num_classes=spec.count_classes(root))
    return spec


# --- subsets, seeded augmentation, loaders ---------------------------------------------------------
def dataset_targets(dataset: Dataset) -> np.ndarray:
    """Integer labels of a torchvision dataset (``targets`` attribute)."""
    return np.asarray(dataset.targets, dtype=np.int64)


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

    With ``world_size`` processes (each with the same seed), the permutation is cut to whole global batches
    of ``batch_size`` (``images_per_epoch``) and process ``rank`` takes positions ``rank, rank + world_size,
    ...``: its k-th batch of ``batch_size / world_size`` is its share of the one-process run's k-th batch.
    """

    def __init__(
        self, n: int, seed: int = 0, *, rank: int = 0, world_size: int = 1, batch_size: int = 1
    ) -> None:
        self.n = n
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        #: Images trained per epoch over all processes (all in one process, whole global batches with more).
        self.images_per_epoch = n if world_size == 1 else n // batch_size * batch_size

    def set_epoch(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        return len(range(self.rank, self.images_per_epoch, self.world_size))

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(self.n, generator=generator)
        if self.world_size > 1:
            order = order[: self.images_per_epoch][self.rank :: self.world_size]
        return iter(order.tolist())


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
    #: The whole test set's size (with several processes, ``test`` holds only this process's share).
    test_images: int | None = None
    #: The validation images held out of training (``val_subset``; None without), evaluated like ``test``.
    val: DataLoader | None = None
    #: :func:`~kdlib.subsets.split_sha256` of the ``train``, ``val`` (None without) and whole ``test`` split.
    sha256: dict[str, str | None] = dataclasses.field(default_factory=dict)

    @property
    def train_size(self) -> int:
        return len(self.train.dataset)

    @property
    def test_size(self) -> int:
        return self.test_images if self.test_images is not None else len(self.test.dataset)

    @property
    def images_per_epoch(self) -> int:
        """Training images per epoch over all processes (whole global batches only with several)."""
        return self.train.sampler.images_per_epoch

    def set_epoch(self, seed: int) -> None:
        """Make the next pass over ``train`` (order and augmentation) a function of ``seed`` alone."""
        self.train.sampler.set_epoch(seed)
        self.train.generator.manual_seed(seed)  # workers' base seeds (unused by the seeded transforms)
        self.train.dataset.epoch_seed = seed


def _split_sets(
    spec: DatasetSpec, root: Path, download: bool, subset: int | None, eval_subset: int | None,
    subset_seed: int, pad_mode: str, rank: int, world_size: int, val_subset: int | None = None,
) -> tuple[SeededTransform, dict[str, SeededTransform | None], dict[str, Any]]:
    """(training set, this process's share of the test and validation sets, the hash and size of each
    split): class-balanced subsets where asked (:func:`~kdlib.subsets.split_indices`), each image
    transformed by its seeded transform."""
    raw_train = spec.load_raw(root, True, download)
    raw_test = spec.load_raw(root, False, download)
    try:
        train_indices, val_indices = split_indices(dataset_targets(raw_train), subset, val_subset,
                                                   subset_seed)
    except ValueError as error:  # a val_subset the data cannot give: known only once the data is read
        raise DataError(f"{spec.name}: {error}; pass a smaller --val-subset") from None
    test_indices = np.arange(len(raw_test))
    if eval_subset:
        test_indices = balanced_subset(dataset_targets(raw_test), eval_subset, TEST_SEED)
    train_set = SeededTransform(raw_train, train_indices, spec.make_transform(spec, True, pad_mode))
    evaluated = spec.make_transform(spec, False, pad_mode)
    shares = {  # each image in exactly one process's share, no padding
        "test": SeededTransform(raw_test, test_indices[rank::world_size], evaluated),
        "val": SeededTransform(raw_train, val_indices[rank::world_size], evaluated)
        if val_indices is not None else None,
    }
    facts = {"test_images": len(test_indices), "sha256": {
        "train": split_sha256(raw_train, train_indices),
        "val": split_sha256(raw_train, val_indices) if val_indices is not None else None,
        "test": split_sha256(raw_test, test_indices)}}
    return train_set, shares, facts


def load_data(
    name: str,
    root: str | Path | None = None,
    *,
    batch_size: int = 64,
    eval_batch_size: int | None = None,
    subset: int | None = None,
    eval_subset: int | None = None,
    subset_seed: int = 0,
    val_subset: int | None = None,
    pad_mode: str = "constant",
    workers: int = 2,
    seed: int = 0,
    download: bool = True,
    pin_memory: bool = False,
    image_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Data:
    """Train and test loaders for dataset ``name`` (see the module docstring for the randomness contract).

    ``batch_size`` is the global batch: with ``world_size`` processes each loader yields
    ``batch_size / world_size`` images per step (``eval_batch_size``, default twice the batch size, is global
    too), and process ``rank`` gets its share of the training order and of the test set.
    Raises :class:`DataError` with instructions when the files are missing and cannot be downloaded.
    """
    root = Path(root).expanduser() if root is not None else default_data_root()
    spec = resolve_dataset_spec(name, root, image_size)
    if batch_size % world_size:
        raise ValueError(f"the global batch size {batch_size} is not divisible by the {world_size} processes")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"invalid pad_mode '{pad_mode}'; choose one of: {', '.join(PAD_MODES)}")
    train_set, shares, facts = _split_sets(spec, root, download, subset, eval_subset, subset_seed, pad_mode,
                                           rank, world_size, val_subset)
    common = dict(
        num_workers=workers, worker_init_fn=seed_worker, pin_memory=pin_memory, persistent_workers=False
    )
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = EpochSampler(len(train_set), seed, rank=rank, world_size=world_size, batch_size=batch_size)
    if sampler.images_per_epoch == 0:
        raise DataError(
            f"{name}: {len(train_set)} training images do not fill one global batch of {batch_size} "
            f"(needed with {world_size} processes)"
        )
    train = DataLoader(
        train_set,
        batch_size=batch_size // world_size,
        sampler=sampler,
        generator=generator,
        **common,
    )
    test, val = (None if share is None else DataLoader(
        share,
        batch_size=max(1, (eval_batch_size or 2 * batch_size) // world_size),
        shuffle=False,
        generator=torch.Generator().manual_seed(seed),
        **common,
    ) for share in (shares["test"], shares["val"]))
    log.info("%s: %d training images%s, %d test images%s", name, len(train_set),
             f" (class-balanced subset of {len(train_set.base)})" if subset else "", facts["test_images"],
             f", {val_subset} validation images held out of training" if val_subset else "")
    return Data(spec, train, test, facts["test_images"], val, facts["sha256"])
