"""The loop: one step, one epoch, evaluation, RNG state. What a batch goes through, and nothing around it.

The path of a batch (:func:`train_one_epoch`)::

    distiller.set_epoch(epoch) (once, before the epoch's first step: per-epoch weights, as tensor data)
    x, y → device (channels_last on CUDA) → autocast(bf16 when the run is bf16) → distiller(x, y)
         → (logits, {name: weighted loss}) → finite check → sum → backward → optimizer.step()

No host sync per step on CUDA: loss sums stay on the device and the finite check runs every
``CUDA_CHECK_EVERY`` steps (every step on CPU).

The fast path (:func:`train_one_epoch_fast`, :mod:`kdlib.fast`) keeps the recipe and changes only how a step
runs::

    DeviceLoader (images resident on the device; seeded permutation, crop + flip, normalise, channels_last)
      → x, y → autocast(bf16) → compiled distiller (CUDA graphs on CUDA; teacher under inference_mode)
      → {name: weighted loss} → sum → backward → fused SGD step → DeviceMetrics (on the device)

and reads the epoch's loss sums, and checks them for non-finite values, once at the end of the epoch. The
DataLoader path above is the reference: same batch size, optimiser, schedule, augmentation distribution
and normalisation; tests show that both give the same loss on the same batch (tests/test_fast.py).
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

try:  # not tqdm.auto: its asyncio variant calls iter() twice (extra loader passes)
    from tqdm import tqdm
except ImportError:  # bench/bench.py runs where only torch is installed: no progress bars there
    tqdm = None

from kdlib import distributed, models
from kdlib.curves import Curves
from kdlib.data import load_data, resolve_dataset_spec
from kdlib.distill import Distiller, eval_mode
from kdlib.fast import (
    CompiledOrEager,
    DeviceLoader,
    DeviceMetrics,
    cast_teacher_weights,
    resolve_precision,
    run_teacher_in_inference_mode,
)
from kdlib.recipes import Recipe

CUDA_CHECK_EVERY = 50  # steps between finite-loss checks on CUDA (avoids a host sync per step)
#: Training steps from which ``torch.compile`` repays its compilation on a CPU. Measured on one thread of an
#: AMD EPYC (AVX2), KD resnet32 -> resnet8, batch 64, fp32: compiling the step took 20-30 s of CPU time and
#: cut a step from 447 to 247 ms, so it pays after about 150 steps; 500 leaves room for slower compilers
#: and smaller savings (a proxy study run has 785 steps; a notebook's default run a few dozen).
CPU_COMPILE_MIN_STEPS = 500

Forward = Callable[..., tuple[Tensor, dict[str, Tensor]]]


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or infinite: the run is recorded as ``diverged``
    (:func:`kdlib.record.record_failures`)."""


@dataclass
class Runtime:
    """Device and speed switches, resolved: everything the batch path needs besides model and data."""

    device: torch.device
    #: bf16 autocast (the run's precision is ``bf16``); every loss term stays float32 (``float32_loss``).
    amp: bool
    channels_last: bool
    progress: bool
    #: Steps between finite-loss checks (each check is a host sync), 1 on CPU, more on CUDA.
    check_every: int = 1
    #: This process's place among the run's processes (one process by default).
    dist: distributed.Dist = field(default_factory=distributed.Dist)
    #: TensorBoard curves (``--tensorboard``, rank 0): each step's loss terms go there, still on the device.
    curves: Curves | None = None

    def to_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()

    def bar(self, iterable: Any, desc: str) -> Any:
        if tqdm is None or not self.progress:
            return iterable
        return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)

    def means(self, sums: dict[str, Tensor], seen: int) -> dict[str, float]:
        """Per-image means of the loss sums over all processes (one host sync)."""
        if not self.dist.enabled:
            return {name: float(total) / seen for name, total in sums.items()}
        totals = torch.stack([torch.as_tensor(v, device=self.device).double() for v in sums.values()]
                             + [torch.tensor(float(seen), dtype=torch.float64, device=self.device)])
        totals = self.dist.sum(totals).tolist()
        return {name: total / totals[-1] for name, total in zip(sums, totals, strict=False)}


