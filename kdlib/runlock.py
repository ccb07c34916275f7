"""One run per output folder: an exclusive lock on ``OUT/.lock``, held for the run's life.

Two processes that train into the same folder would overwrite each other's ``last.pt`` and ``record.json``
(and their temporary files), so :func:`kdlib.train.run` holds this lock (:func:`run_lock`) for the run's life
and a second run on a busy folder fails at once with :class:`FolderInUse`, naming the holder's pid.

The lock is ``fcntl.flock`` on ``OUT/.lock``: the kernel drops it when its holder closes the file or dies
(``kill -9`` included), so a crashed run never blocks its own ``--resume``. The holder removes the file when
it finishes normally; a killed run leaves an unlocked ``.lock`` behind, which is harmless and reused. As the
file is removed before it is unlocked, a process that locked a file which is no longer ``OUT/.lock``
tries again (the usual race of lock files that get removed).

With ``torch.distributed`` launchers (``RANK`` set and not 0), only rank 0 takes the lock: the other ranks
share rank 0's run and write nothing of their own to ``OUT``.

Local file systems only: ``flock`` on NFS may be emulated or not shared between hosts.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"  # not *.pt: nothing in OUT but checkpoints ends in .pt


class FolderInUse(RuntimeError):
    """Another live process holds ``OUT/.lock``: it is training into the same folder."""


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


@contextmanager
def run_lock(out: str | Path) -> Iterator[Path]:
    """Hold ``out/.lock`` (creating ``out``) for the ``with`` block; :class:`FolderInUse` if another process
    holds it. Yields the lock file's path."""
    out = Path(out)
    path = out / LOCK_NAME
    if int(os.environ.get("RANK", "0") or 0) != 0:  # a non-zero distributed rank: rank 0 holds the lock
        yield path
        return
    out.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUse(
                f"--out '{out}' is in use by another kdlib run ({_holder(path)}); "
                "wait for it to finish, or choose another --out"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a file its holder had just removed: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        try:
            path.unlink()  # before unlocking: see the module docstring
        except FileNotFoundError:
            pass
        os.close(fd)
