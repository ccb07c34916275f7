"""The training loop: one method, one student (and teacher), one recipe, one seed → ``OUT/record.json``.

The path of a batch (:func:`train_one_epoch`)::

    x, y → device (channels_last on CUDA) → autocast(bf16 on CUDA) → distiller(x, y, epoch)
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

Determinism and resume: each epoch starts by reseeding python, numpy and torch and the loader (order and
per-sample augmentation, :mod:`kdlib.data`) from ``(seed, epoch)``, so epoch k does not depend on whether
epochs 1..k-1 ran in this process; model, optimiser, scheduler and history come from ``last.pt``. On CPU a
resumed run ends with exactly the metrics of an uninterrupted one (tested). RNG states are stored in
``last.pt`` too (as tensors, so ``torch.load(weights_only=True)`` reads the file) and restored on resume.

A non-finite loss term stops the run at that step (the fast path: at the end of that epoch): the last good
checkpoint is kept, the record is marked ``failed`` with a reason naming the term, epoch and step, and
:class:`TrainingFailed` is raised.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
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

from kdlib import models
from kdlib.data import Data, get_dataset_spec, load_data, mix_seed
from kdlib.distill import Distiller, MethodConfig, build_distiller, get_method, make_config, variant_string
from kdlib.fast import CompiledOrEager, DeviceLoader, DeviceMetrics, run_teacher_in_inference_mode
from kdlib.recipes import Recipe, get_recipe

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


class TrainingFailed(RuntimeError):
    """The run stopped (e.g. a non-finite loss); ``record`` is the failed run record, already written."""

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
    get_dataset_spec(config.dataset)
    if not method.needs_teacher and (config.teacher or config.teacher_ckpt):
        raise ValueError(f"method '{config.method}' trains without a teacher; drop --teacher/--teacher-ckpt")
    if method.needs_teacher and not config.teacher_ckpt:
        raise ValueError(
            f"method '{config.method}' needs a teacher: pass --teacher-ckpt PATH "
            "(a model.pt from a '--method ce' run or a RepDistiller checkpoint)"
        )
    if config.teacher_ckpt is not None and not Path(config.teacher_ckpt).is_file():
        raise ValueError(f"teacher checkpoint '{config.teacher_ckpt}' does not exist")
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
    return Plan(config, method_config, recipe, resolve_device(config.device), method.needs_teacher)


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


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in the same folder and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_json(obj: Any, path: Path) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")

    atomic_write(path, write)


def file_sha256(path: str | Path) -> str:
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


class FiniteCheck:
    """Finds the first step whose loss terms are not all finite, naming the term.

    Checks every ``every`` steps: 1 on CPU (the run stops before the bad step updates the model); on CUDA a
    larger interval avoids a host sync per step (the steps after a bad one may run, but nothing is saved after
    the last good epoch's checkpoint).
    """

    def __init__(self, where: str, every: int = 1) -> None:
        self.where, self.every = where, every
        self.pending: list[tuple[int, dict[str, Tensor]]] = []

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
        if not bool(ok.all()):
            step, terms = self.pending[int((~ok).nonzero()[0])]
            name = next(k for k, v in terms.items() if not bool(torch.isfinite(v).all()))
            raise NonFiniteLoss(
                f"non-finite loss term '{name}' = {terms[name].item()} at {self.where}, step {step}"
            )
        self.pending.clear()


def train_one_epoch(
    forward: Callable[..., tuple[Tensor, dict[str, Tensor]]],
    distiller: Distiller,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    rt: Runtime,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of each named loss term (weighted, as summed)."""
    distiller.train()
    check = FiniteCheck(f"epoch {epoch}", rt.check_every)
    sums: dict[str, Tensor] = {}
    seen = 0
    for step, (x, y) in enumerate(rt.bar(loader, f"epoch {epoch}")):
        x, y = rt.to_device(x, y)
        with rt.autocast():
            _, losses = forward(x, y, epoch)
        check(step, losses)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value.detach().float() * len(y)
        seen += len(y)
    check.flush()
    return {name: float(total) / seen for name, total in sums.items()}


def fast_step(
    forward: Callable[..., tuple[Tensor, dict[str, Tensor]]],
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    epoch: int,
    rt: Runtime,
) -> dict[str, Tensor]:
    """One step of the fast path, with no host sync: forward, sum, backward, step; returns the loss terms."""
    with rt.autocast():
        _, losses = forward(x, y, epoch)
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
    metrics = DeviceMetrics(len(loader), rt.device)
    for x, y in rt.bar(loader, f"epoch {epoch}"):
        metrics.add(fast_step(forward, optimizer, x, y, epoch, rt), len(y))
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
    check = FiniteCheck(f"pretrain epoch {epoch}", rt.check_every)
    sums: dict[str, Tensor] = {}
    seen = 0
    for step, (x, y) in enumerate(rt.bar(loader, f"pretrain {epoch}")):
        x, _ = rt.to_device(x, y)
        with rt.autocast():
            losses = distiller.pretrain_loss(x)
        check(step, losses)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value.detach().float() * len(x)
        seen += len(x)
    check.flush()
    return {name: float(total) / seen for name, total in sums.items()}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, rt: Runtime, desc: str = "eval") -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) of ``model`` in eval mode over ``loader``."""
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
    correct1, correct5 = correct.tolist()
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n}


def _sgd(
    params: list[nn.Parameter], lr: float, momentum: float, nesterov: bool, wd: float, fused: bool = False
) -> torch.optim.SGD:
    """SGD; ``fused`` (CUDA, the fast path): one kernel for the whole update, same arithmetic."""
    extra = {"fused": True} if fused else {}
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd, **extra)


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


def new_record(p: Plan, teacher: str | None, teacher_sha: str | None, precision: str) -> dict[str, Any]:
    """The run record's fixed part (see :mod:`kdlib.results` for how records are read)."""
    c = p.config
    identity = {
        "method": c.method,
        "method_config": dataclasses.asdict(p.method_config),
        "teacher": teacher,
        "teacher_ckpt_sha256": teacher_sha,
        "student": c.student,
        "dataset": c.dataset,
        "subset": c.subset,
        "eval_subset": c.eval_subset,
        "recipe": p.recipe.as_dict(),
        "seed": c.seed,
        "precision": precision,
    }
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
def _record_failures(record: dict[str, Any], out: Path) -> Iterator[None]:
    """Mark the record ``failed`` (with the reason) on any exception, write it, and re-raise."""
    try:
        yield
    except NonFiniteLoss as error:
        record.update(status="failed", failure_reason=str(error))
        save_json(record, out / "record.json")
        log.error("run failed: %s (last good checkpoint kept in %s)", error, out)
        raise TrainingFailed(str(error), record) from None
    except BaseException as error:
        reason = "interrupted" if isinstance(error, KeyboardInterrupt) else f"{type(error).__name__}: {error}"
        record.update(status="failed", failure_reason=reason)
        save_json(record, out / "record.json")
        raise


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume) one training run and return its record (also in ``OUT/record.json``)."""
    p = plan(config)
    c, recipe, device = config, p.recipe, p.device
    out = Path(c.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = device.type == "cuda"
    rt = Runtime(
        device,
        amp=c.amp and cuda,
        channels_last=c.channels_last and cuda,
        progress=sys.stderr.isatty() if c.progress is None else c.progress,
        check_every=CUDA_CHECK_EVERY if cuda else 1,
    )
    fast = cuda if c.fast is None else c.fast
    if cuda:
        torch.backends.cudnn.benchmark = True

    # teacher (first: a bad checkpoint fails fast), data, student, distiller
    spec = get_dataset_spec(c.dataset)
    teacher_model, teacher_name, teacher_sha = None, None, None
    if p.needs_teacher:
        teacher_name = _teacher_arch(c.teacher_ckpt, c.teacher)
        teacher_model = models.load_teacher(c.teacher_ckpt, c.teacher, num_classes=spec.num_classes)
        teacher_sha = file_sha256(c.teacher_ckpt)
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
    )
    seed_everything(c.seed)
    student = models.create_model(c.student, num_classes=spec.num_classes)
    distiller = build_distiller(
        c.method, student, teacher_model, p.method_config, input_shape=spec.input_shape
    )
    distiller.total_epochs = recipe.epochs  # per-epoch loss weights (EDT) scale to the schedule
    distiller.to(device)
    if rt.channels_last:
        distiller.to(memory_format=torch.channels_last)
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
        forward = torch.compile(distiller) if c.compile and cuda else distiller

    record = new_record(p, teacher_name, teacher_sha, "bf16" if rt.amp else "fp32")
    optimizer = _sgd(
        distiller.trainable_parameters(), recipe.lr, recipe.momentum, recipe.nesterov, recipe.weight_decay,
        fused=fast and cuda,
    )
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
        "forward": forward.describe() if fast else ("compiled" if forward is not distiller else "eager"),
        "fused_sgd": fast and cuda,
        "teacher": "inference_mode" if fast else "no_grad",
    }
    started = time.perf_counter()
    wall_before = state["wall_time_s"]

    def checkpoint() -> None:
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

    with _record_failures(record, out):
        save_json(record, out / "record.json")
        if teacher_model is not None and record["teacher_top1"] is None:
            measured = evaluate(distiller.teacher, test_loader, rt, desc="teacher")
            record.update(teacher_top1=measured["top1"], teacher_top5=measured["top5"])
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
            tick = time.perf_counter()
            losses = train_epoch(forward, distiller, train_loader, optimizer, epoch, rt)
            state["train_time_s"] += time.perf_counter() - tick
            state["train_images"] += data.train_size
            scheduler.step()
            metrics = evaluate(distiller.student, test_loader, rt)
            record["history"].append(
                {"epoch": epoch, "lr": lr, "losses": losses, "loss": sum(losses.values()), **metrics}
            )
            _summarise_history(record)
            state["epoch"] = epoch
            log.info(
                "epoch %d/%d lr %.4g %s top1 %.2f top5 %.2f",
                epoch,
                recipe.epochs,
                lr,
                _fmt(losses),
                metrics["top1"],
                metrics["top5"],
            )
            if epoch == recipe.epochs:
                record["status"] = "completed"
            checkpoint()
        if record["status"] != "completed":  # resumed a run whose epochs were all done
            record["status"] = "completed"
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
    net = models.load_teacher(ckpt, model, num_classes=get_dataset_spec(dataset).num_classes).to(dev)
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
        "n": data.test_size,
        **metrics,
    }