# --- seeds and RNG state --------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain numbers (loadable with ``torch.load(weights_only=True)``)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss_next": gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss_next"]))


# --- steps and epochs -----------------------------------------------------------------------------
class TimedIterable:
    """Iterates ``iterable`` and adds the time spent waiting for each item to ``waited`` (seconds)."""

    def __init__(self, iterable: Any) -> None:
        self.iterable = iterable
        self.waited = 0.0

    def __len__(self) -> int:
        return len(self.iterable)

    def __iter__(self) -> Iterator[Any]:
        tick = time.perf_counter()
        iterator = iter(self.iterable)  # loader workers start here: data time too
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                self.waited += time.perf_counter() - tick
                return
            self.waited += time.perf_counter() - tick
            yield item
            tick = time.perf_counter()


class FiniteCheck:
    """Finds the first step whose loss terms are not all finite, naming the term and, for the diagnosis,
    every term of the last step checked finite (the term that exploded is often not the first one to be NaN).

    Checks every ``every`` steps: 1 on CPU (the run stops before the bad step updates the model); on CUDA a
    larger interval avoids a host sync per step (the steps after a bad one may run, but nothing is saved after
    the last good epoch's checkpoint).
    """

    def __init__(self, where: str, every: int = 1, dist: distributed.Dist | None = None) -> None:
        self.where, self.every = where, every
        self.dist = dist or distributed.Dist()  # several processes: all stop at the same step
        self.pending: list[tuple[int, dict[str, Tensor]]] = []
        self.last_good: tuple[int, dict[str, Tensor]] | None = None

    def __call__(self, step: int, losses: dict[str, Tensor]) -> None:
        self.pending.append((step, {k: v.detach() for k, v in losses.items()}))
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        ok = torch.stack(
            [torch.stack([torch.isfinite(v).all() for v in t.values()]).all() for _, t in self.pending]
        )
        if self.dist.enabled:
            ok = self.dist.min(ok.to(torch.int32)).bool()
        if not bool(ok.all()):
            self._raise(int((~ok).nonzero()[0]))
        self.last_good = self.pending[-1]
        self.pending.clear()

    def _raise(self, first_bad: int) -> None:
        step, terms = self.pending[first_bad]
        before = self.pending[first_bad - 1] if first_bad else self.last_good
        name = next((k for k, v in terms.items() if not bool(torch.isfinite(v).all())), None)
        if name is None:
            raise NonFiniteLoss(f"non-finite loss in another process at {self.where}, step {step}"
                                f"{_context(before)}")
        raise nonfinite_loss(self.where, step, {k: v.item() for k, v in terms.items()}, before)


def _context(before: tuple[int, dict[str, Any]] | None) -> str:
    if before is None:
        return ""
    return f" (step {before[0]}: {', '.join(f'{k}={float(v):.4g}' for k, v in before[1].items())})"


def nonfinite_loss(where: str, step: int, terms: dict[str, float],
                   before: tuple[int, dict[str, Any]] | None) -> NonFiniteLoss:
    """The error for step ``step`` of ``where``, whose ``terms`` are not all finite: it names the first such
    term and its value, and every term of the step ``before`` (the last one checked finite), for the
    diagnosis: the term that exploded is often not the first one to be NaN. Both paths raise it."""
    name = next(k for k, v in terms.items() if not math.isfinite(v))
    return NonFiniteLoss(f"non-finite loss term '{name}' = {terms[name]} at {where}, step {step}"
                         f"{_context(before)}")


