"""The training loop: one method, one student (and teacher), one recipe, one seed → ``OUT/record.json``.

The path of a batch (:func:`train_one_epoch`)::

    distiller.set_epoch(epoch) (once, before the epoch's first step: per-epoch weights, as tensor data)
    x, y → device (channels_last on CUDA) → autocast(bf16 on CUDA) → distiller(x, y)
         → (logits, {name: weighted loss}) → finite check → sum → backward → optimizer.step()

No host sync per step on CUDA: loss sums stay on the device and the finite check runs every
``CUDA_CHECK_EVERY`` steps (every step on CPU).

The fast path (``TrainConfig.fast``, on by default on CUDA; :func:`train_one_epoch_fast`, :mod:`kdlib.fast`)
keeps the recipe and changes only how a step runs::

    DeviceLoader (images resident on the device; seeded permutation, crop + flip, normalise, channels_last)
      → x, y → autocast(bf16) → compiled distiller (CUDA graphs; teacher under inference_mode)
      → {name: weighted loss} → sum → backward → fused SGD step → DeviceMetrics (on the device)

and reads the epoch's loss sums, and checks them for non-finite values, once at the end of the epoch. The
DataLoader path above is the reference: same batch size, optimiser, schedule, augmentation distribution
and normalisation; tests show that both give the same loss on the same batch (tests/test_fast.py).

Around it (:func:`train`): seed everything; load data, teacher (evaluated once, its accuracy recorded) and
student; IE-KD's stage A (``distiller.pretraining = True``, the recipe's pre-distillation optimiser, then
False); then per epoch: reseed from ``(seed, epoch)``, train, step the MultiStepLR schedule, evaluate
top-1/top-5, and atomically write ``OUT/last.pt`` (resume state), ``OUT/model.pt`` (the student,
RepDistiller format) and ``OUT/record.json`` (the run record, see :func:`new_record`).

Several processes (``torchrun``; :mod:`kdlib.distributed`): the distiller is wrapped in
DistributedDataParallel (gloo on CPU, nccl on CUDA); the recipe's batch is the global batch, split evenly,
and its learning rate is kept; every process draws the same global batches (the last partial one is dropped);
loss means and evaluation counts are summed over processes, each test image evaluated once; only rank 0
writes the record and checkpoints; ``--resume`` loads ``last.pt`` in every process.

Where each epoch's time went is in the record's ``epoch_times`` (beside ``history``, which holds only what a
resumed run reproduces exactly): ``data_s``, the time spent waiting for the next batch (loader workers, or the
fast path's on-device augmentation), and ``compute_s``, the rest of the training epoch (forward, backward,
step; on CUDA measured without per-step syncs, the epoch ending with one), both on rank 0.

Determinism and resume: each epoch starts by reseeding python, numpy and torch and the loader (order and
per-sample augmentation, :mod:`kdlib.data`) from ``(seed, epoch)``, so epoch k does not depend on whether
epochs 1..k-1 ran in this process; model, optimiser, scheduler and history come from ``last.pt``. On CPU a
resumed run ends with exactly the metrics of an uninterrupted one (tested). RNG states are stored in
``last.pt`` too (as tensors, so ``torch.load(weights_only=True)`` reads the file) and restored on resume.

A non-finite loss term stops the run at that step (the fast path: at the end of that epoch): the last good
checkpoint is kept, the record is marked ``diverged`` with a reason naming the term, epoch and step, and
:class:`TrainingFailed` is raised. Any other exception marks it ``failed`` (``interrupted`` for Ctrl-C).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import io
import json
import logging
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
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

from kdlib import distributed, models, weights
from kdlib.data import Data, get_dataset_spec, load_data, mix_seed, resolve_dataset_spec
from kdlib.distill import Distiller, MethodConfig
from kdlib.fast import CompiledOrEager, DeviceLoader, DeviceMetrics, run_teacher_in_inference_mode
from kdlib.methods import build_distiller, get_method, make_config, variant_string
from kdlib.recipes import Recipe, get_recipe
from kdlib.runlock import one_run_per_folder

log = logging.getLogger(__name__)

RECORD_VERSION = 1
CHECKPOINT_VERSION = 1
_PRETRAIN_STAGE, _DISTILL_STAGE = 1, 2  # mixed into the epoch seeds
CUDA_CHECK_EVERY = 50  # steps between finite-loss checks on CUDA (avoids a host sync per step)


@dataclass
class TrainConfig:
    """One training run. ``None`` fields take the recipe's value (``epochs``, ``batch_size``) or a default.

    ``variant``: method option overrides (``make_config``); ``recipe_overrides``: recipe fields (``--set``).
    ``amp`` (bf16 autocast), ``channels_last`` and ``compile`` (``torch.compile``) apply on CUDA only.
    ``fast``: the fast path (:mod:`kdlib.fast`; None: on CUDA only); ``compile`` None: with the fast path.
    ``teacher_ckpt`` and ``student_weights`` (the student's initialisation; None: random) are files, or
    ``"torchvision"`` for torchvision's published weights of the architecture (:mod:`kdlib.weights`).
    ``bn``: BatchNorm of the student and the method's parts, ``batch`` | ``sync`` | ``frozen``
    (:mod:`kdlib.distributed`).
    """

    method: str
    student: str
    dataset: str
    out: str | Path
    teacher: str | None = None
    teacher_ckpt: str | Path | None = None
    recipe: str = "repdistiller"
    epochs: int | None = None
    subset: int | None = None
    eval_subset: int | None = None
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"
    variant: dict[str, Any] = field(default_factory=dict)
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    data_root: str | Path | None = None
    resume: bool = False
    workers: int = 2
    amp: bool = True
    channels_last: bool = True
    compile: bool | None = None
    fast: bool | None = None
    progress: bool | None = None  # None: only when stderr is a terminal
    download: bool = True
    student_weights: str | Path | None = None
    bn: str = "batch"


class TrainingFailed(RuntimeError):
    """The run stopped (a non-finite loss); ``record`` is its run record (``diverged``), already written."""

    def __init__(self, reason: str, record: dict[str, Any]) -> None:
        super().__init__(reason)
        self.record = record


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or infinite (caught by :func:`train`, which raises :class:`TrainingFailed`)."""


class ResumeError(ValueError):
    """``--resume`` found a checkpoint that does not belong to this configuration."""


# --- validation (nothing loaded) ------------------------------------------------------------------
@dataclass
class Plan:
    """A validated :class:`TrainConfig`: the resolved method configuration, recipe and device."""

    config: TrainConfig
    method_config: MethodConfig
    recipe: Recipe
    device: torch.device
    needs_teacher: bool
    #: Processes the run is split over (``WORLD_SIZE`` of a launcher such as torchrun; 1 without one).
    world_size: int = 1


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


def _check_model(name: str, role: str) -> None:
    if name not in models.available():
        raise ValueError(f"unknown {role} '{name}'; choose one of: {', '.join(models.available())}")


def plan(config: TrainConfig) -> Plan:
    """Validate every field of ``config`` without loading data or models; errors name the bad value."""
    method = get_method(config.method)
    method_config = make_config(config.method, config.variant)
    _check_model(config.student, "student")
    if config.teacher is not None:
        _check_model(config.teacher, "teacher")
    spec = get_dataset_spec(config.dataset)
    if not method.needs_teacher and (config.teacher or config.teacher_ckpt):
        raise ValueError(f"method '{config.method}' trains without a teacher; drop --teacher/--teacher-ckpt")
    if method.needs_teacher and not config.teacher_ckpt:
        raise ValueError(
            f"method '{config.method}' needs a teacher: pass --teacher-ckpt PATH "
            "(a model.pt from a '--method ce' run or a RepDistiller checkpoint)"
        )
    if weights.is_torchvision(config.teacher_ckpt):
        if config.teacher is None:
            choices = ", ".join(weights.TORCHVISION_WEIGHTS)
            raise ValueError(f"--teacher-ckpt {weights.TORCHVISION} needs --teacher, one of: {choices}")
        weights.torchvision_weights_name(config.teacher)
    elif config.teacher_ckpt is not None and not Path(config.teacher_ckpt).is_file():
        raise ValueError(f"teacher checkpoint '{config.teacher_ckpt}' does not exist")
    if weights.is_torchvision(config.student_weights):
        weights.torchvision_weights_name(config.student)
    elif config.student_weights is not None and not Path(config.student_weights).is_file():
        raise ValueError(f"student weights '{config.student_weights}' do not exist")
    if config.bn not in distributed.BN_MODES:
        raise ValueError(f"invalid bn '{config.bn}'; choose one of: {', '.join(distributed.BN_MODES)}")
    for name in ("epochs", "subset", "eval_subset", "batch_size"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not isinstance(config.workers, int) or config.workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {config.workers!r}")
    overrides = dict(config.recipe_overrides)
    if config.epochs is not None:
        overrides["epochs"] = config.epochs
    if config.batch_size is not None:
        overrides["batch_size"] = config.batch_size
    recipe = get_recipe(config.recipe, config.student, **overrides)
    spec.with_image_size(recipe.image_size)  # a fixed-size dataset refuses another image size
    world_size = distributed.env_world_size()
    distributed.per_process_batch(recipe.batch_size, world_size)
    device = distributed.process_device(resolve_device(config.device))
    if config.fast and world_size > 1:
        raise ValueError(f"the fast path (--fast) runs in one process, not {world_size}; drop --fast")
    if config.fast and not spec.device_resident:
        raise ValueError(f"the fast path keeps the whole dataset on the device, too much for '{spec.name}'")
    if config.bn == "sync" and device.type != "cuda":
        raise ValueError("bn 'sync' (SyncBatchNorm) needs CUDA; choose one of: batch, frozen")
    return Plan(config, method_config, recipe, device, method.needs_teacher, world_size)


# --- small utilities ------------------------------------------------------------------------------
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
    def write(buffer: io.BytesIO) -> None:
        buffer.write((json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())

    atomic_write(path, write)


def file_sha256(path: str | Path) -> str:
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


def git_info() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the repository holding this package; (None, None) outside git."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    return (
        commit.stdout.strip() or None if commit.returncode == 0 else None,
        bool(status.stdout.strip()) if status.returncode == 0 else None,
    )


def hardware(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def config_id(identity: dict[str, Any]) -> str:
    """Short hash of the resolved configuration (what determines the result; no commit, time or paths)."""
    text = json.dumps(_jsonable(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- the loop -------------------------------------------------------------------------------------
@dataclass
class Runtime:
    """Device and speed switches, resolved: everything the batch path needs besides model and data."""

    device: torch.device
    amp: bool
    channels_last: bool
    progress: bool
    #: Steps between finite-loss checks (each check is a host sync), 1 on CPU, more on CUDA.
    check_every: int = 1
    #: This process's place among the run's processes (one process by default).
    dist: distributed.Dist = field(default_factory=distributed.Dist)

    def to_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

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
            first_bad = int((~ok).nonzero()[0])
            step, terms = self.pending[first_bad]
            before = self.pending[first_bad - 1] if first_bad else self.last_good
            context = ""
            if before is not None:
                values = ", ".join(f"{k}={v.item():.4g}" for k, v in before[1].items())
                context = f" (step {before[0]}: {values})"
            name = next((k for k, v in terms.items() if not bool(torch.isfinite(v).all())), None)
            if name is None:
                raise NonFiniteLoss(f"non-finite loss in another process at {self.where}, step {step}"
                                    f"{context}")
            raise NonFiniteLoss(
                f"non-finite loss term '{name}' = {terms[name].item()} at {self.where}, step {step}{context}"
            )
        self.last_good = self.pending[-1]
        self.pending.clear()


def train_one_epoch(
    forward: Callable[..., tuple[Tensor, dict[str, Tensor]]],
    distiller: Distiller,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    rt: Runtime,
) -> dict[str, float]:
    """One pass over ``loader`` at ``epoch`` (1-indexed, passed to ``distiller.set_epoch`` first); returns the
    mean of each named loss term (weighted, as summed)."""
    distiller.train()
    distiller.set_epoch(epoch)
    check = FiniteCheck(f"epoch {epoch}", rt.check_every, rt.dist)
    sums: dict[str, Tensor] = {}
    seen = 0
    for step, (x, y) in enumerate(rt.bar(loader, f"epoch {epoch}")):
        x, y = rt.to_device(x, y)
        with rt.autocast():
            _, losses = forward(x, y)
        check(step, losses)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value.detach().float() * len(y)
        seen += len(y)
    check.flush()
    return rt.means(sums, seen)


def fast_step(
    forward: Callable[..., tuple[Tensor, dict[str, Tensor]]],
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    rt: Runtime,
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
    forward: Callable[..., tuple[Tensor, dict[str, Tensor]]],
    distiller: Distiller,
    loader: DeviceLoader,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    rt: Runtime,
) -> dict[str, float]:
    """:func:`train_one_epoch` on the fast path: batches already on the device, one host sync per epoch.

    The loss sums stay on the device (:class:`kdlib.fast.DeviceMetrics`) and are read, and checked for
    non-finite values, once after the last step; a bad step is reported then (steps after it have run,
    but nothing after the last good epoch's checkpoint is saved).
    """
    distiller.train()
    distiller.set_epoch(epoch)  # before the first step: the compiled graph reads the epoch's buffers
    metrics = DeviceMetrics(len(loader), rt.device)
    for x, y in rt.bar(loader, f"epoch {epoch}"):
        metrics.add(fast_step(forward, optimizer, x, y, rt), len(y))
    means, bad_step = metrics.read()
    if bad_step is not None:
        name = next((k for k, v in means.items() if not np.isfinite(v)), "total")
        raise NonFiniteLoss(f"non-finite loss term '{name}' at epoch {epoch}, step {bad_step} "
                            "(fast path: found at the end of the epoch)")
    return means


def prepare_fast(distiller: Distiller, rt: Runtime, *, compile: bool, batch_size: int) -> CompiledOrEager:
    """The fast path's forward: the teacher under ``inference_mode``; on CUDA, ``torch.compile`` with CUDA
    graphs for ``batch_size`` batches (the smaller last batch of an epoch runs eagerly), falling back to
    eager execution where compilation is unavailable."""
    run_teacher_in_inference_mode(distiller)
    cuda = rt.device.type == "cuda"
    return CompiledOrEager(distiller, enabled=compile and cuda, mode="reduce-overhead" if cuda else None,
                           batch_size=batch_size)


def pretrain_one_epoch(
    distiller: Distiller, loader: Any, optimizer: torch.optim.Optimizer, epoch: int, rt: Runtime
) -> dict[str, float]:
    """One epoch of the pre-distillation stage (``distiller.pretrain_loss``; labels unused)."""
    distiller.train()
    check = FiniteCheck(f"pretrain epoch {epoch}", rt.check_every, rt.dist)
    sums: dict[str, Tensor] = {}
    seen = 0
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for step, (x, y) in enumerate(rt.bar(loader, f"pretrain {epoch}")):
        x, _ = rt.to_device(x, y)
        with rt.autocast():
            losses = distiller.pretrain_loss(x)
        check(step, losses)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        rt.dist.average_gradients(params)  # this stage bypasses DDP: average by hand
        optimizer.step()
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value.detach().float() * len(x)
        seen += len(x)
    check.flush()
    return rt.means(sums, seen)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, rt: Runtime, desc: str = "eval") -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) of ``model`` in eval mode over ``loader``, and the number of
    ``images`` (with several processes: over every process's share, each image counted once)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(2, dtype=torch.int64, device=rt.device)  # top-1, top-5 hits: read once, at the end
    n = 0
    for x, y in rt.bar(loader, desc):
        x, y = rt.to_device(x, y)
        with rt.autocast():
            logits = model(x)
        top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        hits = top.eq(y[:, None])
        correct += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()])
        n += len(y)
    model.train(was_training)
    totals = rt.dist.sum(torch.cat([correct, torch.tensor([n], dtype=torch.int64, device=rt.device)]))
    correct1, correct5, n = totals.tolist()
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "images": n}


def _sgd(
    params: list[nn.Parameter], lr: float, momentum: float, nesterov: bool, wd: float, fused: bool = False
) -> torch.optim.SGD:
    """SGD; ``fused`` (CUDA, the fast path): one kernel for the whole update, same arithmetic."""
    extra = {"fused": True} if fused else {}
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd, **extra)


