"""A run's record: what it is (its settings and ``config_id``), where it ran (provenance), and how it went.

``OUT/record.json`` is written by the trainer after every epoch (:mod:`kdlib.train`) and read by
:mod:`kdlib.results`. Its parts:

- the **settings** (:func:`settings`): what the configuration fixes once the teacher and student weights are
  resolved to files: method and its full configuration, architectures, dataset and subset, recipe, seed,
  precision, weights' SHA-256;
- the **identity** (:func:`identity`, :func:`config_id`): the part of the settings that determines the result,
  hashed. One function computes it, from the settings or from any record (they carry the same keys), so the
  trainer, the study's planning and a check of committed records agree by construction. No commit, time,
  path, process count or hardware enters it, and computing it reads neither git nor the machine;
- the **provenance** (:func:`provenance`): commit, hardware (CPU model and instruction-set flags), torch and
  oneDNN versions, time, and the data's hash (``data_sha256``, :func:`kdlib.subsets.split_sha256`);
- the **outcome**: ``status``, per-epoch ``history`` and ``epoch_times``, the summary fields
  (:func:`summarise_history`), ``failure_reason``, ``resumes``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import platform
import re
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlib import weights
from kdlib.config import Plan, TrainConfig, plan
from kdlib.distill import taps_agree
from kdlib.files import file_sha256, save_json
from kdlib.loop import NonFiniteLoss
from kdlib.methods import variant_string
from kdlib.models import checkpoint_arch
from kdlib.paths import PACKAGE_DIR, REPO, relative
from kdlib.recipes import recipe_identity

log = logging.getLogger(__name__)

RECORD_VERSION = 1


class TrainingFailed(RuntimeError):
    """The run stopped (a non-finite loss); ``record`` is its run record (``diverged``), already written."""

    def __init__(self, reason: str, record: dict[str, Any]) -> None:
        super().__init__(reason)
        self.record = record


@dataclass(frozen=True)
class WeightsRef:
    """A weights argument resolved to its file: how the record names it (the path given, or
    ``torchvision:<weights>``), the file's SHA-256 and, for a teacher, its architecture."""

    file: Path
    text: str
    sha256: str
    arch: str | None


def weights_ref(file: Path, text: str, arch: str | None) -> WeightsRef:
    """The :class:`WeightsRef` of a resolved file; ``arch`` None: the checkpoint's own ``arch``."""
    return WeightsRef(file, text, file_sha256(file), checkpoint_arch(file, arch))


def resolve_refs(config: TrainConfig, needs_teacher: bool) -> tuple[WeightsRef | None, WeightsRef | None]:
    """(teacher, student weights) of ``config`` resolved to files (``torchvision`` weights are downloaded if
    missing, as the run would)."""
    def ref(spec: str | Path, arch: str | None) -> WeightsRef:
        return weights_ref(*weights.resolve_weights(spec, arch), arch)

    teacher = ref(config.teacher_ckpt, config.teacher) if needs_teacher else None
    student = ref(config.student_weights, config.student) if config.student_weights is not None else None
    return teacher, student


def settings(p: Plan, teacher: WeightsRef | None, student: WeightsRef | None) -> dict[str, Any]:
    """The record's settings: what ``p`` fixes, with the weights resolved (no commit, time or hardware)."""
    c = p.config
    method_config = dataclasses.asdict(p.method_config)
    return {
        "method": c.method,
        "variant": variant_string(p.method_config),
        "method_config": _jsonable(method_config),
        "teacher": teacher.arch if teacher else None,
        "teacher_ckpt": _shown(teacher.text) if teacher else None,
        "teacher_ckpt_sha256": teacher.sha256 if teacher else None,
        "student": c.student,
        "dataset": c.dataset,
        "subset": c.subset,
        "eval_subset": c.eval_subset,
        "val_subset": c.val_subset,
        "subset_seed": c.subset_seed,
        "eval_every": c.eval_every,
        "recipe_name": p.recipe.name,
        "recipe": p.recipe.as_dict(),
        "seed": c.seed,
        "epochs": p.recipe.epochs,
        "precision": p.precision,
        "student_weights": _shown(student.text) if student else None,
        "student_weights_sha256": student.sha256 if student else None,
        "bn": c.bn,
        "data_path": "fast" if p.fast else "dataloader",
    }


def _shown(text: str) -> str:
    """A weights file as a record names it: relative to the repository when inside it (no machine's paths;
    the SHA-256 beside it says which file it was), else as given."""
    return relative(text) if Path(text).is_file() else text