def run_epoch(
    loss_terms: Callable[[Tensor, Tensor], dict[str, Tensor]],
    loader: Any,
    optimizer: torch.optim.Optimizer,
    where: str,
    rt: Runtime,
    after_backward: Callable[[], None] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``: per batch, the named loss terms (under autocast), the finite check, their
    sum's backward, ``after_backward`` (if any), the optimiser step. Returns each term's per-image mean."""
    check = FiniteCheck(where, rt.check_every, rt.dist)
    sums: dict[str, Tensor] = {}
    seen = 0
    for step, (x, y) in enumerate(rt.bar(loader, where)):
        x, y = rt.to_device(x, y)
        with rt.autocast():
            losses = loss_terms(x, y)
        check(step, losses)
        if rt.curves is not None:
            rt.curves(losses)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value.detach().float() * len(y)
        seen += len(y)
    check.flush()
    return rt.means(sums, seen)


def train_one_epoch(
    forward: Forward, distiller: Distiller, loader: Any, optimizer: torch.optim.Optimizer, epoch: int,
    rt: Runtime,
) -> dict[str, float]:
    """One distillation epoch over ``loader`` at ``epoch`` (1-indexed, passed to ``distiller.set_epoch``
    first); returns the mean of each named loss term (weighted, as summed)."""
    distiller.train()
    distiller.set_epoch(epoch)
    return run_epoch(lambda x, y: forward(x, y)[1], loader, optimizer, f"epoch {epoch}", rt)


def pretrain_one_epoch(
    distiller: Distiller, loader: Any, optimizer: torch.optim.Optimizer, epoch: int, rt: Runtime
) -> dict[str, float]:
    """One epoch of the pre-distillation stage (``distiller.pretrain_loss``; labels unused). This stage
    bypasses DDP, so gradients are averaged over processes by hand."""
    distiller.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return run_epoch(lambda x, y: distiller.pretrain_loss(x), loader, optimizer, f"pretrain epoch {epoch}",
                     rt, after_backward=lambda: rt.dist.average_gradients(params))


def fast_step(
    forward: Forward, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, rt: Runtime
) -> dict[str, Tensor]:
    """One step of the fast path, with no host sync: forward, sum, backward, step; returns the loss terms.

    The epoch's state is the distiller's (``Distiller.set_epoch``), not an argument: the compiled forward
    sees the same Python values at every step of the run."""
    with rt.autocast():
        _, losses = forward(x, y)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()
    return losses


def train_one_epoch_fast(
    forward: Forward, distiller: Distiller, loader: DeviceLoader, optimizer: torch.optim.Optimizer,
    epoch: int, rt: Runtime,
) -> dict[str, float]:
    """:func:`train_one_epoch` on the fast path: batches already on the device, one host sync per epoch.

    Every step's loss terms stay on the device (:class:`kdlib.fast.DeviceMetrics`) and are read, and checked
    for non-finite values, once after the last step; a bad step is reported then, with the same message as
    the reference path's (the steps after it have run, but nothing after the last good epoch's checkpoint is
    saved).
    """
    distiller.train()
    distiller.set_epoch(epoch)  # before the first step: the compiled graph reads the epoch's buffers
    metrics = DeviceMetrics(len(loader), rt.device)
    for x, y in rt.bar(loader, f"epoch {epoch}"):
        metrics.add(fast_step(forward, optimizer, x, y, rt), len(y))
    means = metrics.read()
    steps = metrics.steps_read
    if rt.curves is not None:
        rt.curves.steps(steps)
    bad = next((i for i, terms in enumerate(steps) if not all(map(math.isfinite, terms.values()))), None)
    if bad is not None:
        raise nonfinite_loss(f"epoch {epoch}", bad, steps[bad], (bad - 1, steps[bad - 1]) if bad else None)
    return means


def compile_pays(device: torch.device, steps: int) -> bool:
    """Whether compiling a run of ``steps`` training steps saves time: always on CUDA (CUDA graphs), on a
    CPU from :data:`CPU_COMPILE_MIN_STEPS` steps."""
    return device.type == "cuda" or steps >= CPU_COMPILE_MIN_STEPS


def prepare_fast(distiller: Distiller, rt: Runtime, *, compile: bool, batch_size: int) -> CompiledOrEager:
    """The fast path's forward: the teacher under ``inference_mode``; with ``compile``, ``torch.compile`` for
    ``batch_size`` batches (the smaller last batch of an epoch runs eagerly; CUDA graphs on CUDA), falling
    back to eager execution where compilation is unavailable. One process only: its step updates this
    process's distiller and averages no gradient across processes, so ``rt`` with several is refused here,
    where the step is wired, whatever a caller let through."""
    if rt.dist.world_size > 1:
        raise ValueError(f"the fast path trains in one process, not {rt.dist.world_size}: its step averages "
                         "no gradient across processes (pass --no-fast)")
    run_teacher_in_inference_mode(distiller)
    if rt.amp:  # every teacher call of the run is under autocast: its weights are cast once, here
        cast_teacher_weights(distiller, torch.bfloat16)
    cuda = rt.device.type == "cuda"
    return CompiledOrEager(distiller, enabled=compile, mode="reduce-overhead" if cuda else None,
                           batch_size=batch_size)


# --- optimisers -----------------------------------------------------------------------------------
def sgd(
    params: list[nn.Parameter], lr: float, momentum: float, nesterov: bool, wd: float, fused: bool = False
) -> torch.optim.SGD:
    """SGD; ``fused`` (CUDA, the fast path): one kernel for the whole update, same arithmetic."""
    extra = {"fused": True} if fused else {}
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd, **extra)


def make_optimizer(recipe: Recipe, params: list[nn.Parameter], fused: bool = False) -> torch.optim.Optimizer:
    """The recipe's optimiser for the distillation stage: SGD, or AdamW (default betas and eps)."""
    if recipe.optimizer == "adamw":
        extra = {"fused": True} if fused else {}
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, **extra)
    return sgd(params, recipe.lr, recipe.momentum, recipe.nesterov, recipe.weight_decay, fused=fused)