def _optimizer(recipe: Recipe, params: list[nn.Parameter], fused: bool = False) -> torch.optim.Optimizer:
    """The recipe's optimiser for the distillation stage: SGD, or AdamW (default betas and eps)."""
    if recipe.optimizer == "adamw":
        extra = {"fused": True} if fused else {}
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, **extra)
    return _sgd(params, recipe.lr, recipe.momentum, recipe.nesterov, recipe.weight_decay, fused=fused)


def _trainable_state(distiller: Distiller) -> dict[str, Tensor]:
    """The distiller's state without the teacher (the student and the method's parts)."""
    return {k: v for k, v in distiller.state_dict().items() if not k.startswith("teacher.")}


def _teacher_arch(ckpt: str | Path, given: str | None) -> str | None:
    if given:
        return given
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=True).get("arch")
    except Exception:  # the loader reports unreadable files properly
        return None


def precision_of(config: TrainConfig, device: torch.device) -> str:
    """The record's ``precision`` (part of ``config_id``): ``bf16`` autocast on CUDA unless ``amp`` is off,
    else ``fp32``."""
    return "bf16" if config.amp and device.type == "cuda" else "fp32"


def config_id_of(config: TrainConfig) -> str:
    """The ``config_id`` :func:`train` writes for ``config``, computed without training: the same
    :func:`plan`, teacher and student-weights identities (the file each weights argument resolves to, its
    SHA-256; ``torchvision`` weights are downloaded if missing, as the run would), precision and
    :func:`new_record`."""
    p = plan(config)
    teacher, sha, student = None, None, None
    if p.needs_teacher:
        file, _ = weights.resolve_weights(config.teacher_ckpt, config.teacher)
        teacher, sha = _teacher_arch(file, config.teacher), file_sha256(file)
    if config.student_weights is not None:
        file, text = weights.resolve_weights(config.student_weights, config.student)
        student = (text, file_sha256(file))
    return new_record(p, teacher, sha, precision_of(config, p.device), student)["config_id"]