def identity(record: Mapping[str, Any]) -> dict[str, Any]:
    """What determines a run's result, from its settings or its record. Options added after record version 1
    (student weights, ``val_subset``, ``subset_seed``, ``bn``, the fast path's ``data_path``, the recipe's
    :data:`~kdlib.recipes.LATER_FIELDS`) enter only when set, so runs without them keep their earlier
    ``config_id``. So does ICKD's and IE-KD's ``tap``: earlier runs read RepDistiller's ``feats[-2]``
    (``tap=repdistiller``), so ``tap`` enters only where it reads another map: ``tap=code`` on a pair with
    WRN, MobileNetV2 or ShuffleV2 (:func:`kdlib.distill.taps_agree`)."""
    identity = {
        key: record[key]
        for key in ("method", "method_config", "teacher", "teacher_ckpt_sha256", "student", "dataset",
                    "subset", "eval_subset", "seed", "precision")
    }
    tap = (record["method_config"] or {}).get("tap")
    if tap == "repdistiller" or (tap is not None and taps_agree(record["student"], record.get("teacher"))):
        identity["method_config"] = {k: v for k, v in record["method_config"].items() if k != "tap"}
    identity["recipe"] = recipe_identity(record["recipe"])
    if record.get("student_weights_sha256") is not None:
        identity["student_weights_sha256"] = record["student_weights_sha256"]
    if record.get("val_subset") is not None:  # held out of training: other training images
        identity["val_subset"] = record["val_subset"]
    if record.get("subset_seed", 0):  # another draw of the training images
        identity["subset_seed"] = record["subset_seed"]
    if record.get("bn", "batch") != "batch":
        identity["bn"] = record["bn"]
    if record.get("data_path", "dataloader") != "dataloader":  # other draws: resuming across paths is refused
        identity["data_path"] = record["data_path"]
    return identity


def config_id(record: Mapping[str, Any]) -> str:
    """Short hash of :func:`identity` (canonical JSON, tuples as lists)."""
    text = json.dumps(_jsonable(identity(record)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_id_of(config: TrainConfig) -> str:
    """The ``config_id`` that training ``config`` records, computed without training: the same
    :func:`~kdlib.config.plan`, resolved weights and :func:`settings` as the trainer."""
    p = plan(config)
    return config_id(settings(p, *resolve_refs(config, p.needs_teacher)))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# --- provenance -----------------------------------------------------------------------------------
def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def git_info() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the repository holding this package; (None, None) outside git. Dirty: a tracked
    file has uncommitted changes, or the package holds a file git does not track (code the commit does not
    name). Other untracked files do not count: a study writes its records into the tree before they are
    committed."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
        untracked = git("ls-files", "--others", "--exclude-standard", "--", PACKAGE_DIR.name)
    except (OSError, subprocess.SubprocessError):
        return None, None
    clean = status.returncode == untracked.returncode == 0
    return (
        commit.stdout.strip() or None if commit.returncode == 0 else None,
        bool(status.stdout.strip() or untracked.stdout.strip()) if clean else None,
    )


#: The ``/proc/cpuinfo`` flags that decide which kernels torch and oneDNN run, and so how a CPU rounds (x86
#: vector and matrix extensions, and ARM's ``Features``). A record keeps those its CPU has.
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
             "avx512cd", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16",
             "amx_int8", "amx_fp16", "asimd", "asimdhp", "sve", "sve2", "bf16", "i8mm")


def _cpuinfo() -> tuple[str | None, list[str] | None]:
    """(model name, :data:`CPU_FLAGS` present) from ``/proc/cpuinfo``; (None, None) where it cannot be read
    (macOS, Windows), so a record there says it does not know rather than failing."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None, None
    model = flags = None
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and flags is None:
            present = set(value.split())
            flags = [f for f in CPU_FLAGS if f in present]
    return model, flags


def hardware(device: torch.device) -> dict[str, Any]:
    """The CPU's model name, its instruction-set flags (:data:`CPU_FLAGS` present; None where unknown), the
    vector capability torch dispatches to (``AVX2``, ``AVX512``, ...), core count, torch's thread count and
    the GPU's name (None on CPU). Provenance only: none of it enters the ``config_id``."""
    model, flags = _cpuinfo()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": model or platform.processor() or platform.machine(), "cpu_flags": flags,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": gpu}


def onednn_version() -> str | None:
    """The oneDNN (MKL-DNN) version torch was built with, from ``torch.__config__.show()`` (or None)."""
    if not torch.backends.mkldnn.is_available():
        return None
    match = re.search(r"(?:MKL-DNN|oneDNN)\s+v?([0-9][\w.]*)", torch.__config__.show())
    return match.group(1) if match else None


