"""A training run: one method, one student (and teacher), one recipe, one seed → ``OUT/record.json``.

:func:`train` validates the configuration (:func:`kdlib.config.plan`), takes the folder's lock
(:mod:`kdlib.runlock`), joins the run's process group (:mod:`kdlib.distributed`) and runs :class:`Run`:

1. **build**: seed everything; load the teacher (evaluated once, its accuracy recorded), the data and the
   student; the distiller with the method's parts; the loaders and forward of the reference path or the fast
   path (``TrainConfig.fast``, on by default on CUDA); the optimisers and the MultiStepLR schedule;
2. **resume** from ``OUT/last.pt`` (``--resume``): model, optimisers, schedule, record, RNG states;
3. **stages**: IE-KD's stage A (``distiller.pretraining = True``, the recipe's pre-distillation optimiser,
   then False); then per epoch: reseed from ``(seed, epoch)``, train one epoch (:mod:`kdlib.loop`), step the
   schedule, evaluate top-1/top-5;
4. **checkpoint** after every epoch, atomically: ``OUT/last.pt`` (resume state), ``OUT/model.pt`` (the
   student, RepDistiller format) and ``OUT/record.json`` (the run record, :mod:`kdlib.record`).

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
resumed run ends with exactly the metrics of an uninterrupted one (tested) on the same machine; another CPU
type may round differently. RNG states are stored in ``last.pt`` too (as tensors, so
``torch.load(weights_only=True)`` reads the file) and restored on resume.

A non-finite loss term stops the run at that step (the fast path: at the end of that epoch): the last good
checkpoint is kept, the record is marked ``diverged`` with a reason naming the term, epoch and step, and
:class:`~kdlib.record.TrainingFailed` is raised. Any other exception marks it ``failed`` (``interrupted`` for
Ctrl-C).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdlib import distributed, models, weights
from kdlib.compilation import use_compile_cache
from kdlib.config import Plan, TrainConfig, plan
from kdlib.curves import Curves
from kdlib.data import load_data, mix_seed, resolve_dataset_spec
from kdlib.fast import DeviceLoader
from kdlib.files import atomic_write, save_json
from kdlib.loop import (
    CUDA_CHECK_EVERY,
    Runtime,
    TimedIterable,
    compile_pays,
    evaluate,
    make_optimizer,
    make_pretrain_optimizer,
    prepare_fast,
    pretrain_one_epoch,
    rng_state,
    seed_everything,
    set_rng_state,
    train_one_epoch,
    train_one_epoch_fast,
)
from kdlib.methods import build_distiller, get_method
from kdlib.record import (
    WeightsRef,
    hardware,
    new_record,
    now,
    record_failures,
    summarise_history,
    weights_ref,
)
from kdlib.runlock import run_lock

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
_PRETRAIN_STAGE, _DISTILL_STAGE = 1, 2  # mixed into the epoch seeds


class ResumeError(ValueError):
    """``--resume`` found a checkpoint that does not belong to this configuration."""


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume) one training run and return its record (also in ``OUT/record.json``)."""
    return run(plan(config))


def run(p: Plan) -> dict[str, Any]:
    """Train a validated configuration: hold ``OUT/.lock`` for the run's life (one process per folder) and,
    under a launcher (``torchrun``), join the run's process group first."""
    with run_lock(p.config.out), distributed.process_group(p.device) as dist:
        return Run(p, dist).run()


def _resolve(spec: str | Path, arch: str | None, dist: distributed.Dist) -> WeightsRef:
    """A weights argument resolved to its file; ``torchvision`` is downloaded by rank 0 before the others
    look for it (:func:`kdlib.weights.resolve_weights`)."""
    if weights.is_torchvision(spec) and not dist.is_main:
        dist.barrier()
    found = weights.resolve_weights(spec, arch)
    if weights.is_torchvision(spec) and dist.is_main:
        dist.barrier()
    return weights_ref(*found, arch)


