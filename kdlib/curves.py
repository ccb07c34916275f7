"""A run's training curves as TensorBoard scalars (``--tensorboard``), event files in the run's folder.

``tensorboard --logdir runs/`` then shows every run of a grid side by side, each named by its folder. The
scalars, all against one step axis (optimiser steps since the run began, IE-KD's stage A first):

- per step: each named loss term, ``step/<term>`` (stage A: ``pretrain_step/<term>``), and their sum
  ``step/loss`` (the fast path writes an epoch's steps at its end, when it reads them from the device);
- per epoch, at its last step: each term's mean ``epoch/<term>`` and ``epoch/loss``, ``epoch/top1``,
  ``epoch/top5``, ``epoch/lr`` (the rate the epoch trained with), ``epoch/images_per_s`` (training images per
  second of compute and data time), ``epoch/data_s`` and ``epoch/compute_s``.

No host sync per step on CUDA: a step's loss terms stay on the device until :meth:`Curves.flush`, which copies
every pending step in one transfer. The trainer flushes every ``Runtime.check_every`` steps, at the step
where the finite-loss check already synchronises (every step on CPU, every 50 on CUDA), and at the end of
each epoch. Under several processes only rank 0 writes, its own share of the batch.

A resumed run opens a writer with ``purge_step`` at its resume point, so TensorBoard drops the steps that the
killed process logged after its last checkpoint and the resumed process repeats. The curves are provenance,
never identity: ``--tensorboard`` does not change the run's ``config_id``.

The ``tensorboard`` package is an optional extra (``pip install 'kdlib[tensorboard]'``);
:func:`check_available` says so in one line when it is missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: What a run without the ``tensorboard`` package is told.
MISSING = "--tensorboard needs the tensorboard package: pip install 'kdlib[tensorboard]'"


def check_available() -> None:
    """``ValueError`` in one line when the ``tensorboard`` package is missing (:data:`MISSING`) or does not
    import (a broken install): checked when the run is planned, before any data loads."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError(MISSING)
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except Exception as error:  # a broken install fails in many ways (ImportError, AttributeError, ...)
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise ValueError(f"--tensorboard: the tensorboard package does not import ({reason}); reinstall it: "
                         "pip install --force-reinstall 'kdlib[tensorboard]'") from None


class Curves:
    """The TensorBoard writer of one run (rank 0): step and epoch scalars on one step axis."""

    def __init__(self, out: str | Path, steps_per_epoch: int, every: int = 1, epochs_done: int = 0) -> None:
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.steps_per_epoch, self.every = steps_per_epoch, every
        self.step = epochs_done * steps_per_epoch
        self.prefix = "step"
        self.pending: list[tuple[int, dict[str, Tensor]]] = []
        self.writer = SummaryWriter(str(out), purge_step=self.step if epochs_done else None)

    def begin(self, epochs_done: int, pretrain: bool = False) -> None:
        """Start an epoch after ``epochs_done`` epochs of both stages (its steps follow theirs)."""
        self.flush()
        self.step = epochs_done * self.steps_per_epoch
        self.prefix = "pretrain_step" if pretrain else "step"

    def __call__(self, losses: dict[str, Tensor]) -> None:
        """One optimiser step's loss terms, kept on the device until :meth:`flush`: every ``every`` steps of
        an epoch, the steps where the trainer's finite-loss check synchronises."""
        self.step += 1
        self.pending.append((self.step, {k: v.detach() for k, v in losses.items()}))
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        """Write the pending steps: one device-to-host copy for all of them."""
        if not self.pending:
            return
        names = list(self.pending[0][1])
        values = torch.stack([torch.stack([terms[n].float() for n in names]) for _, terms in self.pending])
        for (step, _), row in zip(self.pending, values.tolist(), strict=True):
            self._write(step, dict(zip(names, row, strict=True)))
        self.pending.clear()

    def steps(self, steps: list[dict[str, float]]) -> None:
        """The fast path's steps, each ``{term: value}``, read at the end of its epoch."""
        for terms in steps:
            self.step += 1
            self._write(self.step, terms)

    def _write(self, step: int, terms: dict[str, float]) -> None:
        for name, value in terms.items():
            self.writer.add_scalar(f"{self.prefix}/{name}", value, step)
        self.writer.add_scalar(f"{self.prefix}/loss", sum(terms.values()), step)

    def epoch(self, scalars: dict[str, Any]) -> None:
        """An epoch's scalars (``epoch/<name>``) at its last step."""
        self.flush()
        for name, value in scalars.items():
            self.writer.add_scalar(f"epoch/{name}", float(value), self.step)
        self.writer.flush()

    def close(self) -> None:
        self.flush()
        self.writer.close()
