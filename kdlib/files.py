"""Files written so that no reader ever sees them half-written, and files identified by their content.

- :func:`atomic_write` / :func:`save_json`: the content goes to memory, then to a temporary file in the same
  folder, fsync, ``os.replace``; a run killed mid-write leaves the previous file intact.
- :func:`file_sha256`: what identifies a checkpoint in a run's ``config_id`` (paths never do).
- :func:`append_csv`: rows appended to a measurement table (the benchmarks' CSVs), under one header.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[io.BytesIO], None]) -> None:
    """``write`` the content into memory, then to a temporary file in the same folder, fsync, ``os.replace``:
    ``path`` is never seen half-written, even by a run killed mid-write. A full disk raises ``OSError``
    naming ``path`` (torch.save into a file reports only a zip-writer error) and removes the temporary file.
    """
    buffer = io.BytesIO()
    write(buffer)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OSError(error.errno, f"cannot write '{path}': {error.strerror}") from None
    os.replace(tmp, path)


def save_json(obj: Any, path: Path) -> None:
    """``obj`` as indented JSON (non-JSON values as ``str``), written with :func:`atomic_write`."""

    def write(buffer: io.BytesIO) -> None:
        buffer.write((json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())

    atomic_write(path, write)


def append_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Append ``rows`` to the CSV ``path`` (``\\n`` line ends), writing the header ``columns`` (default: the
    first row's keys) when the file is new or empty. A file whose header is other columns is an error that
    names it, never a table with rows under the wrong header."""
    columns = list(columns if columns is not None else rows[0])
    new = not path.is_file() or path.stat().st_size == 0
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != columns:
            raise ValueError(f"{path} has other columns than these rows; move it aside "
                             f"(expected: {','.join(columns)})")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, remembered per (path, modification time, size): planning a grid hashes the same
    teacher checkpoint once, not once per run."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