def new_record(
    p: Plan,
    teacher: str | None,
    teacher_sha: str | None,
    precision: str,
    student_weights: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The run record's fixed part (see :mod:`kdlib.results` for how records are read).

    ``student_weights``: (description, SHA-256) of the student's initial weights (default: read from
    ``config.student_weights`` when it is a file). Options added after record version 1 (student weights,
    ``bn``, the recipe's :data:`~kdlib.recipes.LATER_FIELDS`) enter ``config_id`` only when set, so runs
    without them keep their earlier ``config_id``; the process count never does (like the hardware).
    """
    c = p.config
    if student_weights is None and c.student_weights and not weights.is_torchvision(c.student_weights):
        student_weights = (str(c.student_weights), file_sha256(c.student_weights))
    identity = {
        "method": c.method,
        "method_config": dataclasses.asdict(p.method_config),
        "teacher": teacher,
        "teacher_ckpt_sha256": teacher_sha,
        "student": c.student,
        "dataset": c.dataset,
        "subset": c.subset,
        "eval_subset": c.eval_subset,
        "recipe": p.recipe.identity(),
        "seed": c.seed,
        "precision": precision,
    }
    if student_weights is not None:
        identity["student_weights_sha256"] = student_weights[1]
    if c.bn != "batch":
        identity["bn"] = c.bn
    commit, dirty = git_info()
    return {
        "record_version": RECORD_VERSION,
        "status": "running",
        "config_id": config_id(identity),
        "method": c.method,
        "variant": variant_string(p.method_config),
        "method_config": _jsonable(dataclasses.asdict(p.method_config)),
        "teacher": teacher,
        "teacher_ckpt": str(c.teacher_ckpt) if c.teacher_ckpt else None,
        "teacher_ckpt_sha256": teacher_sha,
        "student": c.student,
        "dataset": c.dataset,
        "subset": c.subset,
        "eval_subset": c.eval_subset,
        "recipe_name": p.recipe.name,
        "recipe": p.recipe.as_dict(),
        "seed": c.seed,
        "epochs": p.recipe.epochs,
        "precision": precision,
        "teacher_top1": None,
        "teacher_top5": None,
        "pretrain_history": [],
        "history": [],
        "top1_last": None,
        "top5_last": None,
        "top1_best": None,
        "top5_best": None,
        "best_epoch": None,
        "wall_time_s": 0.0,
        "images_per_s": None,
        "device": str(p.device),
        "hardware": hardware(p.device),
        "torch_version": str(torch.__version__),
        "git_commit": commit,
        "git_dirty": dirty,
        "created_at": _now(),
        "updated_at": None,
        "failure_reason": None,
        "resumes": [],
        "student_weights": student_weights[0] if student_weights else None,
        "student_weights_sha256": student_weights[1] if student_weights else None,
        "bn": c.bn,
        "test_images": None,
        "epoch_times": [],  # per epoch: data_s (waiting for batches), compute_s (the rest of training)
    }


def _summarise_history(record: dict[str, Any]) -> None:
    history = record["history"]
    if not history:
        return
    best = max(history, key=lambda h: (h["top1"], -h["epoch"]))  # earliest epoch among ties
    record.update(
        top1_last=history[-1]["top1"],
        top5_last=history[-1]["top5"],
        top1_best=best["top1"],
        top5_best=best["top5"],
        best_epoch=best["epoch"],
    )


@contextmanager
def _record_failures(record: dict[str, Any], out: Path, write: bool = True) -> Iterator[None]:
    """On an exception, mark the record (with the reason), write it (if ``write``) and re-raise: ``diverged``
    for a non-finite loss (a result of the configuration: the same seed diverges again), ``failed`` for
    anything else (an interruption, a crash: worth retrying)."""
    try:
        yield
    except NonFiniteLoss as error:
        record.update(status="diverged", failure_reason=str(error))
        if write:
            save_json(record, out / "record.json")
            log.error("run diverged: %s (last good checkpoint kept in %s)", error, out)
        raise TrainingFailed(str(error), record) from None
    except BaseException as error:
        reason = "interrupted" if isinstance(error, KeyboardInterrupt) else f"{type(error).__name__}: {error}"
        record.update(status="failed", failure_reason=reason)
        if write:
            save_json(record, out / "record.json")
        raise


@one_run_per_folder(validate=plan)  # OUT/.lock held for the run's life: one process per folder
def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume) one training run and return its record (also in ``OUT/record.json``).

    Under a launcher (``torchrun``) this process first joins the run's process group
    (:mod:`kdlib.distributed`).
    """
    p = plan(config)
    with distributed.process_group(p.device) as dist:
        return _train_process(p, dist)


def _weights_file(spec: str | Path, arch: str | None, dist: distributed.Dist) -> tuple[Path, str]:
    """(file, description) of a weights argument; ``torchvision`` is downloaded by rank 0 before the others
    look for it (:func:`kdlib.weights.resolve_weights`)."""
    if not weights.is_torchvision(spec):
        return Path(spec), str(spec)
    if dist.is_main:
        found = weights.resolve_weights(spec, arch)
    dist.barrier()
    if not dist.is_main:
        found = weights.resolve_weights(spec, arch)
    return found


def _train_process(p: Plan, dist: distributed.Dist) -> dict[str, Any]:
    """:func:`train` in one process (rank ``dist.rank`` of ``dist.world_size``; only rank 0 writes)."""
    config = p.config
    c, recipe, device = config, p.recipe, p.device
    out = Path(c.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = device.type == "cuda"
    rt = Runtime(
        device,
        amp=c.amp and cuda,
        channels_last=c.channels_last and cuda,
        progress=(sys.stderr.isatty() if c.progress is None else c.progress) and dist.is_main,
        check_every=CUDA_CHECK_EVERY if cuda else 1,
        dist=dist,
    )
    spec = resolve_dataset_spec(c.dataset, c.data_root, recipe.image_size)  # ImageNet: its class folders
    fast = (cuda and spec.device_resident and not dist.enabled) if c.fast is None else c.fast
    if cuda:
        torch.backends.cudnn.benchmark = True

    # teacher (first: a bad checkpoint fails fast), data, student, distiller
    teacher_model, teacher_name, teacher_sha = None, None, None
    if p.needs_teacher:
        teacher_file, teacher_text = _weights_file(c.teacher_ckpt, c.teacher, dist)
        teacher_name = _teacher_arch(teacher_file, c.teacher)
        teacher_model = models.load_teacher(teacher_file, c.teacher, num_classes=spec.num_classes)
        teacher_sha = file_sha256(teacher_file)
    student_weights = None
    if c.student_weights is not None:
        student_file, student_text = _weights_file(c.student_weights, c.student, dist)
        initial = models.load_teacher(student_file, c.student, num_classes=spec.num_classes).state_dict()
        student_weights = (student_text, file_sha256(student_file))
    data: Data = load_data(
        c.dataset,
        c.data_root,
        batch_size=recipe.batch_size,
        subset=c.subset,
        eval_subset=c.eval_subset,
        pad_mode=recipe.pad_mode,
        workers=c.workers,
        seed=c.seed,
        download=c.download,
        pin_memory=cuda,
        image_size=recipe.image_size,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    seed_everything(c.seed)
    student = models.create_model(c.student, num_classes=spec.num_classes)
    if c.student_weights is not None:  # after create_model: the same random draws as a run from scratch
        student.load_state_dict(initial)
    distiller = build_distiller(
        c.method, student, teacher_model, p.method_config, input_shape=spec.input_shape
    )
    distiller.total_epochs = recipe.epochs  # per-epoch loss weights (EDT) scale to the schedule
    distiller.world_size = dist.world_size  # losses normalised by the squared batch use the global one
    distributed.apply_bn_mode(distiller, c.bn)
    distiller.to(device)
    if rt.channels_last:
        distiller.to(memory_format=torch.channels_last)
    module: nn.Module = distiller
    if dist.enabled:  # gradients averaged over processes; unused: e.g. IE-KD's auto-encoder after stage A
        module = nn.parallel.DistributedDataParallel(
            distiller, device_ids=[device.index] if cuda else None, find_unused_parameters=True
        )
    if fast:  # the same data, resident on the device (kdlib.fast); the DataLoaders stay unused
        train_loader = DeviceLoader.from_dataset(
            data.train.dataset, spec, batch_size=recipe.batch_size, train=True, pad_mode=recipe.pad_mode,
            device=device, channels_last=rt.channels_last)
        test_loader = DeviceLoader.from_dataset(
            data.test.dataset, spec, batch_size=data.test.batch_size, train=False, device=device,
            channels_last=rt.channels_last)
        set_epoch, train_epoch = train_loader.set_epoch, train_one_epoch_fast
        forward = prepare_fast(distiller, rt, compile=c.compile is not False, batch_size=recipe.batch_size)
    else:
        train_loader, test_loader, set_epoch = data.train, data.test, data.set_epoch
        train_epoch = train_one_epoch
        forward = torch.compile(module) if c.compile and cuda else module

    record = new_record(p, teacher_name, teacher_sha, precision_of(c, device), student_weights)
    if teacher_model is not None:
        record["teacher_ckpt"] = teacher_text  # torchvision:<weights> for downloaded weights
    optimizer = _optimizer(recipe, distiller.trainable_parameters(), fused=fast and cuda)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), recipe.gamma)
    pre_optimizer = None
    if get_method(c.method).has_pretrain:
        pre_optimizer = _sgd(
            distiller.pretrain_parameters(),
            recipe.pretrain_lr,
            recipe.pretrain_momentum,
            recipe.pretrain_nesterov,
            recipe.pretrain_weight_decay,
        )
    state = {"pretrain_epoch": 0, "epoch": 0, "wall_time_s": 0.0, "train_time_s": 0.0, "train_images": 0}

    last = out / "last.pt"
    if c.resume and last.is_file():
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        if ckpt["config_id"] != record["config_id"]:
            raise ResumeError(
                f"cannot resume: {last} belongs to another configuration "
                f"(config_id {ckpt['config_id']}, this run {record['config_id']})"
            )
        missing, unexpected = distiller.load_state_dict(ckpt["distiller"], strict=False)
        if unexpected or [k for k in missing if not k.startswith("teacher.")]:
            raise ResumeError(f"cannot resume from {last}: state does not match ({missing}, {unexpected})")
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if pre_optimizer is not None and ckpt["pretrain_optimizer"] is not None:
            pre_optimizer.load_state_dict(ckpt["pretrain_optimizer"])
        current = {k: record[k] for k in ("device", "hardware", "torch_version", "git_commit", "git_dirty")}
        current["world_size"] = dist.world_size
        record.update(ckpt["record"], status="running", failure_reason=None)
        record.setdefault("resumes", []).append(  # provenance of each session after the first
            {
                "after_epoch": ckpt["state"]["epoch"],
                "after_pretrain_epoch": ckpt["state"]["pretrain_epoch"],
                "at": _now(),
                **current,
            }
        )
        state.update(ckpt["state"])
        set_rng_state(ckpt["rng"])
        log.info(
            "resuming %s after pretrain epoch %d, epoch %d", out, state["pretrain_epoch"], state["epoch"]
        )
    elif last.exists() and not c.resume:
        raise ResumeError(f"{out} already holds a run (last.pt); pass --resume or choose another --out")

    record["speed"] = {  # how this session trains (provenance; the recipe is the same either way)
        "path": "fast" if fast else "dataloader",
        "forward": forward.describe() if fast else ("compiled" if forward is not module else "eager"),
        "fused_sgd": fast and cuda,
        "teacher": "inference_mode" if fast else "no_grad",
    }
    record["distributed"] = dist.describe(recipe.batch_size, data.images_per_epoch, c.bn)
    started = time.perf_counter()
    wall_before = state["wall_time_s"]

    def checkpoint() -> None:
        if not dist.is_main:  # one writer: rank 0
            return
        state["wall_time_s"] = wall_before + time.perf_counter() - started
        record.update(
            wall_time_s=state["wall_time_s"],
            updated_at=_now(),
        )
        if state["train_time_s"] > 0:
            record["images_per_s"] = state["train_images"] / state["train_time_s"]
        if fast:  # a compilation that failed at its first step fell back to eager: say so
            record["speed"]["forward"] = forward.describe()
        ckpt = {
            "version": CHECKPOINT_VERSION,
            "config_id": record["config_id"],
            "state": dict(state),
            "distiller": _trainable_state(distiller),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "pretrain_optimizer": pre_optimizer.state_dict() if pre_optimizer is not None else None,
            "record": json.loads(json.dumps(record)),
            "rng": rng_state(),  # plain types for weights_only
        }
        atomic_write(last, lambda tmp: torch.save(ckpt, tmp))
        student_state = {k: v.detach().cpu().contiguous() for k, v in distiller.student.state_dict().items()}
        atomic_write(
            out / "model.pt",
            lambda tmp: torch.save(
                {"model": student_state, "arch": c.student, "num_classes": spec.num_classes}, tmp
            ),
        )
        save_json(record, out / "record.json")

    with _record_failures(record, out, write=dist.is_main):
        if dist.is_main:
            save_json(record, out / "record.json")
        if teacher_model is not None and record["teacher_top1"] is None:
            measured = evaluate(distiller.teacher, test_loader, rt, desc="teacher")
            record.update(teacher_top1=measured["top1"], teacher_top5=measured["top5"])
            record["test_images"] = measured["images"]
            log.info("teacher %s: top1 %.2f top5 %.2f", teacher_name, measured["top1"], measured["top5"])

        if pre_optimizer is not None and state["pretrain_epoch"] < recipe.pretrain_epochs:
            distiller.pretraining = True  # stage A: only the pre-distillation parts train
            for epoch in range(state["pretrain_epoch"] + 1, recipe.pretrain_epochs + 1):
                epoch_seed = mix_seed(c.seed, _PRETRAIN_STAGE, epoch)
                seed_everything(epoch_seed)
                set_epoch(epoch_seed)
                losses = pretrain_one_epoch(distiller, train_loader, pre_optimizer, epoch, rt)
                record["pretrain_history"].append({"epoch": epoch, "losses": losses})
                state["pretrain_epoch"] = epoch
                log.info("pretrain %d/%d %s", epoch, recipe.pretrain_epochs, _fmt(losses))
                checkpoint()
        if pre_optimizer is not None:
            distiller.pretraining = False

        for epoch in range(state["epoch"] + 1, recipe.epochs + 1):
            epoch_seed = mix_seed(c.seed, _DISTILL_STAGE, epoch)
            seed_everything(epoch_seed)
            set_epoch(epoch_seed)
            lr = optimizer.param_groups[0]["lr"]
            timed = TimedIterable(train_loader)
            tick = time.perf_counter()
            losses = train_epoch(forward, distiller, timed, optimizer, epoch, rt)  # ends with a host sync
            elapsed = time.perf_counter() - tick
            state["train_time_s"] += elapsed
            state["train_images"] += data.images_per_epoch
            scheduler.step()
            metrics = evaluate(distiller.student, test_loader, rt)
            record["test_images"] = metrics.pop("images")
            record["history"].append(
                {"epoch": epoch, "lr": lr, "losses": losses, "loss": sum(losses.values()), **metrics}
            )
            record["epoch_times"].append(
                {"epoch": epoch, "data_s": timed.waited, "compute_s": elapsed - timed.waited}
            )
            _summarise_history(record)
            state["epoch"] = epoch
            log.info(
                "epoch %d/%d lr %.4g %s top1 %.2f top5 %.2f (data %.1fs, compute %.1fs)",
                epoch,
                recipe.epochs,
                lr,
                _fmt(losses),
                metrics["top1"],
                metrics["top5"],
                timed.waited,
                elapsed - timed.waited,
            )
            if epoch == recipe.epochs:
                record["status"] = "completed"
            checkpoint()
        if record["status"] != "completed":  # resumed a run whose epochs were all done
            record["status"] = "completed"
            if dist.is_main:
                save_json(record, out / "record.json")
    return record


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _fmt(losses: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in losses.items())


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
) -> dict[str, Any]:
    """Top-1/top-5 of a checkpoint (kdlib ``model.pt`` or RepDistiller's ``{'model': ...}``) on a test set."""
    dev = resolve_device(device)
    rt = Runtime(dev, amp=dev.type == "cuda", channels_last=False, progress=sys.stderr.isatty())
    spec = resolve_dataset_spec(dataset, data_root)
    net = models.load_teacher(ckpt, model, num_classes=spec.num_classes).to(dev)
    data = load_data(
        dataset,
        data_root,
        batch_size=batch_size,
        eval_batch_size=batch_size,
        eval_subset=eval_subset,
        workers=workers,
        download=download,
    )
    metrics = evaluate(net, data.test, rt)
    return {
        "model": model or _teacher_arch(ckpt, None),
        "ckpt": str(ckpt),
        "dataset": dataset,
        "n": metrics.pop("images"),
        **metrics,
    }
