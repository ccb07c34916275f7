"""Which images a run trains, validates and tests on, and the hash of those images.

- :func:`balanced_subset`: a class-balanced, deterministic subset of a labelled set (``subset``,
  ``eval_subset``).
- :func:`split_indices`: the training images and, with ``val_subset``, the validation images held out of
  training: drawn first, from the whole training set, so that a teacher trained on every other image and
  students trained on a subset of them never see the same validation images.
- :func:`split_sha256`: the SHA-256 of the images and labels a split uses (``data_sha256`` of a record).

All of them depend on the labels only, never on the run's seed, so runs with different seeds see the same
images; the training subset also depends on ``subset_seed`` (which class-balanced draw), the validation and
test images never do, so runs of any ``subset_seed`` are validated and tested on the same images and a
teacher trained outside the validation split never saw any run's validation images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Seed of the validation split, a stream of its own (not 0) so that the validation images are not the first
#: images a ``subset`` of ``subset_seed`` 0 would take, and the same for every ``subset_seed``.
VALIDATION_SEED = (0, 1)
#: The seed of an ``eval_subset`` of the test set, the same for every ``subset_seed``.
TEST_SEED = 0


def balanced_subset(targets: Sequence[int] | np.ndarray, n: int,
                    seed: int | Sequence[int] = 0) -> np.ndarray:
    """Sorted indices of ``n`` samples, class-balanced (counts differ by at most 1) and deterministic.

    Each class's samples are shuffled by ``seed`` (numpy's ``default_rng``); then samples are taken by rank,
    round-robin over classes in label order (so with ``n % K = r`` the first ``r`` classes get one more, and a
    class that runs out is skipped).
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


def split_indices(targets: Sequence[int] | np.ndarray, subset: int | None = None,
                  val_subset: int | None = None,
                  subset_seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """(training indices, validation indices or None) into a training set with labels ``targets``.

    Without ``val_subset`` the training indices are :func:`balanced_subset` ``(targets, subset, subset_seed)``
    (all images when ``subset`` is None), as they always were. With ``val_subset = N``: the validation
    images are ``balanced_subset(targets, N, VALIDATION_SEED)`` of the whole set; the training images are
    the others (``subset`` None) or a class-balanced ``subset`` of the others, drawn by ``subset_seed``. The
    two are disjoint by construction, and the validation images depend on neither ``subset`` nor
    ``subset_seed``.
    """
    targets = np.asarray(targets)
    if not val_subset:
        chosen = balanced_subset(targets, subset, subset_seed) if subset else np.arange(len(targets))
        return chosen, None
    if val_subset >= len(targets):
        raise ValueError(f"val_subset {val_subset} leaves none of the {len(targets)} training images to "
                         "train on")
    val = balanced_subset(targets, val_subset, VALIDATION_SEED)
    pool = np.setdiff1d(np.arange(len(targets)), val, assume_unique=True)
    if subset:
        pool = pool[balanced_subset(targets[pool], subset, subset_seed)]
    return pool, val


def split_sha256(raw: Any, indices: Sequence[int] | np.ndarray) -> str:
    """SHA-256 of the images and labels at ``indices`` of a raw (untransformed) dataset, in order: the indices
    (int64, little-endian), the labels (int64), then the images. For a dataset held in an array (``data``:
    CIFAR, Fashion-MNIST) the images are the pixel bytes of those rows; for one read from files (``samples``:
    ImageFolder) each file's path relative to the dataset's root and its size in bytes (its contents are not
    read: too slow for ImageNet). Cheap: well under a second for CIFAR's 50,000 images. Transforms are code,
    named by the commit, and not part of it."""
    indices = np.asarray(indices, dtype="<i8")
    digest = hashlib.sha256(indices.tobytes())
    digest.update(np.asarray(raw.targets, dtype="<i8")[indices].tobytes())
    data = getattr(raw, "data", None)
    if data is not None:
        array = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
        digest.update(np.ascontiguousarray(array[indices]).tobytes())
    else:
        root = Path(raw.root)
        for k in indices:
            path = Path(raw.samples[int(k)][0])
            digest.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()
