"""CIFAR-10 and CIFAR-100 from their on-disk pickles, read so that a file can hold data but never run code.

CIFAR's files are Python pickles (Python 2's cPickle, protocol 2). torchvision reads them with plain
``pickle.load``, which runs whatever a file names, and kdlib skips torchvision's per-file md5 check (so that
small test sets in the same format load through the real loader): a crafted file under ``--data-root`` could
then run code. :func:`read_cifar_pickle` instead uses a restricted unpickler that rebuilds only what CIFAR's
files hold, and checks each batch's shape and labels; anything else is a :class:`CifarFileError` naming the
file and how to get a good copy (:mod:`kdlib.data` reports it as a ``DataError``).

:func:`write_synthetic_cifar100` writes files of the same format with synthetic pixels, for tests and for
benchmarks on a machine without the data (``bench/gpu_check.py``): their labels and pixel statistics are
CIFAR-100's shape, never its content, so they measure speed and agreement, never accuracy.
"""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torchvision import datasets as tv_datasets


class CifarFileError(ValueError):
    """A CIFAR file names a forbidden global, is damaged or does not hold a CIFAR batch."""


#: The only globals a CIFAR pickle may name, each mapped to what rebuilds it. These are numpy's array and
#: dtype constructors under the module names numpy pickles them with (``numpy.core`` in Python 2's cPickle
#: files and numpy 1, ``numpy._core`` in numpy 2; ``_frombuffer`` at protocol 5), taken from numpy's own
#: ``__reduce__`` so no module is imported by name, and ``_codecs.encode``, with which Python 3 writes bytes
#: at protocols 0-2.
CIFAR_PICKLE_GLOBALS = {
    **{(f"{package}.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0]
       for package in ("numpy.core", "numpy._core")},
    **{(f"{package}.numeric", "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0]
       for package in ("numpy.core", "numpy._core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle names a global outside :data:`CIFAR_PICKLE_GLOBALS`."""


class _CIFARUnpickler(pickle.Unpickler):
    """Rebuilds only what CIFAR's files hold (dicts, lists, strings, bytes, numbers and numpy arrays): any
    other global (``os.system``, ``builtins.eval``, a class) is refused before anything calls it, so a crafted
    file under the data root cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return CIFAR_PICKLE_GLOBALS[module, name]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def read_cifar_pickle(path: Path, title: str, remedy: str) -> Any:
    """The object pickled in ``path`` (Python 2's strings decoded as latin-1, as torchvision reads them), by
    ``_CIFARUnpickler``; :class:`CifarFileError` naming the file when it refers to any other global or is
    damaged, saying how to get a good copy (``remedy``)."""
    try:
        with open(path, "rb") as f:
            return _CIFARUnpickler(f, encoding="latin1").load()
    except _ForbiddenGlobal as error:
        raise CifarFileError(f"{title}: refusing to load '{path}': it refers to {error}, which a CIFAR file "
                             "never holds (only dicts, lists, strings, numbers and numpy arrays); "
                             + remedy) from None
    except Exception as error:  # a damaged pickle fails in many ways (EOFError, UnpicklingError, ...)
        raise CifarFileError(f"{title}: '{path}' is not a readable CIFAR file ({type(error).__name__}: "
                             f"{error}); " + remedy) from None


def _is_label(value: Any, num_classes: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < num_classes


class CIFARFiles:
    """torchvision's CIFAR-10/100 (files, download, items) reading the on-disk pickles with
    :func:`read_cifar_pickle`, and checking that the files exist instead of their md5.

    The archive's md5 is still verified when torchvision downloads it; skipping the per-file md5 lets small
    test sets in the same format load through the real loader (and avoids hashing 160 MB at every start), and
    the restricted unpickler makes that safe: a file can hold data, never code. Each batch must be a dict
    with uint8 ``data`` rows of 3072 pixels and one label in ``0..num_classes - 1`` per row; missing files
    raise ``FileNotFoundError``, unreadable ones :class:`CifarFileError`.
    """

    title: str
    label_key: str
    num_classes: int
    base_folder: str
    url: str
    filename: str
    train_list: list[list[Any]]
    test_list: list[list[Any]]
    meta: dict[str, Any]

    def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
        tv_datasets.VisionDataset.__init__(self, root)
        self.train = train
        if download:
            self.download()
        folder = Path(self.root) / self.base_folder
        files = [folder / name for name, _ in (self.train_list if train else self.test_list)]
        missing = [path for path in [*files, folder / self.meta["filename"]] if not path.is_file()]
        if missing:
            raise FileNotFoundError(missing[0])
        batches = [self._batch(path) for path in files]
        self.data = np.vstack([data for data, _ in batches]).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        self.targets = [label for _, labels in batches for label in labels]
        self._load_meta()

    @property
    def remedy(self) -> str:
        """How to replace a bad file (for error messages)."""
        folder = Path(self.root) / self.base_folder
        return (f"delete {folder} and run once with network access, or extract {self.filename} from "
                f"{self.url.rsplit('/', 1)[0]}/ into {self.root}")

    def _batch(self, path: Path) -> tuple[np.ndarray, list[int]]:
        entry = read_cifar_pickle(path, self.title, self.remedy)
        data, labels = (entry.get(k) if isinstance(entry, dict) else None for k in ("data", self.label_key))
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == 3 * 32 * 32):
            problem = "'data' must be a uint8 array of rows of 3072 pixels"
        elif not (isinstance(labels, list) and len(labels) == len(data)
                  and all(_is_label(label, self.num_classes) for label in labels)):
            problem = f"'{self.label_key}' must be a list of one label in 0..{self.num_classes - 1} per row"
        else:
            return data, labels
        raise CifarFileError(f"{self.title}: '{path}' is not a CIFAR batch: {problem}; {self.remedy}")

    def _load_meta(self) -> None:
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        entry = read_cifar_pickle(path, self.title, self.remedy)
        names = entry.get(self.meta["key"]) if isinstance(entry, dict) else None
        if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
            raise CifarFileError(f"{self.title}: '{path}' is not CIFAR metadata: '{self.meta['key']}' must "
                                 f"be a list of class names; {self.remedy}")
        self.classes = names
        self.class_to_idx = {name: i for i, name in enumerate(names)}


class CIFAR10(CIFARFiles, tv_datasets.CIFAR10):
    """CIFAR-10 read safely (:class:`CIFARFiles`)."""

    title, label_key, num_classes = "CIFAR-10", "labels", 10
    train_list = [[name, None] for name, _ in tv_datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in tv_datasets.CIFAR10.test_list]
    meta = {**tv_datasets.CIFAR10.meta, "md5": None}


class CIFAR100(CIFARFiles, tv_datasets.CIFAR100):
    """CIFAR-100 read safely (:class:`CIFARFiles`), with its fine labels."""

    title, label_key, num_classes = "CIFAR-100", "fine_labels", 100
    train_list = [[name, None] for name, _ in tv_datasets.CIFAR100.train_list]
    test_list = [[name, None] for name, _ in tv_datasets.CIFAR100.test_list]
    meta = {**tv_datasets.CIFAR100.meta, "md5": None}


# --- synthetic files in CIFAR-100's format ----------------------------------------------------------
def synthetic_images(labels: np.ndarray, seed: int, num_classes: int, rows: int = 2048,
                     shape: tuple[int, ...] = (3 * 32 * 32,)) -> Iterator[np.ndarray]:
    """uint8 images of ``shape`` (default: CIFAR's rows of ``3·32·32`` pixels) whose mean grows with the label
    (``(label + 0.5) / num_classes · 200 + 20``) plus noise uniform on [-40, 40], clipped to 0..255: classes
    a tiny run can tell apart, nothing like real images. Yielded ``rows`` images at a time (50,000 at once
    would need 1.2 GB of float64 noise); the pixels do not depend on ``rows`` (numpy's generator draws the
    same stream in pieces)."""
    rng = np.random.default_rng(seed)
    for start in range(0, len(labels), rows):
        part = labels[start:start + rows].astype(np.float64)
        noise = rng.uniform(-40, 40, size=(len(part), *shape))
        base = ((part + 0.5) / num_classes * 200).reshape(-1, *([1] * len(shape)))
        yield np.clip(base + noise + 20, 0, 255).astype(np.uint8)


def write_synthetic_cifar100(root: str | Path, train_per_class: int = 500, test_per_class: int = 100,
                             rows: int = 2048) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}`` in CIFAR-100's pickle format with **synthetic**
    pixels (:func:`synthetic_images`): ``100·train_per_class`` training and ``100·test_per_class`` test
    images (the defaults are CIFAR-100's 50,000 and 10,000), each class equally often in a seeded order
    (seeds 1 and 2), coarse label ``fine // 5``. :class:`CIFAR100` and ``kdlib.data.load_data("cifar100",
    root)`` read them as the real files. For speed and agreement checks only: a model trained on them says
    nothing about CIFAR-100's accuracy. Returns ``root``."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class, seed in (("train", train_per_class, 1), ("test", test_per_class, 2)):
        fine = np.random.default_rng(seed).permutation(np.repeat(np.arange(100), per_class))
        entry = {
            "batch_label": f"synthetic {split} batch",
            "filenames": [f"{split}_{i}.png" for i in range(len(fine))],
            "fine_labels": fine.tolist(),
            "coarse_labels": (fine // 5).tolist(),
            "data": np.concatenate([*synthetic_images(fine, seed, 100, rows), np.zeros((0, 3072), np.uint8)]),
        }
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class_{i}" for i in range(100)],
                     "coarse_label_names": [f"super_{i}" for i in range(20)]}, f)
    return Path(root)
