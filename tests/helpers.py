"""Helpers writing tiny datasets in the real on-disk formats, and tiny teachers, for the tests.

- :func:`write_cifar100` / :func:`write_cifar10`: torchvision's pickles
  (``cifar-100-python/{train,test,meta}``,
  ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``), read back by the real loaders.
- :func:`write_fashion_mnist`: the four IDX files (big-endian headers), uncompressed in
  ``<root>/FashionMNIST/raw/`` or gzipped in a folder laid out like the Debian package.
- :func:`write_teacher`: a freshly initialised model saved as kdlib's ``model.pt``.
- :func:`write_image_folder`: an ImageNet-style ``imagenet/{train,val}/<class>/`` tree of small PNGs;
  :func:`write_torchvision_weights`: a torchvision model's bare state dict (torchvision's weight files).

Images are class-dependent (a per-class mean intensity plus noise) so that tiny runs can learn something.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from kdlib.cifar import synthetic_images, write_synthetic_cifar100


def class_images(labels: np.ndarray, shape: tuple[int, ...], seed: int, num_classes: int) -> np.ndarray:
    """uint8 images whose mean grows with the label, plus uniform noise (:func:`kdlib.cifar.synthetic_images`,
    all at once)."""
    parts = synthetic_images(labels, seed, num_classes, rows=max(1, len(labels)), shape=shape)
    return np.concatenate([*parts, np.zeros((0, *shape), np.uint8)])


def _labels(num_classes: int, per_class: int, seed: int) -> np.ndarray:
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def write_cifar100(root: str | Path, train_per_class: int = 3, test_per_class: int = 2) -> Path:
    """A CIFAR-100 with ``100·train_per_class`` training and ``100·test_per_class`` test images: kdlib's own
    synthetic writer (:func:`kdlib.cifar.write_synthetic_cifar100`), which draws the same pixels as
    :func:`class_images` with seeds 1 and 2."""
    return write_synthetic_cifar100(root, train_per_class, test_per_class)


def write_cifar10(root: str | Path, train_per_class: int = 5, test_per_class: int = 3) -> Path:
    """A CIFAR-10 whose training images are spread over the five ``data_batch_*`` files."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    labels = _labels(10, train_per_class, 3)
    data = class_images(labels, (3 * 32 * 32,), 3, 10)
    for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        entry = {
            "batch_label": f"training batch {i} of 5",
            "labels": labels[part].tolist(),
            "data": data[part],
            "filenames": [f"train_{j}.png" for j in part],
        }
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(entry, f)
    test_labels = _labels(10, test_per_class, 4)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(
            {
                "batch_label": "testing batch 1 of 1",
                "labels": test_labels.tolist(),
                "data": class_images(test_labels, (3 * 32 * 32,), 4, 10),
                "filenames": [f"test_{j}.png" for j in range(len(test_labels))],
            },
            f,
        )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {"label_names": [f"class_{i}" for i in range(10)], "num_cases_per_batch": 10, "num_vis": 3072}, f
        )
    return Path(root)


def _idx_images(images: np.ndarray) -> bytes:
    return struct.pack(">IIII", 2051, len(images), 28, 28) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def fashion_mnist_files(train_per_class: int = 10, test_per_class: int = 6) -> dict[str, bytes]:
    """The four IDX files' contents of a tiny Fashion-MNIST."""
    files = {}
    for prefix, per_class, seed in (("train", train_per_class, 5), ("t10k", test_per_class, 6)):
        labels = _labels(10, per_class, seed)
        files[f"{prefix}-images-idx3-ubyte"] = _idx_images(class_images(labels, (28, 28), seed, 10))
        files[f"{prefix}-labels-idx1-ubyte"] = _idx_labels(labels)
    return files


def write_fashion_mnist(root: str | Path, train_per_class: int = 10, test_per_class: int = 6) -> Path:
    """Uncompressed IDX files in ``root/FashionMNIST/raw`` (what torchvision reads with download=False)."""
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, content in fashion_mnist_files(train_per_class, test_per_class).items():
        (raw / name).write_bytes(content)
    return Path(root)


def write_fashion_mnist_gz(folder: str | Path, train_per_class: int = 10, test_per_class: int = 6) -> Path:
    """Gzipped IDX files in ``folder``, laid out like the Debian package ``dataset-fashion-mnist``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in fashion_mnist_files(train_per_class, test_per_class).items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(content))
    return folder


def _fresh_model(arch: str, num_classes: int, seed: int, inputs: tuple[int, ...]) -> torch.nn.Module:
    """A seeded ``arch`` whose BatchNorm running statistics come from one batch of random ``inputs``."""
    from kdlib.models import create_model

    torch.manual_seed(seed)
    model = create_model(arch, num_classes=num_classes)
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        model.train()
        model(torch.randn(*inputs))
    return model


def _save(obj: object, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def write_teacher(path: str | Path, arch: str = "resnet14", num_classes: int = 10, seed: int = 0) -> Path:
    """A freshly initialised ``arch`` saved as kdlib's ``model.pt`` (BN statistics from random inputs)."""
    model = _fresh_model(arch, num_classes, seed, (16, 3, 32, 32))
    return _save({"model": model.state_dict(), "arch": arch, "num_classes": num_classes}, path)


def write_image_folder(
    root: str | Path,
    num_classes: int = 4,
    train_per_class: int = 4,
    val_per_class: int | list[int] = 3,
    size: int = 64,
) -> Path:
    """An ImageNet-style tree ``root/imagenet/{train,val}/<class>/<n>.png`` of RGB PNGs (``size``×``size``).

    ``val_per_class`` may be a list (one count per class, 0 for a class that val/ lacks).
    """
    from PIL import Image

    folder = Path(root) / "imagenet"
    counts = {"train": [train_per_class] * num_classes, "val": val_per_class}
    if isinstance(counts["val"], int):
        counts["val"] = [counts["val"]] * num_classes
    for seed, (split, per_class) in enumerate(counts.items(), start=7):
        labels = np.repeat(np.arange(num_classes), per_class)
        images = class_images(labels, (size, size, 3), seed, num_classes)
        for i, (label, image) in enumerate(zip(labels, images, strict=True)):
            path = folder / split / f"n{label:08d}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    return folder


def write_torchvision_weights(
    path: str | Path, arch: str = "resnet18", num_classes: int = 4, seed: int = 0
) -> Path:
    """A freshly initialised torchvision ``arch`` saved as torchvision saves weights: a bare state dict."""
    return _save(_fresh_model(arch, num_classes, seed, (8, 3, 64, 64)).state_dict(), path)