def software() -> dict[str, Any]:
    """The numerical libraries beside torch that can change a CPU run's rounding: oneDNN, MKL, numpy."""
    return {"onednn": onednn_version(), "mkl": torch.backends.mkl.is_available(),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "numpy": np.__version__, "python": platform.python_version()}


def provenance(device: torch.device) -> dict[str, Any]:
    """Where and with what this process trains: device, hardware, torch and library versions, commit (a
    resumed run adds one of these per resumed run to ``resumes``)."""
    commit, dirty = git_info()
    return {"device": str(device), "hardware": hardware(device), "torch_version": str(torch.__version__),
            "software": software(), "git_commit": commit, "git_dirty": dirty}


def cpu_difference(recorded: Mapping[str, Any] | None, here: Mapping[str, Any]) -> str | None:
    """How this machine's CPU (``here``, a :func:`hardware`) differs from a record's ``hardware``, in words,
    or None when model and flags agree. A record made before flags were recorded is judged by model alone."""
    recorded = recorded or {}
    parts = []
    if recorded.get("cpu") != here.get("cpu"):
        parts.append(f"model {recorded.get('cpu')!r} in the record, {here.get('cpu')!r} here")
    theirs, ours = recorded.get("cpu_flags"), here.get("cpu_flags")
    if theirs is not None and ours is not None and set(theirs) != set(ours):
        only_theirs, only_ours = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
        parts.append("instruction sets: " + "; ".join(
            text for text in (f"the record's CPU also has {', '.join(only_theirs)}" if only_theirs else "",
                              f"this one also has {', '.join(only_ours)}" if only_ours else "") if text))
    elif theirs is None and parts:
        parts.append("the record does not say its instruction sets")
    return "; ".join(parts) or None


# --- the record -----------------------------------------------------------------------------------
def new_record(p: Plan, teacher: WeightsRef | None, student: WeightsRef | None) -> dict[str, Any]:
    """A run's record before its first epoch: settings, ``config_id``, provenance and an empty outcome."""
    fixed = settings(p, teacher, student)
    return {
        "record_version": RECORD_VERSION,
        "status": "running",
        "config_id": config_id(fixed),
        **fixed,
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
        **provenance(p.device),
        "created_at": now(),
        "updated_at": None,
        "failure_reason": None,
        "resumes": [],
        "test_images": None,
        "val_images": None,
        "data_sha256": None,  # kdlib.subsets.split_sha256 of the train, val and test splits
        "epoch_times": [],  # per epoch: data_s (waiting for batches), compute_s (the rest of training)
    }


def summarise_history(record: dict[str, Any]) -> None:
    """Set the last and best (earliest among ties) top-1/top-5 and the best epoch from the evaluated epochs of
    ``history`` (``eval_every`` may skip some: their ``top1`` is None), and the last evaluated epoch's
    validation top-1 (``val_top1_last``) where the run held a validation set out."""
    history = [h for h in record["history"] if h.get("top1") is not None]
    if not history:
        return
    if "val_top1" in history[-1]:
        record["val_top1_last"] = history[-1]["val_top1"]
    best = max(history, key=lambda h: (h["top1"], -h["epoch"]))
    record.update(
        top1_last=history[-1]["top1"],
        top5_last=history[-1]["top5"],
        top1_best=best["top1"],
        top5_best=best["top5"],
        best_epoch=best["epoch"],
    )


@contextmanager
def record_failures(record: dict[str, Any], out: Path, write: bool = True) -> Iterator[None]:
    """On an exception, mark the record (with the reason), write it (if ``write``) and re-raise: ``diverged``
    for a non-finite loss (a result of the configuration: the same seed diverges again; raised as
    :class:`TrainingFailed`), ``failed`` for anything else (an interruption, a crash: worth retrying)."""
    try:
        yield
    except NonFiniteLoss as error:
        record.update(status="diverged", failure_reason=str(error))
        if write:
            _save_failure(record, out)
            log.error("run diverged: %s (last good checkpoint kept in %s)", error, out)
        raise TrainingFailed(str(error), record) from None
    except BaseException as error:
        reason = "interrupted" if isinstance(error, KeyboardInterrupt) else f"{type(error).__name__}: {error}"
        record.update(status="failed", failure_reason=reason)
        if write:
            _save_failure(record, out)
        raise


def _save_failure(record: dict[str, Any], out: Path) -> None:
    """Write a failed run's record; when that fails too (the disk or folder that stopped the run), say so in
    the log rather than hide, under a second error, why the run stopped."""
    try:
        save_json(record, out / "record.json")
    except OSError as error:
        log.error("could not record the failure in %s: %s", out / "record.json", error)
