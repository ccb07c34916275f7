"""Several processes, one run: ``torch.distributed`` as launched by ``torchrun`` (the trainer's DDP helpers).

A run launched with ``torchrun --nproc_per_node N -m kdlib train ...`` (or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) trains with N processes; without those
variables (or with ``WORLD_SIZE=1``) it is the ordinary one-process run. The contract, whatever N:

- **Global batch and learning rate are the recipe's.** Each process takes ``batch_size / N`` images per step
  (an error if N does not divide the batch size) and the optimiser keeps the recipe's learning rate:
  DistributedDataParallel averages the processes' gradients, so a step sees the gradient of the mean loss
  over the global batch.
- **The same global batches.** Every process draws the same seeded permutation of the training set
  (:class:`kdlib.data.EpochSampler`); process r takes positions ``r, r + N, r + 2N, ...`` of it, so global
  batch k is exactly the one-process run's batch k, with the same per-image augmentation (seeded by epoch
  and image index, :class:`kdlib.data.SeededTransform`). The last, partial global batch of an epoch is
  dropped when N > 1 (``len(train) mod batch_size`` images, a different random set each epoch; 143 of
  ImageNet's 1,281,167 at batch 256), so that every step has the full global batch; the one-process run
  keeps it, as before.
- **Evaluation counts every test image exactly once.** Process r evaluates test images ``r, r + N, ...``
  (no padding, no duplicates; shards differ in size by at most one) and the hit and image counts are summed
  over processes (:meth:`Dist.sum`).
- **Only rank 0 writes** the record and checkpoints, and logs; every rank reads ``last.pt`` on ``--resume``.
  Resuming with another process count is allowed: the global batches do not depend on it.
- **BatchNorm**: ``bn="batch"`` (default) normalises with each process's own batch statistics, as the
  torchvision reference scripts do (plain DDP; rank 0's running statistics are broadcast at each step);
  ``bn="sync"`` converts the student's and the method's BatchNorm layers to ``SyncBatchNorm`` (statistics
  over the global batch; CUDA only); ``bn="frozen"`` keeps them in eval mode (running statistics, not
  updated; affine parameters still train), which makes a step independent of how the batch is split.

Backends: ``nccl`` on CUDA (each process on ``cuda:LOCAL_RANK``), ``gloo`` on CPU.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

#: BatchNorm handling under several processes (see the module docstring).
BN_MODES = ("batch", "sync", "frozen")


def _env_int(name: str, default: int, minimum: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(f"{name}={text!r} in the environment is not an integer >= {minimum}; launch "
                         "several processes with torchrun, or unset it")
    return value


def check_launcher_environment() -> None:
    """``ValueError`` naming the variable when the launcher's variables cannot describe a process of a run:
    ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` integers, ``RANK < WORLD_SIZE``, and with ``WORLD_SIZE`` > 1
    ``MASTER_ADDR`` and ``MASTER_PORT`` set (a run never joins a group it cannot reach, nor trains unlocked
    as a rank of a run that does not exist)."""
    world, rank = env_world_size(), env_rank()
    env_local_rank()  # read for its check only: an integer >= 0
    if rank >= world:
        raise ValueError(f"RANK={rank} in the environment is not below WORLD_SIZE={world}; launch several "
                         "processes with torchrun, or unset RANK")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if world > 1 and not os.environ.get(name)]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} in the environment without {' and '.join(missing)}: launch "
                         "several processes with torchrun (which sets them), or unset WORLD_SIZE")


def env_world_size() -> int:
    """The process count a launcher (torchrun) asked for; 1 without one."""
    return _env_int("WORLD_SIZE", 1, 1)


def env_rank() -> int:
    """This process's rank from the launcher's environment (0 without one)."""
    return _env_int("RANK", 0, 0)


def env_local_rank() -> int:
    return _env_int("LOCAL_RANK", 0, 0)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; an unavailable CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"invalid device '{name}'; choose one of: auto, cpu, cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device '{name}' is not available (torch.cuda.is_available() is False); use --device cpu"
        )
    return torch.device(name)


def process_device(device: torch.device) -> torch.device:
    """``device`` for this process: under a launcher, ``cuda`` becomes ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and env_world_size() > 1:
        return torch.device("cuda", env_local_rank())
    return device


def per_process_batch(batch_size: int, world_size: int) -> int:
    """``batch_size / world_size``; an error naming both when it does not divide evenly."""
    if batch_size % world_size:
        raise ValueError(
            f"the global batch size {batch_size} is not divisible by the {world_size} processes; "
            f"choose a batch size that is a multiple of {world_size} or another process count"
        )
    return batch_size // world_size


@dataclass
class Dist:
    """This process's place in the run: rank, process count, backend (``None`` for a one-process run)."""

    rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes records and checkpoints and logs (rank 0)."""
        return self.rank == 0

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over processes (in place; returned for convenience)."""
        if self.enabled:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def min(self, tensor: Tensor) -> Tensor:
        """Element-wise minimum over processes (in place)."""
        if self.enabled:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MIN)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def average_gradients(self, params: Iterator[nn.Parameter] | list[nn.Parameter]) -> None:
        """Average ``.grad`` over processes, for steps that do not go through DDP (IE-KD's stage A)."""
        if not self.enabled:
            return
        for p in params:
            if p.grad is not None:
                torch_dist.all_reduce(p.grad, op=torch_dist.ReduceOp.SUM)
                p.grad.div_(self.world_size)

    def describe(self, batch_size: int, images_per_epoch: int, bn: str) -> dict[str, object]:
        """What the record says about how the run was split (``record['distributed']``)."""
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "per_process_batch": batch_size // self.world_size,
            "global_batch": batch_size,
            "images_per_epoch": images_per_epoch,
            "bn": bn,
        }


@contextmanager
def process_group(device: torch.device, timeout_s: float = 1800.0) -> Iterator[Dist]:
    """Join the launcher's process group for the duration of a run (nothing to join in a one-process run).

    Initialises ``torch.distributed`` from the environment (``nccl`` on CUDA, ``gloo`` on CPU) unless it is
    already initialised (then it is used and left alone), and destroys a group it created on exit.
    """
    world = env_world_size()
    if world == 1 and not torch_dist.is_initialized():
        yield Dist()
        return
    created = False
    if not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        created = True
    try:
        yield Dist(torch_dist.get_rank(), torch_dist.get_world_size(), str(torch_dist.get_backend()))
    finally:
        if created:
            torch_dist.destroy_process_group()


def _frozen_train(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def freeze_batchnorm(module: nn.Module) -> int:
    """Keep every BatchNorm layer of ``module`` in eval mode from now on (running statistics used, not
    updated; weight and bias still train); returns the number of layers."""
    count = 0
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            m.train = _frozen_train.__get__(m)  # an instance attribute: the module's train() ignores ``mode``
            m.eval()
            count += 1
    return count


def apply_bn_mode(distiller: nn.Module, mode: str) -> None:
    """Apply ``bn`` (:data:`BN_MODES`) to the distiller's trainable parts (never to the frozen teacher)."""
    if mode not in BN_MODES:
        raise ValueError(f"invalid bn '{mode}'; choose one of: {', '.join(BN_MODES)}")
    if mode == "batch":
        return
    for name, child in list(distiller.named_children()):
        if name == "teacher":
            continue
        if mode == "sync":
            setattr(distiller, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            freeze_batchnorm(child)
