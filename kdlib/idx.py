"""IDX files, the format of MNIST and Fashion-MNIST (LeCun's ``<split>-<images|labels>-idx<N>-ubyte``).

An IDX file of unsigned bytes starts with the magic number ``0x0000 08 N`` (``N`` dimensions), then ``N``
big-endian 32-bit sizes, then the ``prod(sizes)`` bytes of data. torchvision asserts on a file that does not
match (an ``AssertionError`` traceback); :func:`check_idx_split` says which file is damaged instead.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

#: (file name part, dimensions) of a split's two files: images ``(n, 28, 28)``, labels ``(n,)``.
IDX_PARTS = (("images-idx3", 3), ("labels-idx1", 1))


def idx_problem(path: Path, dims: int) -> str | None:
    """Why ``path`` is not an IDX file of bytes with ``dims`` dimensions whose size matches its header (None
    when it is, or when it does not exist)."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        header = f.read(4 + 4 * dims).ljust(4 + 4 * dims, b"\0")
    magic, *shape = struct.unpack(f">{1 + dims}I", header)
    if magic != 0x800 + dims:
        return f"magic number {magic:#010x}, expected {0x800 + dims:#010x}"
    size, expected = path.stat().st_size, len(header) + math.prod(shape)
    return None if size == expected else f"{size} bytes, its header says {expected}"


def check_idx_split(raw: Path, train: bool, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming the first damaged file of a split (``train`` or ``t10k``) in ``raw``."""
    for part, dims in IDX_PARTS:
        path = raw / f"{'train' if train else 't10k'}-{part}-ubyte"
        problem = idx_problem(path, dims)
        if problem:
            raise error(f"'{path}' is not a valid IDX file ({problem}): it is damaged; delete it and "
                             "install the dataset again")
