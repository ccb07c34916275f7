"""One run per output folder: an exclusive lock on ``OUT/.lock``, held for the run's life.

Two processes that train into the same folder would overwrite each other's ``last.pt`` and ``record.json``
(and their temporary files), so :func:`kdlib.train.run` holds this lock (:func:`run_lock`) for the run's life
and a second run on a busy folder fails at once with :class:`FolderInUse`, naming the holder's pid.

The lock is a POSIX record lock (``fcntl.lockf``, ``F_SETLK``) on ``OUT/.lock``. It belongs to the process
that took it, not to the open file: the kernel drops it when that process dies (``kill -9`` included), and a
child forked while it is held (a DataLoader worker) does not inherit it. ``flock`` and Linux open-file-
description locks (``F_OFD_SETLK``) belong to the open file, which a fork shares: orphaned loader workers of a
killed run would hold them until they notice, and a ``--resume`` at once would be refused. A crashed run so
never blocks its own ``--resume``. A record lock is also dropped when its process closes *any* descriptor of
the file, so the holder opens ``OUT/.lock`` once, and one process never takes the same folder twice (a set of
held folders refuses it). The holder removes the file when it finishes normally; a killed run leaves an
unlocked ``.lock`` behind, which is harmless and reused. As the file is removed before it is unlocked, a
process that locked a file which is no longer ``OUT/.lock`` tries again (the usual race of lock files that
get removed).

With ``torch.distributed`` launchers (``WORLD_SIZE`` > 1), only rank 0 takes the lock: the other ranks
share rank 0's run and write nothing of their own to ``OUT``. A ``RANK`` without a ``WORLD_SIZE`` above 1
is no such process: it takes the lock (and :func:`kdlib.config.plan` refuses it first).

Record locks work on NFS too (through its lock manager), unlike ``flock``.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kdlib.distributed import env_rank, env_world_size

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"  # not *.pt: nothing in OUT but checkpoints ends in .pt
_HELD: set[str] = set()  # the folders this process holds (real paths)


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
    if env_rank() != 0 and env_world_size() > 1:  # a process of a run whose rank 0 holds the lock
        yield path
        return
    out.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(out)
    if key in _HELD:  # this process holds it: a second descriptor's close would drop the record lock
        raise FolderInUse(f"--out '{out}' is in use by another kdlib run (pid {os.getpid()}, this process); "
                          "wait for it to finish, or choose another --out")
    fd = _lock(out, path)
    _HELD.add(key)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        _HELD.discard(key)
        try:
            path.unlink()  # before unlocking: see the module docstring
        except FileNotFoundError:
            pass
        except OSError as error:  # e.g. the folder turned read-only: never hide why the run itself stopped
            log.warning("could not remove %s (%s); it is unlocked and harmless", path, error.strerror)
        os.close(fd)


def _lock(out: Path, path: Path) -> int:
    """An open descriptor of ``path`` holding its record lock; :class:`FolderInUse` naming the holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise FolderInUse(
                f"--out '{out}' is in use by another kdlib run ({_holder(path)}); "
                "wait for it to finish, or choose another --out"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # locked a file its holder had just removed: lock the new one