def make_pretrain_optimizer(recipe: Recipe, params: list[nn.Parameter]) -> torch.optim.SGD:
    """The recipe's SGD for a method's pre-distillation stage (IE-KD's auto-encoder)."""
    return sgd(params, recipe.pretrain_lr, recipe.pretrain_momentum, recipe.pretrain_nesterov,
               recipe.pretrain_weight_decay)


# --- evaluation -----------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, rt: Runtime, desc: str = "eval") -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) of ``model`` in eval mode over ``loader``, and the number of
    ``images`` (with several processes: over every process's share, each image counted once)."""
    correct = torch.zeros(2, dtype=torch.int64, device=rt.device)  # top-1, top-5 hits: read once, at the end
    n = 0
    with eval_mode(model):
        for x, y in rt.bar(loader, desc):
            x, y = rt.to_device(x, y)
            with rt.autocast():
                logits = model(x)
            top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
            hits = top.eq(y[:, None])
            correct += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()])
            n += len(y)
    totals = rt.dist.sum(torch.cat([correct, torch.tensor([n], dtype=torch.int64, device=rt.device)]))
    correct1, correct5, n = totals.tolist()
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "images": n}


def evaluate_checkpoint(
    model: str | None,
    ckpt: str | Path,
    dataset: str,
    *,
    data_root: str | Path | None = None,
    eval_subset: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    workers: int = 2,
    download: bool = True,
    precision: str = "auto",
) -> dict[str, Any]:
    """Top-1/top-5 of a checkpoint (kdlib ``model.pt`` or RepDistiller's ``{'model': ...}``) on a test set,
    in ``precision`` as training resolves it (:func:`~kdlib.fast.resolve_precision`: ``auto`` is bf16 where
    the device computes it natively, else fp32)."""
    dev = distributed.resolve_device(device)
    amp = resolve_precision(precision, dev) == "bf16"
    rt = Runtime(dev, amp=amp, channels_last=False, progress=sys.stderr.isatty())
    spec = resolve_dataset_spec(dataset, data_root)
    net = models.load_teacher(ckpt, model, num_classes=spec.num_classes).to(dev)
    data = load_data(dataset, data_root, batch_size=batch_size, eval_batch_size=batch_size,
                     eval_subset=eval_subset, workers=workers, download=download)
    metrics = evaluate(net, data.test, rt)
    return {"model": models.checkpoint_arch(ckpt, model), "ckpt": str(ckpt), "dataset": dataset,
            "n": metrics.pop("images"), **metrics}