class Run:
    """One process's share of a run (rank ``dist.rank`` of ``dist.world_size``; only rank 0 writes)."""

    def __init__(self, p: Plan, dist: distributed.Dist) -> None:
        self.p, self.dist, self.recipe = p, dist, p.recipe
        use_compile_cache(hardware(p.device))  # before anything compiles: graphs reused across runs
        config = p.config
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        cuda = p.device.type == "cuda"
        self.rt = Runtime(
            p.device, amp=p.precision == "bf16", channels_last=p.channels_last,
            progress=(sys.stderr.isatty() if config.progress is None else config.progress) and dist.is_main,
            check_every=CUDA_CHECK_EVERY if cuda else 1, dist=dist,
        )
        self.spec = resolve_dataset_spec(config.dataset, config.data_root, self.recipe.image_size)
        self.fast = p.fast
        if cuda:
            torch.backends.cudnn.benchmark = True
        self._build_distiller()
        self._build_loaders()
        self.record = new_record(p, self.teacher_ref, self.student_ref)
        self.record["data_sha256"] = self.data.sha256
        self.optimizer = make_optimizer(self.recipe, self.distiller.trainable_parameters(),
                                        fused=self.fast and cuda)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, list(self.recipe.milestones), self.recipe.gamma)
        self.pre_optimizer = None
        if get_method(config.method).has_pretrain:
            self.pre_optimizer = make_pretrain_optimizer(self.recipe, self.distiller.pretrain_parameters())
        self.state = {"pretrain_epoch": 0, "epoch": 0, "wall_time_s": 0.0, "train_time_s": 0.0,
                      "train_images": 0}

    # --- build ------------------------------------------------------------------------------------
    def _build_distiller(self) -> None:
        """Teacher (first: a bad checkpoint fails fast), data, student, distiller on the device."""
        config, dist, num_classes = self.p.config, self.dist, self.spec.num_classes
        self.teacher_ref = self.student_ref = None
        teacher = initial = None
        if self.p.needs_teacher:
            self.teacher_ref = _resolve(config.teacher_ckpt, config.teacher, dist)
            teacher = models.load_teacher(self.teacher_ref.file, config.teacher, num_classes=num_classes)
        if config.student_weights is not None:
            self.student_ref = _resolve(config.student_weights, config.student, dist)
            initial = models.load_teacher(self.student_ref.file, config.student, num_classes=num_classes)
        self.data = load_data(
            config.dataset, config.data_root, batch_size=self.recipe.batch_size, subset=config.subset,
            eval_subset=config.eval_subset, val_subset=config.val_subset, subset_seed=config.subset_seed,
            pad_mode=self.recipe.pad_mode,
            workers=config.workers, seed=config.seed, download=config.download,
            pin_memory=self.p.device.type == "cuda",
            image_size=self.recipe.image_size, rank=dist.rank, world_size=dist.world_size,
        )
        seed_everything(config.seed)
        student = models.create_model(config.student, num_classes=num_classes)
        if initial is not None:  # after create_model: the same random draws as a run from scratch
            student.load_state_dict(initial.state_dict())
        distiller = build_distiller(config.method, student, teacher, self.p.method_config,
                                    input_shape=self.spec.input_shape)
        distiller.total_epochs = self.recipe.epochs  # per-epoch loss weights (EDT) scale to the schedule
        distiller.world_size = dist.world_size  # losses normalised by the squared batch use the global one
        distributed.apply_bn_mode(distiller, config.bn)
        distiller.to(self.p.device)
        if self.rt.channels_last:
            distiller.to(memory_format=torch.channels_last)
        self.distiller, self.module = distiller, distiller
        if dist.enabled:  # gradients averaged over processes; unused: e.g. IE-KD's auto-encoder after stage A
            self.module = nn.parallel.DistributedDataParallel(
                distiller, device_ids=[self.p.device.index] if self.p.device.type == "cuda" else None,
                find_unused_parameters=True,
            )

    def _build_loaders(self) -> None:
        """The reference path's DataLoaders, or the same data resident on the device (the fast path)."""
        recipe, rt = self.recipe, self.rt
        self.val_loader = self.data.val
        if not self.fast:
            self.train_loader, self.test_loader = self.data.train, self.data.test
            self.set_epoch, self.train_epoch = self.data.set_epoch, train_one_epoch
            self.forward = torch.compile(self.module) if self.p.config.compile else self.module
            return
        self.train_loader = DeviceLoader.from_dataset(
            self.data.train.dataset, self.spec, batch_size=recipe.batch_size, train=True,
            pad_mode=recipe.pad_mode, device=rt.device, channels_last=rt.channels_last)
        self.test_loader = DeviceLoader.from_dataset(
            self.data.test.dataset, self.spec, batch_size=self.data.test.batch_size, train=False,
            device=rt.device, channels_last=rt.channels_last)
        if self.data.val is not None:
            self.val_loader = DeviceLoader.from_dataset(
                self.data.val.dataset, self.spec, batch_size=self.data.val.batch_size, train=False,
                device=rt.device, channels_last=rt.channels_last)
        self.set_epoch, self.train_epoch = self.train_loader.set_epoch, train_one_epoch_fast
        compiled = self.p.config.compile
        if compiled is None:
            compiled = compile_pays(rt.device, len(self.train_loader) * recipe.epochs)
        self.forward = prepare_fast(self.distiller, rt, compile=compiled, batch_size=recipe.batch_size)

    def _speed(self) -> dict[str, Any]:
        """How this process trains (provenance; the recipe is the same either way). ``compile``: on the fast
        path once a compiled step ran, the seconds compiling and the on-disk caches' hits and misses
        (:meth:`kdlib.fast.CompiledOrEager.compile_record`), else None (older records lack the key)."""
        cuda = self.p.device.type == "cuda"
        if self.fast:  # a compilation that failed at its first step fell back to eager: describe() says so
            forward, compiled = self.forward.describe(), self.forward.compile_record()
        else:
            forward, compiled = "compiled" if self.forward is not self.module else "eager", None
        return {"path": "fast" if self.fast else "dataloader", "forward": forward,
                "fused_sgd": self.fast and cuda, "teacher": "inference_mode" if self.fast else "no_grad",
                "channels_last": self.rt.channels_last, "compile": compiled}

    # --- resume and checkpoint --------------------------------------------------------------------
    def resume(self) -> None:
        """Load ``OUT/last.pt`` (with ``--resume``); a folder holding a run needs ``--resume``."""
        last, record = self.out / "last.pt", self.record
        if not self.p.config.resume:
            if last.exists():
                raise ResumeError(
                    f"{self.out} already holds a run (last.pt); pass --resume or choose another --out")
        if not last.is_file():
            self._refuse_to_overwrite_a_result()
            return
        ckpt = _read_last(last)
        if ckpt["config_id"] != record["config_id"]:
            raise ResumeError(
                f"cannot resume: {last} belongs to another configuration "
                f"(config_id {ckpt['config_id']}, this run {record['config_id']})"
            )
        trained_on = ckpt["record"].get("data_sha256")
        if trained_on is not None and trained_on != record["data_sha256"]:
            raise ResumeError(
                f"cannot resume: the training data differs from the data {last} was trained on (data_sha256 "
                f"{trained_on}, now {record['data_sha256']}); point --data-root at the run's data")
        self._load_states(last, ckpt)
        current = {k: record.get(k) for k in ("device", "hardware", "torch_version", "software", "git_commit",
                                              "git_dirty")}
        record.update(ckpt["record"], status="running", failure_reason=None)
        record.setdefault("resumes", []).append({  # provenance of each process after the first
            "after_epoch": ckpt["state"]["epoch"], "after_pretrain_epoch": ckpt["state"]["pretrain_epoch"],
            "at": now(), **current, "world_size": self.dist.world_size,
        })
        self.state.update(ckpt["state"])
        set_rng_state(ckpt["rng"])
        log.info("resuming %s after pretrain epoch %d, epoch %d", self.out, self.state["pretrain_epoch"],
                 self.state["epoch"])

    def _refuse_to_overwrite_a_result(self) -> None:
        """A folder without ``last.pt`` trains anew, unless its ``record.json`` holds a result (a completed or
        diverged run) or finished epochs: completed work is never overwritten."""
        earlier = self.out / "record.json"
        try:
            held = json.loads(earlier.read_text()) if earlier.is_file() else {}
        except (OSError, ValueError):
            held = {"status": "unreadable"}
        if isinstance(held, dict) and held.get("status") in (None, "running", "failed") \
                and not held.get("history"):
            return
        raise ResumeError(
            f"{self.out} holds a run's record.json ({held.get('status') if isinstance(held, dict) else '?'}) "
            "but no last.pt to resume from; choose another --out, or delete the folder's files to train anew")

    def _load_states(self, last: Path, ckpt: dict[str, Any]) -> None:
        """Model, optimisers and schedule from ``last.pt``; a state of another shape is a :class:`ResumeError`
        naming the file, never a traceback."""
        try:
            missing, unexpected = self.distiller.load_state_dict(ckpt["distiller"], strict=False)
            if unexpected or [k for k in missing if not k.startswith("teacher.")]:
                raise ResumeError(f"state does not match ({missing}, {unexpected})")
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.pre_optimizer is not None and ckpt["pretrain_optimizer"] is not None:
                self.pre_optimizer.load_state_dict(ckpt["pretrain_optimizer"])
            for opt in (self.optimizer, self.pre_optimizer):
                _check_optimizer_state(opt)
        except (ResumeError, ValueError, KeyError, TypeError, RuntimeError) as error:
            reason = " ".join(str(error).split())[:300]
            raise ResumeError(f"cannot resume from {last}: {reason}; delete it (and record.json) to start "
                              "the run again, or restore it from a copy") from None

    def checkpoint(self) -> None:
        """Write ``last.pt``, ``model.pt`` and ``record.json`` (rank 0 only), each atomically."""
        if not self.dist.is_main:
            return
        state, record = self.state, self.record
        state["wall_time_s"] = self.wall_before + time.perf_counter() - self.started
        record.update(wall_time_s=state["wall_time_s"], updated_at=now(), speed=self._speed())
        if state["train_time_s"] > 0:
            record["images_per_s"] = state["train_images"] / state["train_time_s"]
        ckpt = {
            "version": CHECKPOINT_VERSION,
            "config_id": record["config_id"],
            "state": dict(state),
            "distiller": _trainable_state(self.distiller),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "pretrain_optimizer": self.pre_optimizer.state_dict() if self.pre_optimizer is not None else None,
            "record": json.loads(json.dumps(record)),
            "rng": rng_state(),  # plain types for weights_only
        }
        atomic_write(self.out / "last.pt", lambda tmp: torch.save(ckpt, tmp))
        student = {k: v.detach().cpu().contiguous() for k, v in self.distiller.student.state_dict().items()}
        model = {"model": student, "arch": self.p.config.student, "num_classes": self.spec.num_classes}
        atomic_write(self.out / "model.pt", lambda tmp: torch.save(model, tmp))
        save_json(record, self.out / "record.json")

    # --- stages -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Resume if asked, then the teacher's evaluation, the stages and a checkpoint after every epoch."""
        self.resume()
        record = self.record
        record["speed"] = self._speed()
        record["distributed"] = self.dist.describe(self.recipe.batch_size, self.data.images_per_epoch,
                                                   self.p.config.bn)
        self.started, self.wall_before = time.perf_counter(), self.state["wall_time_s"]
        if self.p.config.tensorboard and self.dist.is_main:
            self.rt.curves = Curves(self.out, len(self.train_loader), self.rt.check_every,
                                    epochs_done=self._epochs_done())
        with record_failures(record, self.out, write=self.dist.is_main), self._closing_curves():
            if self.dist.is_main:
                save_json(record, self.out / "record.json")
            if self.distiller.teacher is not None and record["teacher_top1"] is None:
                self.evaluate_teacher()
            if self.pre_optimizer is not None:
                self.pretrain()
            for epoch in range(self.state["epoch"] + 1, self.recipe.epochs + 1):
                self.distill_epoch(epoch)
            if record["status"] != "completed":  # resumed a run whose epochs were all done: its files may
                record["status"] = "completed"  # be from before the last epoch (killed between renames)
                self.checkpoint()
        return record

    def _epochs_done(self) -> int:
        """Epochs of both stages done (the TensorBoard step axis counts both)."""
        return self.state["pretrain_epoch"] + self.state["epoch"]

    @contextmanager
    def _closing_curves(self) -> Iterator[None]:
        try:
            yield
        finally:
            if self.rt.curves is not None:
                self.rt.curves.close()

    def evaluate_teacher(self) -> None:
        measured = evaluate(self.distiller.teacher, self.test_loader, self.rt, desc="teacher")
        self.record.update(teacher_top1=measured["top1"], teacher_top5=measured["top5"],
                           test_images=measured["images"])
        log.info("teacher %s: top1 %.2f top5 %.2f", self.record["teacher"], measured["top1"],
                 measured["top5"])

    def _reseed(self, stage: int, epoch: int) -> None:
        epoch_seed = mix_seed(self.p.config.seed, stage, epoch)
        seed_everything(epoch_seed)
        self.set_epoch(epoch_seed)

    def pretrain(self) -> None:
        """Stage A: only the pre-distillation parts train, for the recipe's pre-distillation epochs."""
        epochs = self.recipe.pretrain_epochs
        self.distiller.pretraining = True
        for epoch in range(self.state["pretrain_epoch"] + 1, epochs + 1):
            self._reseed(_PRETRAIN_STAGE, epoch)
            if self.rt.curves is not None:
                self.rt.curves.begin(self._epochs_done(), pretrain=True)
            losses = pretrain_one_epoch(self.distiller, self.train_loader, self.pre_optimizer, epoch, self.rt)
            self.record["pretrain_history"].append({"epoch": epoch, "losses": losses})
            self.state["pretrain_epoch"] = epoch
            log.info("pretrain %d/%d %s", epoch, epochs, _fmt(losses))
            self.checkpoint()
        self.distiller.pretraining = False

    def distill_epoch(self, epoch: int) -> None:
        """One distillation epoch: train, step the schedule, evaluate, record, checkpoint."""
        record, state = self.record, self.state
        self._reseed(_DISTILL_STAGE, epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.rt.curves is not None:
            self.rt.curves.begin(self._epochs_done())
        timed = TimedIterable(self.train_loader)
        tick = time.perf_counter()
        losses = self.train_epoch(self.forward, self.distiller, timed, self.optimizer, epoch, self.rt)
        elapsed = time.perf_counter() - tick  # the epoch ends with a host sync
        state["train_time_s"] += elapsed
        state["train_images"] += self.data.images_per_epoch
        self.scheduler.step()
        metrics = self._evaluate() if self._evaluated(epoch) else {"top1": None, "top5": None}
        record["history"].append({"epoch": epoch, "lr": lr, "losses": losses, "loss": sum(losses.values()),
                                  **metrics})
        record["epoch_times"].append(
            {"epoch": epoch, "data_s": timed.waited, "compute_s": elapsed - timed.waited})
        summarise_history(record)
        state["epoch"] = epoch
        tested = "" if metrics["top1"] is None else f" top1 {metrics['top1']:.2f} top5 {metrics['top5']:.2f}"
        log.info("epoch %d/%d lr %.4g %s%s (data %.1fs, compute %.1fs)", epoch, self.recipe.epochs, lr,
                 _fmt(losses), tested, timed.waited, elapsed - timed.waited)
        if self.rt.curves is not None:
            measured = {k: v for k, v in metrics.items() if v is not None}
            self.rt.curves.epoch({**losses, "loss": sum(losses.values()), **measured, "lr": lr,
                                  "images_per_s": self.data.images_per_epoch / elapsed,
                                  "data_s": timed.waited, "compute_s": elapsed - timed.waited})
        if epoch == self.recipe.epochs:
            record["status"] = "completed"
        self.checkpoint()

    def _evaluated(self, epoch: int) -> bool:
        """Whether ``epoch`` evaluates: every epoch, or every ``eval_every``-th and the last."""
        every = self.p.config.eval_every
        return every is None or epoch % every == 0 or epoch == self.recipe.epochs

    def _evaluate(self) -> dict[str, Any]:
        """The student's top-1/top-5 on the test images, and on the validation images where there are."""
        metrics = evaluate(self.distiller.student, self.test_loader, self.rt)
        self.record["test_images"] = metrics.pop("images")
        if self.val_loader is not None:  # held out of training: weights are chosen on it, never on test
            val = evaluate(self.distiller.student, self.val_loader, self.rt, desc="val")
            self.record["val_images"] = val.pop("images")
            metrics.update(val_top1=val["top1"], val_top5=val["top5"])
        return metrics


#: What ``last.pt`` holds (:meth:`Run.checkpoint`); a file without these is not a resume state.
_LAST_KEYS = {"version": int, "config_id": str, "state": dict, "distiller": dict, "optimizer": dict,
              "scheduler": dict, "record": dict, "rng": dict}
_STATE_KEYS = ("epoch", "pretrain_epoch", "wall_time_s", "train_time_s", "train_images")


def _read_last(last: Path) -> dict[str, Any]:
    """``OUT/last.pt`` read with ``weights_only=True`` and checked to be a resume state; otherwise a
    :class:`ResumeError` naming the file and what to do (before anything in the folder is overwritten)."""
    what = "delete it (and record.json) to start the run again, or restore it from a copy"
    try:
        ckpt = models.read_checkpoint(last)
    except models.CheckpointError as error:
        raise ResumeError(f"cannot resume: {str(error).rstrip('.')}; {what}") from None
    wrong = [key for key, kind in _LAST_KEYS.items()
             if not isinstance(ckpt, dict) or not isinstance(ckpt.get(key), kind)]
    if not wrong:
        wrong = [key for key in _STATE_KEYS if not isinstance(ckpt["state"].get(key), int | float)]
    if wrong:
        raise ResumeError(
            f"cannot resume: '{last}' is not a kdlib resume checkpoint (missing or invalid: "
            f"{', '.join(wrong)}); {what}")
    return ckpt


def _check_optimizer_state(optimizer: torch.optim.Optimizer | None) -> None:
    """``ValueError`` when a loaded optimiser state does not fit its parameters (``load_state_dict`` checks
    the groups, not the shapes of the buffers, which would fail only at the next step)."""
    if optimizer is None:
        return
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if isinstance(value, Tensor) and value.dim() and value.shape != param.shape:
                    raise ValueError(f"optimizer state '{name}' has shape {tuple(value.shape)}, its "
                                     f"parameter {tuple(param.shape)}")


def _fmt(losses: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in losses.items())


def _trainable_state(distiller: nn.Module) -> dict[str, Tensor]:
    """The distiller's state without the teacher (the student and the method's parts)."""
    return {k: v for k, v in distiller.state_dict().items() if not k.startswith("teacher.")}
