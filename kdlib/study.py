"""The study's grid: notebook parameters → validated runs → trained (or reused) records, and the repo's paths.

What the notebooks and ``make reproduce`` share:

- :func:`check_parameters`: every notebook parameter checked (type and range) before anything is loaded or
  trained; a bad value raises ``ValueError`` naming the parameter and the allowed values.
- :func:`plan_runs`: the runs of a notebook (each method variant and baseline × pair × seed), each one a
  :class:`~kdlib.train.TrainConfig` with its ``config_id`` computed exactly as :func:`kdlib.train.train` does,
  without training (:func:`kdlib.train.config_id_of`).
- :func:`run_grid`: trains the runs that are not done yet, in this process or ``jobs`` subprocesses side by
  side (``python -m kdlib train``). A run whose completed record with the same ``config_id`` exists is
  skipped, and an interrupted run resumes from its ``last.pt``, so an interrupted ``make reproduce``
  continues where it stopped. Run folders (``record.json``, ``last.pt``, ``model.pt``) live under
  ``out_dir`` (git-ignored ``runs/``); with ``results_dir`` set, only ``record.json`` is copied there
  (``data/results/<profile>/...``): students' checkpoints are never committed.
- :func:`load_profile` / :func:`notebook_parameters` / :func:`reproduce`: the full parameters of each
  profile (``notebooks/profiles/<profile>.json``) and their execution through papermill.
- :func:`load_distiller`, :func:`sample_batch`: trained models and a fixed batch for the notebooks' figures.

Run layout (the same relative path under ``out_dir`` and ``results_dir``)::

    <dataset>/<recipe>/<teacher>-<student>/<method>/<variant>/seed<k>     # distillation runs
    <dataset>/<recipe>/<student>/ce/<variant>/seed<k>                      # runs without a teacher

Command line (what ``make reproduce`` calls)::

    python -m kdlib.study reproduce --profile proxy --jobs 2
    python -m kdlib.study params --profile proxy --notebook 01_ickd      # the YAML papermill gets
    python -m kdlib.study estimate --profile cifar100 --images-per-s 4000
    python -m kdlib.study refresh       # re-execute the committed notebooks with their defaults
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdlib import models, train
from kdlib.data import DATASETS
from kdlib.methods import get_method, make_config, variant_string
from kdlib.recipes import RECIPES, get_recipe
from kdlib.results import commit_label, run_variant
from kdlib.runlock import FolderInUse, run_lock
from kdlib.weights import TORCHVISION, is_torchvision

log = logging.getLogger(__name__)

# --- repository paths -----------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO / "notebooks"
PROFILES_DIR = NOTEBOOKS_DIR / "profiles"
DATA_DIR = REPO / "data"
RESULTS_DIR = DATA_DIR / "results"
TEACHERS_DIR = DATA_DIR / "teachers"
RUNS_DIR = REPO / "runs"
REPRODUCE_DIR = RUNS_DIR / "reproduce"

#: The study's notebooks in order, each with the method it is about (None for several or none).
NOTEBOOK_METHODS: dict[str, str | None] = {
    "00_teachers": None,
    "01_ickd": "ickd",
    "02_ccs": "ccs",
    "03_cd": "cd",
    "04_cwt": "cwt",
    "05_iekd": "iekd",
    "06_head_to_head": None,
}
NOTEBOOKS = tuple(NOTEBOOK_METHODS)
PROFILES = ("cifar100", "imagenet", "proxy")
#: The label of every notebook's default run.
SMOKE_LABEL = "smoke (CI default)"
DEVICES = ("auto", "cpu", "cuda")

#: Files a finished run leaves in its folder; only ``record.json`` goes to ``results_dir``.
RECORD = "record.json"
CHECKPOINT = "last.pt"


def repo_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as an absolute path; a relative one is relative to the repository root (not the cwd), so
    notebooks give the same result from the root and from ``notebooks/``."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO / path


def relative(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the repository root when inside it (for display: no machine paths)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO.resolve()))
    except ValueError:
        return str(path)


# --- parameters -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """A teacher → student pair; ``teacher`` is None for runs without a teacher."""

    teacher: str
    student: str

    @property
    def name(self) -> str:
        return f"{self.teacher}-{self.student}"

    def __str__(self) -> str:
        return f"{self.teacher} → {self.student}"


@dataclass(frozen=True)
class Variant:
    """A method with option overrides; ``options`` as given, ``variant`` the canonical string.

    ``student_weights``: the student's initial weights (``torchvision`` or a file; None: random), a run
    option rather than a method one; it is part of ``variant`` (:func:`kdlib.results.run_variant`), so a
    pretrained student is a variant of its own (ICKD's ImageNet run, methods.md section 1).
    """

    method: str
    options: tuple[tuple[str, Any], ...] = ()
    student_weights: str | None = None

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def variant(self) -> str:
        return run_variant(variant_string(make_config(self.method, self.overrides)), self.student_weights)

    @property
    def label(self) -> str:
        return f"{self.method}/{self.variant}"

    @property
    def needs_teacher(self) -> bool:
        return get_method(self.method).needs_teacher


@dataclass
class Parameters:
    """Validated notebook parameters (see :func:`check_parameters`); paths are absolute."""

    dataset: str
    pairs: list[Pair]
    epochs: int | None
    recipe: str
    seeds: list[int]
    variants: list[Variant]
    device: str
    subset: int | None
    out_dir: Path
    eval_subset: int | None = None
    baselines: list[Variant] = field(default_factory=list)
    results_dir: Path | None = None
    teachers_dir: Path = TEACHERS_DIR
    teacher_ckpts: dict[str, Path] = field(default_factory=dict)
    jobs: int = 1
    workers: int = 0
    threads: int | None = None
    batch_size: int | None = None
    data_root: Path | None = None
    label: str = SMOKE_LABEL

    @property
    def reference(self) -> Variant:
        """The first variant of the grid. A method notebook draws its figures from it and pairs the other
        variants against it (``default`` in most profiles; ImageNet's ICKD and CD grids have none)."""
        if not self.variants:
            raise LookupError("parameter 'variants' is empty: the figures need a variant of the method")
        return self.variants[0]

    def summary(self) -> dict[str, Any]:
        """The parameters as plain values with repo-relative paths (what a notebook prints)."""
        return {
            "label": self.label, "dataset": self.dataset, "pairs": [str(p) for p in self.pairs],
            "epochs": self.epochs, "recipe": self.recipe, "seeds": self.seeds,
            "variants": [v.label for v in self.variants], "baselines": [v.label for v in self.baselines],
            "device": self.device, "subset": self.subset, "eval_subset": self.eval_subset,
            "out_dir": relative(self.out_dir),
            "results_dir": relative(self.results_dir) if self.results_dir else None,
            "teachers": {k: relative(v) for k, v in self.teacher_ckpts.items()},
            "jobs": self.jobs,
        }


def _bad(name: str, message: str) -> ValueError:
    return ValueError(f"parameter '{name}': {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_int(name: str, value: Any, minimum: int) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < minimum:
        raise _bad(name, f"must be an integer >= {minimum} or None, got {value!r}")
    return value


def _int(name: str, value: Any, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise _bad(name, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _items(name: str, value: Any, separator: str) -> list[Any]:
    """A list parameter: a list/tuple, or a string of items separated by ``separator`` (papermill ``-p``)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(separator) if v.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    raise _bad(name, f"must be a list (or a '{separator}'-separated string), got {value!r}")


def parse_pairs(value: Any) -> list[Pair]:
    """Pairs from ``["resnet56->resnet20", ["wrn_40_2", "wrn_16_2"], {"teacher": ..., "student": ...}]``
    (or one string, pairs separated by ``;``); architecture names are checked."""
    pairs = []
    available = models.available()
    for item in _items("pairs", value, ";"):
        if isinstance(item, str):
            parts = [p.strip() for p in item.replace("→", "->").split("->")]
        elif isinstance(item, list | tuple):
            parts = list(item)
        elif isinstance(item, Mapping):
            parts = [item.get("teacher"), item.get("student")]
        else:
            parts = []
        if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
            raise _bad("pairs", f"each pair is 'teacher->student' or [teacher, student], got {item!r}")
        for arch in parts:
            if arch not in available:
                choices = ", ".join(available)
                raise _bad("pairs", f"unknown model '{arch}' in {item!r}; choose one of: {choices}")
        pairs.append(Pair(*parts))
    if not pairs:
        raise _bad("pairs", "needs at least one teacher->student pair")
    if len(set(pairs)) != len(pairs):
        raise _bad("pairs", f"lists a pair twice: {[str(p) for p in pairs]}")
    return pairs


def _parse_variant(name: str, method: str, text: Any) -> Variant:
    """One variant entry: the method's options, and ``student_weights`` (a run option) when given."""
    if isinstance(text, Mapping):
        options = dict(text)
    elif isinstance(text, str):
        options = {}
        if text.strip() not in ("", "default"):
            for part in text.split(","):
                key, eq, val = part.partition("=")
                if not eq or not key.strip():
                    raise _bad(name, f"invalid option '{part}' of method '{method}'; expected key=value")
                options[key.strip()] = val.strip()
    else:
        raise _bad(name, f"each entry is 'default', 'key=value,...' or a mapping, got {text!r}")
    student_weights = options.pop("student_weights", None)
    if student_weights is not None:
        student_weights = str(student_weights).strip()
        if not is_torchvision(student_weights):
            student_weights = str(repo_path(student_weights))
            if not Path(student_weights).is_file():
                raise _bad(name, f"student_weights: no file '{student_weights}' (or '{TORCHVISION}')")
    try:
        make_config(method, options)
    except (TypeError, ValueError) as error:
        raise _bad(name, f"{error} (in {text!r})") from None
    return Variant(method, tuple(sorted(options.items())), student_weights)


def parse_variants(value: Any, method: str | None = None, name: str = "variants") -> list[Variant]:
    """Variants from ``["default", "variant=paper", "kd_weight=1,variant=paper"]`` (options of ``method``),
    or, with ``method=None``, ``["ce", "kd", "ickd:variant=paper"]`` (``method[:options]``); a string holds
    entries separated by ``;``. Option names and values are checked by the method's configuration, except
    ``student_weights`` (``torchvision`` or a file, relative to the repository root), see :class:`Variant`."""
    variants = []
    for item in _items(name, value, ";"):
        if method is not None:
            variants.append(_parse_variant(name, method, item))
            continue
        if isinstance(item, Mapping):
            item = dict(item)
            entry_method, options = item.pop("method", None), item
        elif isinstance(item, str):
            entry_method, _, options = item.partition(":")
        else:
            raise _bad(name, f"each entry is 'method' or 'method:key=value,...', got {item!r}")
        entry_method = str(entry_method).strip()
        try:
            get_method(entry_method)
        except ValueError as error:
            raise _bad(name, str(error)) from None
        variants.append(_parse_variant(name, entry_method, options))
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise _bad(name, f"lists a variant twice: {labels}")
    return variants


def parse_seeds(value: Any) -> list[int]:
    """Seeds: an integer, a list of integers >= 0, or a string ``"0,1,2"``."""
    if _is_int(value):
        value = [value]
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            raise _bad("seeds", f"must be integers >= 0, got {value!r}") from None
    if not isinstance(value, list | tuple) or not value:
        raise _bad("seeds", f"must be a non-empty list of integers >= 0, got {value!r}")
    for seed in value:
        if not _is_int(seed) or seed < 0:
            raise _bad("seeds", f"must be integers >= 0, got {seed!r} in {value!r}")
    if len(set(value)) != len(value):
        raise _bad("seeds", f"lists a seed twice: {value!r}")
    return list(value)


def teacher_checkpoint(dataset: str, arch: str, teachers_dir: str | Path = TEACHERS_DIR) -> Path | None:
    """The checkpoint of teacher ``arch`` for ``dataset`` under ``teachers_dir``, or None.

    Looked up as ``<dir>/<dataset>/<arch>/model.pt`` (kdlib, e.g. the committed Fashion-MNIST teachers),
    ``<dir>/<dataset>/<arch>_vanilla/ckpt_epoch_240.pth`` (RepDistiller / mdistiller's ``cifar_teachers.tar``
    extracted into ``<dir>/<dataset>/``), then ``<dir>/<dataset>/<arch>.pth``.
    """
    root = repo_path(teachers_dir) / dataset
    for candidate in (root / arch / "model.pt", root / f"{arch}_vanilla" / "ckpt_epoch_240.pth",
                      root / f"{arch}.pth"):
        if candidate.is_file():
            return candidate
    return None


def check_parameters(
    *,
    dataset: Any,
    pairs: Any,
    epochs: Any,
    recipe: Any,
    seeds: Any,
    variants: Any = ("default",),
    device: Any = "auto",
    subset: Any = None,
    out_dir: Any,
    method: str | None = None,
    baselines: Any = (),
    eval_subset: Any = None,
    results_dir: Any = None,
    teachers_dir: Any = TEACHERS_DIR,
    jobs: Any = 1,
    workers: Any = 0,
    threads: Any = None,
    batch_size: Any = None,
    data_root: Any = None,
    label: Any = None,
    require_teachers: bool | None = None,
) -> Parameters:
    """Check every notebook parameter before anything is loaded or trained; return them normalised.

    ``variants`` are options of ``method`` (a method notebook) or ``method[:options]`` entries when ``method``
    is None; ``baselines`` are always ``method[:options]``. ``out_dir`` may not lie inside ``data/`` (run
    folders hold checkpoints; records reach ``data/results`` only through ``results_dir``). Every pair's
    teacher checkpoint is looked up (:func:`teacher_checkpoint`); it must exist when ``require_teachers`` is
    True, or (None, the default) when a variant or baseline needs a teacher.

    Raises:
        ValueError: naming the parameter, the bad value and what is allowed.
    """
    if not isinstance(dataset, str) or dataset not in DATASETS:
        raise _bad("dataset", f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    pair_list = parse_pairs(pairs)
    epochs = _optional_int("epochs", epochs, 1)
    if not isinstance(recipe, str) or recipe not in RECIPES:
        raise _bad("recipe", f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    seed_list = parse_seeds(seeds)
    if method is not None:
        get_method(method)
    variant_list = parse_variants(variants, method)
    baseline_list = parse_variants(baselines, None, "baselines")
    if not variant_list and not baseline_list:
        raise _bad("variants", "nothing to run: give at least one variant")
    if not isinstance(device, str) or not (device in DEVICES or device.startswith("cuda:")):
        raise _bad("device", f"invalid device {device!r}; choose one of: {', '.join(DEVICES)}")
    try:
        train.resolve_device(device)
    except ValueError as error:
        raise _bad("device", str(error)) from None
    subset = _optional_int("subset", subset, 1)
    eval_subset = _optional_int("eval_subset", eval_subset, 1)
    batch_size = _optional_int("batch_size", batch_size, 1)
    jobs = _int("jobs", jobs, 1)
    workers = _int("workers", workers, 0)
    threads = _optional_int("threads", threads, 1)
    overrides = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size)) if v is not None}
    try:  # the recipe accepts the overrides
        get_recipe(recipe, **overrides)
    except ValueError as error:
        raise _bad("recipe", str(error)) from None
    paths = {}
    for name, value in (("out_dir", out_dir), ("results_dir", results_dir), ("teachers_dir", teachers_dir),
                        ("data_root", data_root)):
        if value is None and name in ("results_dir", "data_root"):
            paths[name] = None
            continue
        if not isinstance(value, str | os.PathLike) or not str(value).strip():
            raise _bad(name, f"must be a folder path, got {value!r}")
        paths[name] = repo_path(value)
    out = paths["out_dir"].resolve()
    if out == DATA_DIR.resolve() or DATA_DIR.resolve() in out.parents:
        raise _bad("out_dir", f"'{relative(out)}' is inside data/: run folders hold checkpoints; put them "
                              "under runs/ and pass results_dir to copy the records into data/results/")
    results = paths["results_dir"]
    if results is not None and results.resolve() != out and out in results.resolve().parents:
        raise _bad("results_dir", "must not lie inside out_dir")
    if label is None:  # runs whose records stay in runs/ are smoke runs; the others feed the study
        label = SMOKE_LABEL if results is None else f"study run (records in {relative(results)})"
    if not isinstance(label, str) or not label.strip():
        raise _bad("label", f"must be a non-empty string or None, got {label!r}")
    ckpts: dict[str, Path] = {}
    if require_teachers is None:
        require_teachers = any(v.needs_teacher for v in [*variant_list, *baseline_list])
    for pair in pair_list:
        ckpt = teacher_checkpoint(dataset, pair.teacher, paths["teachers_dir"])
        if ckpt is None:
            if require_teachers:
                where = relative(paths["teachers_dir"] / dataset / pair.teacher / "model.pt")
                raise _bad("pairs", f"no checkpoint of teacher '{pair.teacher}' for {dataset} (looked "
                           f"for {where} and RepDistiller's <arch>_vanilla/ckpt_epoch_240.pth); train it "
                           "with notebooks/00_teachers.ipynb (-p train True) or set teachers_dir")
            continue
        ckpts[pair.teacher] = ckpt
    return Parameters(
        dataset=dataset, pairs=pair_list, epochs=epochs, recipe=recipe, seeds=seed_list,
        variants=variant_list, device=device, subset=subset, out_dir=paths["out_dir"],
        eval_subset=eval_subset, baselines=baseline_list, results_dir=results,
        teachers_dir=paths["teachers_dir"], teacher_ckpts=ckpts,
        jobs=jobs, workers=workers, threads=threads, batch_size=batch_size, data_root=paths["data_root"],
        label=label.strip(),
    )


# --- runs -----------------------------------------------------------------------------------------
@dataclass
class Run:
    """One planned training run: its configuration, identity and place."""

    config: train.TrainConfig
    variant: Variant
    pair: Pair
    key: str
    config_id: str

    @property
    def label(self) -> str:
        return self.variant.label

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def out(self) -> Path:
        return Path(self.config.out)


@dataclass
class Outcome:
    """What :func:`run_grid` did with a :class:`Run`: ``trained``, ``skipped`` (done before), ``diverged``
    (a non-finite loss: a result of the configuration, recorded and not retried) or ``failed`` (retried)."""

    run: Run
    status: str
    record: dict[str, Any] | None
    record_path: Path | None
    seconds: float = 0.0
    message: str = ""

    @property
    def ok(self) -> bool:
        """Whether the run has a completed record."""
        return self.status in ("trained", "skipped")


def run_key(dataset: str, recipe: str, pair: Pair, variant: Variant, seed: int) -> str:
    """The run's relative folder (see the module docstring); runs without a teacher are keyed by student, so
    the notebooks of one profile share them. Epochs and subset are not in the key: within a profile they are
    the same for every notebook (a folder holding another configuration is replaced, see :func:`run_grid`)."""
    where = pair.name if variant.needs_teacher else pair.student
    return f"{dataset}/{recipe}/{where}/{variant.method}/{variant.variant}/seed{seed}"


def plan_runs(params: Parameters, variants: Sequence[Variant] | None = None) -> list[Run]:
    """Every run of ``params`` (baselines first, then variants; × pairs × seeds), de-duplicated by folder."""
    chosen = list(variants) if variants is not None else [*params.baselines, *params.variants]
    runs: dict[str, Run] = {}
    for pair in params.pairs:
        for variant in chosen:
            for seed in params.seeds:
                key = run_key(params.dataset, params.recipe, pair, variant, seed)
                if key in runs:
                    continue
                ckpt = params.teacher_ckpts.get(pair.teacher) if variant.needs_teacher else None
                if variant.needs_teacher and ckpt is None:
                    raise _bad("pairs", f"no checkpoint of teacher '{pair.teacher}' for {params.dataset}")
                config = train.TrainConfig(
                    method=variant.method, student=pair.student, dataset=params.dataset,
                    out=params.out_dir / key, teacher=pair.teacher if variant.needs_teacher else None,
                    teacher_ckpt=ckpt, recipe=params.recipe, epochs=params.epochs, subset=params.subset,
                    eval_subset=params.eval_subset, batch_size=params.batch_size, seed=seed,
                    device=params.device, variant=variant.overrides, data_root=params.data_root,
                    workers=params.workers, progress=False, student_weights=variant.student_weights,
                )
                runs[key] = Run(config, variant, pair, key, train.config_id_of(config))
    return list(runs.values())


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _done(record: dict[str, Any] | None, run: Run, status: str = "completed") -> bool:
    return bool(record) and record.get("status") == status and record.get("config_id") == run.config_id


def cli_args(config: train.TrainConfig) -> list[str]:
    """``python -m kdlib train`` arguments reproducing ``config`` (with ``--resume``, no progress bars)."""
    args = ["train", "--method", config.method, "--student", config.student, "--dataset", config.dataset,
            "--recipe", config.recipe, "--seed", str(config.seed), "--device", config.device,
            "--out", str(config.out), "--workers", str(config.workers), "--resume", "--no-progress"]
    optional = (("--teacher", config.teacher), ("--teacher-ckpt", config.teacher_ckpt),
                ("--epochs", config.epochs), ("--subset", config.subset),
                ("--eval-subset", config.eval_subset), ("--batch-size", config.batch_size),
                ("--data-root", config.data_root), ("--student-weights", config.student_weights))
    for flag, value in optional:
        if value is not None:
            args += [flag, str(value)]
    if config.variant:
        def text(v: Any) -> str:
            return "x".join(map(str, v)) if isinstance(v, tuple | list) else str(v)

        args += ["--variant", ",".join(f"{k}={text(v)}" for k, v in config.variant.items())]
    for key, value in config.recipe_overrides.items():
        args += ["--set", f"{key}={value}"]
    if not config.amp:
        args.append("--no-amp")
    if not config.channels_last:
        args.append("--no-channels-last")
    if config.compile:
        args.append("--compile")
    if not config.download:
        args.append("--no-download")
    return args


def _clear(out: Path) -> None:
    """Remove a run folder, under its run lock: :class:`~kdlib.runlock.FolderInUse` if a live run uses it."""
    with run_lock(out):
        shutil.rmtree(out)


def _prepare(run: Run) -> None:
    """Remove a stale run folder (another configuration's checkpoint) so the run can start or resume."""
    record = _read_record(run.out / RECORD)
    if (run.out / CHECKPOINT).exists() and (record is None or record.get("config_id") != run.config_id):
        log.warning("removing %s: it holds another configuration's run", run.out)
        _clear(run.out)
    run.out.mkdir(parents=True, exist_ok=True)


def _train_here(run: Run, threads: int | None) -> tuple[str, str]:
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        train.train(dataclasses.replace(run.config, resume=True))
        return "trained", ""
    except train.TrainingFailed as error:
        return "failed", str(error)
    finally:
        torch.set_num_threads(previous)


def _train_subprocess(run: Run, threads: int) -> tuple[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_path = run.out / "train.log"
    with open(log_path, "w") as log_file:
        done = subprocess.run([sys.executable, "-m", "kdlib", *cli_args(run.config)], stdout=log_file,
                              stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if done.returncode == 0:
        return "trained", ""
    tail = log_path.read_text().strip().splitlines()[-3:]
    return "failed", f"exit status {done.returncode}: {' | '.join(tail)}"


def run_grid(
    runs: Sequence[Run],
    results_dir: str | Path | None = None,
    jobs: int = 1,
    threads: int | None = None,
    need_checkpoint: Callable[[Run], bool] | None = None,
    retrain: bool = False,
    verbose: bool = True,
) -> list[Outcome]:
    """Train the runs not done yet; return one :class:`Outcome` per run, in order.

    A run is skipped when a completed record with its ``config_id`` exists (in ``results_dir`` when given,
    else in its folder) and, where ``need_checkpoint(run)`` is true (runs whose models a figure loads), its
    ``last.pt`` is there too. Otherwise it trains, resuming its own ``last.pt``: in this process when
    ``jobs`` is 1, else in ``jobs`` ``python -m kdlib train`` subprocesses side by side, each with
    ``threads`` torch threads (default: the cores shared out). A failed run (crash, interruption) does not
    stop the others; its outcome says why, and the next call retries it. A run whose loss became non-finite
    is ``diverged``: that is a result of its configuration (same seed, same batches), so its record is kept
    like a completed one and the run is not retried (unless ``retrain``). With ``results_dir``, each completed
    or diverged record is copied to ``results_dir/<key>/record.json`` (the record only). ``verbose``: one
    line per run on stdout (no timings: notebooks keep it in their output), e.g.
    ``[3/9] ickd/default seed 0: trained``.
    """
    results = repo_path(results_dir) if results_dir is not None else None
    if jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    keys = [r.key for r in runs]
    if len(set(keys)) != len(keys):
        raise ValueError("runs must have distinct folders")

    def stored(run: Run) -> Path:
        return results / run.key / RECORD if results is not None else run.out / RECORD

    todo, outcomes = [], {}
    for run in runs:
        path = stored(run)
        record = _read_record(path)
        has_ckpt = (run.out / CHECKPOINT).exists() and _done(_read_record(run.out / RECORD), run)
        wanted = need_checkpoint is not None and need_checkpoint(run)
        if not retrain and _done(record, run, "diverged"):
            reason = record.get("failure_reason", "")
            outcomes[run.key] = Outcome(run, "diverged", record, path, message=reason)
        elif not retrain and _done(record, run) and (has_ckpt or not wanted):
            outcomes[run.key] = Outcome(run, "skipped", record, path)
        else:
            todo.append(run)

    counter = {"done": 0}

    def report_line(outcome: Outcome) -> None:
        counter["done"] += 1
        if verbose:
            note = f" ({outcome.message})" if outcome.message else ""
            run = outcome.run
            where = run.pair if run.variant.needs_teacher else run.pair.student
            print(f"[{counter['done']}/{len(runs)}] {run.label} {where} seed {run.seed}: "
                  f"{outcome.status}{note}", flush=True)

    for outcome in outcomes.values():
        report_line(outcome)

    def execute(run: Run) -> Outcome:
        tick = time.perf_counter()
        try:
            if retrain and run.out.exists():
                _clear(run.out)
            _prepare(run)
            if jobs == 1:
                status, message = _train_here(run, threads)
            else:
                status, message = _train_subprocess(run, threads or max(1, (os.cpu_count() or 1) // jobs))
        except FolderInUse as error:  # another process trains into this run's folder: leave it alone
            status, message = "failed", str(error)
        record = _read_record(run.out / RECORD)
        if _done(record, run, "diverged"):
            status, message = "diverged", record.get("failure_reason", "")
        elif status == "trained" and not _done(record, run):
            status, message = "failed", (record or {}).get("failure_reason") or "no completed record written"
        path = run.out / RECORD
        if status in ("trained", "diverged") and results is not None:
            path = stored(run)
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run.out / RECORD, path)
        outcome = Outcome(run, status, record, path, time.perf_counter() - tick, message)
        report_line(outcome)
        return outcome

    if jobs == 1:
        done = [execute(run) for run in todo]
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            done = list(pool.map(execute, todo))
    outcomes.update({o.run.key: o for o in done})
    return [outcomes[k] for k in keys]


def outcomes_table(outcomes: Sequence[Outcome]) -> Any:
    """One row per run: label, pair, seed, status, last/best top-1, teacher top-1, wall time."""
    import pandas as pd

    rows = []
    for o in outcomes:
        r = o.record or {}
        rows.append({
            "run": o.run.label,
            "pair": str(o.run.pair) if o.run.variant.needs_teacher else o.run.pair.student,
            "seed": o.run.seed, "status": o.status, "top-1 last": r.get("top1_last"),
            "top-1 best": r.get("top1_best"), "teacher top-1": r.get("teacher_top1"),
            "wall time (s)": round(r["wall_time_s"], 1) if r.get("wall_time_s") is not None else None,
            "note": o.message,
        })
    return pd.DataFrame(rows)


def records_frame(outcomes: Sequence[Outcome]) -> Any:
    """The completed and diverged records of ``outcomes`` as :func:`kdlib.results.load_records` rows."""
    from kdlib import results

    paths = [o.record_path for o in outcomes if o.status != "failed" and o.record_path is not None]
    return results.load_records(paths, statuses=("completed", results.STATUS_DIVERGED))


def completed(outcomes: Sequence[Outcome], method: str | None = None,
              seed: int | None = None) -> list[Outcome]:
    """The outcomes that did not fail, optionally of one ``method`` and one ``seed``."""
    return [o for o in outcomes if o.ok and (method is None or o.run.variant.method == method)
            and (seed is None or o.run.seed == seed)]


def records_of(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """The completed run records (dicts) of ``outcomes``."""
    return [o.record for o in outcomes if o.ok and o.record]


def failures(outcomes: Sequence[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not o.ok]


def metrics(outcomes: Sequence[Outcome]) -> str:
    """JSON of each run's machine-dependent values (status, accuracies, last losses, wall time): what
    ``tests/test_notebooks.py`` checks for sane ranges in the committed notebooks' stored outputs."""
    rows = []
    for o in outcomes:
        r = o.record or {}
        history = r.get("history") or []
        rows.append({
            "run": o.run.label, "seed": o.run.seed, "status": o.status, "message": o.message,
            "epochs": r.get("epochs"), "history_epochs": len(history),
            **{k: r.get(k) for k in ("top1_last", "top1_best", "top5_last", "teacher_top1", "wall_time_s")},
            "losses_last": history[-1]["losses"] if history else None,
        })
    return json.dumps(rows, indent=1, default=str)


def first_seed(params: Parameters) -> Callable[[Run], bool]:
    """``need_checkpoint`` for :func:`run_grid`: the figures load the models of the first seed only."""
    return lambda run: run.seed == params.seeds[0]


def find(outcomes: Sequence[Outcome], method: str, variant: str = "default", seed: int | None = None,
         pair: Pair | None = None) -> Outcome | None:
    """The first completed outcome of ``method/variant`` (and ``seed``, ``pair`` when given)."""
    for o in outcomes:
        if not o.ok or o.run.variant.method != method or o.run.variant.variant != variant:
            continue
        if seed is not None and o.run.seed != seed:
            continue
        if pair is not None and o.run.variant.needs_teacher and o.run.pair != pair:
            continue
        if pair is not None and o.run.pair.student != pair.student:
            continue
        return o
    return None


# --- committed records, checked by retraining -----------------------------------------------------
#: The record fields a retrained run must reproduce exactly (every epoch's loss terms and accuracies, and how
#: the run ended).
REPRODUCED = ("status", "pretrain_history", "history", "failure_reason")


def verify(runs: Sequence[Run], results_dir: str | Path, out_dir: str | Path) -> list[dict[str, Any]]:
    """Retrain every run of ``runs`` whose record is committed in ``results_dir`` (same ``config_id``) into a
    fresh ``out_dir/<key>``, with the committed run's torch thread count, and compare the :data:`REPRODUCED`
    fields of the two records: are the committed numbers what this code computes?

    Expect bit-identical histories on a CPU with the same torch build and thread count (seeded data order,
    initialisation and augmentation). GPU kernels are not deterministic by default: there, expect
    differences of the order of seed noise. Returns one row per run: ``key``, the committed record's
    ``commit`` and ``top1_last``, the new ``top1_last``, and ``identical``.
    """
    rows = []
    for run in runs:
        committed = _read_record(Path(results_dir) / run.key / RECORD)
        if not committed or committed.get("config_id") != run.config_id:
            continue
        out = Path(out_dir) / run.key
        if out.exists():
            _clear(out)
        threads = (committed.get("hardware") or {}).get("torch_threads")
        _train_here(dataclasses.replace(run, config=dataclasses.replace(run.config, out=out)), threads)
        new = _read_record(out / RECORD) or {}
        rows.append({"key": run.key,
                     "commit": commit_label(committed.get("git_commit"), committed.get("git_dirty")),
                     "top1_last": committed.get("top1_last"), "new top1_last": new.get("top1_last"),
                     "identical": all(committed.get(k) == new.get(k) for k in REPRODUCED)})
    return rows


# --- trained models for figures -------------------------------------------------------------------
def trained(outcomes: Sequence[Outcome], method: str, variant: str = "default",
            seed: int | None = None) -> Any:
    """The trained distiller of ``method/variant`` (first seed unless given) among ``outcomes``; raises
    ``LookupError`` naming what to add when the run is not there or failed."""
    found = find(outcomes, method, variant, seed)
    if found is None:
        raise LookupError(f"no completed run of {method}/{variant} among this notebook's runs: add "
                          f"'{method}' to baselines (or the variant to variants), or see the failures above")
    return load_distiller(found)


def read_records(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The run records (dicts, with their history) at ``paths`` (e.g. a ``load_records`` frame's ``path``)."""
    return [r for r in (_read_record(Path(p)) for p in paths) if r is not None]


def load_distiller(run: Run | Outcome, device: str = "cpu") -> Any:
    """The trained distiller of a finished run (student, teacher and the method's parts), in eval mode.

    Built from the run's configuration and loaded from its ``last.pt`` (which holds everything but the
    teacher; the teacher comes from its checkpoint)."""
    from kdlib.data import get_dataset_spec
    from kdlib.methods import build_distiller

    run = run.run if isinstance(run, Outcome) else run
    ckpt_path = run.out / CHECKPOINT
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"run {run.key} has no checkpoint at {relative(ckpt_path)}: train it again "
                                "(run_grid with need_checkpoint)")
    c = run.config
    spec = get_dataset_spec(c.dataset)
    teacher = None
    if c.teacher_ckpt:
        teacher = models.load_teacher(c.teacher_ckpt, c.teacher, num_classes=spec.num_classes)
    student = models.create_model(c.student, num_classes=spec.num_classes)
    config = make_config(c.method, c.variant)
    distiller = build_distiller(c.method, student, teacher, config, input_shape=spec.input_shape)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    missing, unexpected = distiller.load_state_dict(state["distiller"], strict=False)
    if unexpected or [k for k in missing if not k.startswith("teacher.")]:
        raise RuntimeError(f"checkpoint {relative(ckpt_path)} does not match the run's distiller")
    epochs = state.get("record", {}).get("epochs")
    distiller.total_epochs = epochs
    return distiller.to(device).eval()


def load_teacher_of(params: Parameters, pair: Pair | None = None, device: str = "cpu") -> torch.nn.Module:
    """The frozen teacher of ``pair`` (default: the first pair), in eval mode."""
    from kdlib.data import get_dataset_spec

    pair = pair or params.pairs[0]
    ckpt = params.teacher_ckpts[pair.teacher]
    net = models.load_teacher(ckpt, pair.teacher, num_classes=get_dataset_spec(params.dataset).num_classes)
    return net.to(device).eval()


def sample_batch(dataset: str, n: int = 128,
                 data_root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of a class-balanced test subset (no augmentation): a fixed batch for figures."""
    from kdlib.data import load_data

    data = load_data(dataset, data_root, batch_size=n, eval_batch_size=n, subset=n, eval_subset=n, workers=0)
    return next(iter(data.test))


def setup(threads: int | None = 1, seed: int = 0) -> None:
    """Fix the thread count, seed python, numpy and torch, and keep the package's log messages out of the
    notebook (failures are in :func:`outcomes_table`; machine paths stay out of the outputs). Call once at
    the top of a notebook."""
    if threads:
        torch.set_num_threads(threads)
    train.seed_everything(seed)
    package = logging.getLogger("kdlib")
    if not package.handlers:
        package.addHandler(logging.NullHandler())


# --- teachers -------------------------------------------------------------------------------------
def teacher_runs(params: Parameters) -> list[Run]:
    """The ``ce`` runs that train each distinct teacher of ``params.pairs`` (first seed), for 00_teachers."""
    runs, seen = [], set()
    for pair in params.pairs:
        if pair.teacher in seen:
            continue
        seen.add(pair.teacher)
        variant = Variant("ce")
        key = f"{params.dataset}/{pair.teacher}"
        config = train.TrainConfig(
            method="ce", student=pair.teacher, dataset=params.dataset, out=params.out_dir / "teachers" / key,
            recipe=params.recipe, epochs=params.epochs, subset=params.subset, eval_subset=params.eval_subset,
            batch_size=params.batch_size, seed=params.seeds[0], device=params.device,
            data_root=params.data_root, workers=params.workers, progress=False,
        )
        runs.append(Run(config, variant, Pair(pair.teacher, pair.teacher), key, train.config_id_of(config)))
    return runs


def trained_teachers(outcomes: Sequence[Outcome], install_to: str | Path | None = None) -> dict[str, Path]:
    """``{arch: model.pt}`` of the teachers :func:`run_grid` trained from :func:`teacher_runs`; with
    ``install_to``, each is first copied there (:func:`install_teacher`) and the copy is returned."""
    found = {}
    for outcome in outcomes:
        if not outcome.ok:
            continue
        ckpt = outcome.run.out / "model.pt"
        found[outcome.run.config.student] = install_teacher(outcome, install_to) if install_to else ckpt
    return found


def install_teacher(outcome: Outcome, teachers_dir: str | Path = TEACHERS_DIR) -> Path:
    """Copy a trained teacher's ``model.pt`` and ``record.json`` to ``teachers_dir/<dataset>/<arch>/``."""
    run = outcome.run
    target = repo_path(teachers_dir) / run.key
    target.mkdir(parents=True, exist_ok=True)
    for name in ("model.pt", RECORD):
        shutil.copyfile(run.out / name, target / name)
    return target / "model.pt"


def teacher_record(ckpt: str | Path) -> dict[str, Any] | None:
    """The training record stored beside a teacher checkpoint (``record.json``), if any."""
    return _read_record(Path(ckpt).parent / RECORD)


def evaluate_teachers(params: Parameters) -> Any:
    """Top-1/top-5 of every teacher checkpoint of ``params`` on the (``eval_subset`` of the) test set."""
    import pandas as pd

    rows = []
    for arch, ckpt in params.teacher_ckpts.items():
        result = train.evaluate_checkpoint(arch, ckpt, params.dataset, data_root=params.data_root,
                                           eval_subset=params.eval_subset, device=params.device,
                                           workers=params.workers)
        record = teacher_record(ckpt) or {}
        rows.append({"teacher": arch, "checkpoint": relative(ckpt), "test images": result["n"],
                     "top-1": result["top1"], "top-5": result["top5"],
                     "recorded top-1 (full test set)": record.get("top1_last"),
                     "trained": (f"{record.get('epochs')} epochs ({record.get('recipe_name')}), "
                                 f"{record.get('subset') or 'all'} images, seed {record.get('seed')}")
                     if record else "released checkpoint",
                     "size (MB)": round(Path(ckpt).stat().st_size / 2**20, 2)})
    return pd.DataFrame(rows)


# --- profiles and make reproduce ------------------------------------------------------------------
def load_profile(name: str) -> dict[str, Any]:
    """``notebooks/profiles/<name>.json``: ``common`` parameters and per-notebook overrides."""
    path = PROFILES_DIR / f"{name}.json"
    if not path.is_file():
        found = sorted(p.stem for p in PROFILES_DIR.glob("*.json"))
        raise ValueError(f"unknown profile '{name}'; choose one of: {', '.join(found)}")
    profile = json.loads(path.read_text())
    unknown = set(profile.get("notebooks", {})) - set(NOTEBOOKS)
    if unknown:
        raise ValueError(f"profile '{name}' names unknown notebooks {sorted(unknown)}; "
                         f"choose from {', '.join(NOTEBOOKS)}")
    return profile


def parameter_defaults(notebook: str | Path) -> dict[str, Any]:
    """The names and default values of a notebook's cell tagged ``parameters`` (literals only)."""
    import ast

    path = Path(notebook)
    if not path.suffix:
        path = NOTEBOOKS_DIR / f"{notebook}.ipynb"
    cells = [c for c in json.loads(path.read_text())["cells"]
             if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{relative(path)} must have exactly one cell tagged 'parameters', "
                         f"found {len(cells)}")
    source = cells[0]["source"]
    tree = ast.parse(source if isinstance(source, str) else "".join(source))
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def notebook_parameters(profile: str | Mapping[str, Any], notebook: str, **extra: Any) -> dict[str, Any]:
    """The papermill parameters of ``notebook`` under ``profile``: ``common``, then the notebook's own
    entries, then ``extra`` (e.g. ``jobs``), keeping the names the notebook's ``parameters`` cell declares
    (a notebook-specific entry it does not declare is an error: a typo would be ignored by papermill)."""
    prof = load_profile(profile) if isinstance(profile, str) else profile
    if notebook not in NOTEBOOKS:
        raise ValueError(f"unknown notebook '{notebook}'; choose one of: {', '.join(NOTEBOOKS)}")
    declared = parameter_defaults(notebook)
    own = {k: v for k, v in prof.get("notebooks", {}).get(notebook, {}).items() if not k.startswith("_")}
    unknown = sorted(set(own) - set(declared))
    if unknown:
        raise ValueError(f"profile entries {unknown} for {notebook} are not among its parameters: "
                         f"{', '.join(declared)}")
    params = {**prof.get("common", {}), **own, **extra}
    return {k: v for k, v in params.items() if k in declared}


#: Parameters a notebook takes besides those of ``check_parameters`` (the notebook handles them).
NOTEBOOK_ONLY = ("train", "install", "records_dir", "baseline")


def check_notebook_parameters(notebook: str, params: Mapping[str, Any]) -> Parameters:
    """:func:`check_parameters` on a notebook's parameter dict (its method filled in)."""
    args = {k: v for k, v in params.items() if k not in NOTEBOOK_ONLY}
    if notebook == "00_teachers":
        args.setdefault("variants", [])
        args.setdefault("baselines", ["ce"])
        args["require_teachers"] = not params.get("train", False)
    if notebook == "06_head_to_head" and not params.get("train", False):
        args["require_teachers"] = False
    return check_parameters(method=NOTEBOOK_METHODS[notebook], **args)


def profile_runs(profile: str, match: Sequence[str] = ()) -> list[Run]:
    """Every run the notebooks of ``profile`` plan (each folder once), or those whose folder holds one of the
    ``match`` paths as whole parts (``kd/default/seed0`` selects ``…/kd/default/seed0``, not
    ``…/iekd/default/seed0``); ``ValueError`` when ``match`` selects none."""
    runs: dict[str, Run] = {}
    for nb in NOTEBOOKS[1:]:
        params = {**parameter_defaults(nb), **notebook_parameters(profile, nb)}
        for run in plan_runs(check_notebook_parameters(nb, params)):
            if not match or any(f"/{text.strip('/')}/" in f"/{run.key}/" for text in match):
                runs.setdefault(run.key, run)
    if not runs:
        raise ValueError(f"no run of profile '{profile}' matches {list(match)}; runs are named like "
                         "fashion_mnist/repdistiller/resnet32-resnet8/kd/default/seed0")
    return list(runs.values())


def profile_results_dir(profile: str) -> Path:
    """Where ``profile`` commits its records (its ``results_dir``)."""
    folder = load_profile(profile).get("common", {}).get("results_dir")
    if not folder:
        raise ValueError(f"profile '{profile}' sets no results_dir")
    return repo_path(folder)


def reproduce(profile: str, jobs: int = 1, notebooks: Sequence[str] | None = None,
              out_dir: str | Path | None = None, device: str | None = None) -> list[Path]:
    """Execute the notebooks with ``profile``'s full parameters through papermill (kernel in
    ``notebooks/``); executed copies go to ``runs/reproduce/<profile>/`` and records to the profile's
    ``results_dir``. Every notebook's parameters are checked before the first one runs."""
    import papermill

    prof = load_profile(profile)
    chosen = list(notebooks) if notebooks else list(NOTEBOOKS)
    extra: dict[str, Any] = {"jobs": jobs}
    if device:
        extra["device"] = device
    plans = {nb: notebook_parameters(prof, nb, **extra) for nb in chosen}
    for nb, params in plans.items():
        try:
            check_notebook_parameters(nb, {**parameter_defaults(nb), **params})
        except ValueError as error:
            raise ValueError(f"profile '{profile}', notebook {nb}: {error}") from None
    target = repo_path(out_dir) if out_dir else REPRODUCE_DIR / profile
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for nb, params in plans.items():
        output = target / f"{nb}.ipynb"
        log.info("executing %s with profile %s → %s", nb, profile, relative(output))
        papermill.execute_notebook(str(NOTEBOOKS_DIR / f"{nb}.ipynb"), str(output), parameters=params,
                                   cwd=str(NOTEBOOKS_DIR), progress_bar=False, log_output=True)
        written.append(output)
    return written


#: Training and test set sizes, used by ``estimate``.
DATASET_SIZES = {"cifar100": (50_000, 10_000), "cifar10": (50_000, 10_000), "fashion_mnist": (60_000, 10_000),
                 "imagenet": (1_281_167, 50_000)}


def estimate(profile: str, images_per_s: float, eval_images_per_s: float | None = None) -> Any:
    """An **estimate** (not a measurement) of a profile's device hours from a measured throughput.

    Per notebook: its runs (those no earlier notebook already ran: same folder), the training images they
    process (epochs × training set, plus IE-KD's pre-distillation epochs) and the evaluation images (one
    test-set pass per epoch, plus the teacher's), divided by ``images_per_s`` (training: teacher forward +
    student step) and ``eval_images_per_s`` (default 3 × training). Reads the profile only: no data,
    teacher or device is needed.
    """
    import pandas as pd

    prof = load_profile(profile)
    eval_ips = eval_images_per_s or 3 * images_per_s
    seen: set[str] = set()
    rows = []
    for nb in NOTEBOOKS:
        params = notebook_parameters(prof, nb)
        if nb == "00_teachers" and not params.get("train", False):
            continue
        if nb == "06_head_to_head" and not params.get("train", False):
            continue
        dataset = params["dataset"]
        n_train, n_test = DATASET_SIZES.get(dataset, (50_000, 10_000))
        n_train = min(n_train, params.get("subset") or n_train)
        n_test = min(n_test, params.get("eval_subset") or n_test)
        pairs = parse_pairs(params["pairs"])
        if nb == "00_teachers":
            variants = [Variant("ce")]
            pairs = list({p.teacher: Pair(p.teacher, p.teacher) for p in pairs}.values())
        else:
            variants = [*parse_variants(params.get("baselines", []), None, "baselines"),
                        *parse_variants(params.get("variants", []), NOTEBOOK_METHODS[nb])]
        train_images = eval_images = 0.0
        count = 0
        for pair in pairs:
            for variant in variants:
                for seed in parse_seeds(params["seeds"]):
                    key = (run_key(dataset, params["recipe"], pair, variant, seed) if nb != "00_teachers"
                           else f"teacher/{pair.student}")
                    if key in seen:
                        continue
                    seen.add(key)
                    overrides = {"epochs": params["epochs"]} if params.get("epochs") else {}
                    name = params["recipe"] if params["recipe"] in RECIPES else "repdistiller"  # not yet
                    recipe = get_recipe(name, pair.student, **overrides)  # in kdlib: its epochs, scaled
                    pre = recipe.pretrain_epochs if get_method(variant.method).has_pretrain else 0
                    count += 1
                    train_images += (recipe.epochs + pre) * n_train
                    eval_images += (recipe.epochs + (1 if variant.needs_teacher else 0)) * n_test
        hours = (train_images / images_per_s + eval_images / eval_ips) / 3600
        rows.append({"notebook": nb, "runs": count, "train images (M)": train_images / 1e6,
                     "eval images (M)": eval_images / 1e6, "estimated hours": hours})
    table = pd.DataFrame(rows)
    total = {"notebook": "total", **{c: table[c].sum() for c in table.columns if c != "notebook"}}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


def refresh(notebooks: Sequence[str] | None = None, fresh: bool = True) -> dict[str, float]:
    """Execute the committed notebooks in place with their default parameters (kernel in ``notebooks/``),
    so that their stored outputs are exactly those of the default run; ``fresh`` first removes their run
    folders (``runs/notebooks/<name>``) so that every smoke run trains. Returns seconds per notebook."""
    import nbformat
    from nbclient import NotebookClient

    timings = {}
    for name in notebooks or NOTEBOOKS:
        path = NOTEBOOKS_DIR / f"{name}.ipynb"
        out_dir = parameter_defaults(name).get("out_dir")
        if fresh and out_dir and repo_path(out_dir).resolve().is_relative_to(RUNS_DIR.resolve()):
            shutil.rmtree(repo_path(out_dir), ignore_errors=True)
        nb = nbformat.read(path, as_version=4)
        tick = time.perf_counter()
        NotebookClient(nb, timeout=1800, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}).execute()
        timings[name] = time.perf_counter() - tick
        for cell in nb.cells:  # no execution timestamps in the committed files
            cell.metadata.pop("execution", None)
        nbformat.write(nb, path)
        log.info("%s: executed in %.1f s", name, timings[name])
    return timings


BENCH_CSV = REPO / "bench" / "results.csv"


def bench_throughput(device: str, pairs: Sequence[Pair] = (),
                     path: str | Path = BENCH_CSV) -> tuple[float, float | None, str]:
    """Training (and evaluation) images per second measured by ``bench/bench.py`` on ``device`` (``cpu`` or
    ``cuda``) in its latest measurement: the row of one of ``pairs`` if the benchmark has one, else its
    slowest pair; with a line saying where the number comes from."""
    import csv

    path = Path(path)
    rows = list(csv.DictReader(path.open())) if path.is_file() else []
    rows = [r for r in rows if r.get("device") == device and r.get("ours_images_per_s")]
    if not rows:
        target = "bench-gpu" if device == "cuda" else "bench"
        raise ValueError(f"no {device} measurement in {relative(path)}: run make {target} or pass "
                         "--images-per-s")
    latest = max(r["date"] for r in rows)
    rows = [r for r in rows if r["date"] == latest]
    names = [f"{p.teacher}->{p.student}" for p in pairs]
    rows = [r for r in rows if any(r["pair"].endswith(n) for n in names)] or rows
    slowest = min(rows, key=lambda r: float(r["ours_images_per_s"]))
    eval_s = slowest.get("ours_eval_s")
    eval_ips = 10_000 / float(eval_s) if eval_s else None
    basis = (f"bench/results.csv {latest[:10]} {slowest['device_name']}, pair {slowest['pair']}: "
             f"{float(slowest['ours_images_per_s']):.0f} training images/s"
             + (f", {eval_ips:.0f} evaluation images/s" if eval_ips else ""))
    return float(slowest["ours_images_per_s"]), eval_ips, basis


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdlib.study", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reproduce", help="execute the notebooks with a profile's full parameters")
    r.add_argument("--profile", required=True)
    r.add_argument("--jobs", type=int, default=1, help="runs side by side (default 1)")
    r.add_argument("--notebooks", help="comma-separated subset, e.g. 01_ickd,06_head_to_head")
    r.add_argument("--device", help="override the profile's device")
    f = sub.add_parser("refresh", help="execute the committed notebooks in place with their defaults")
    f.add_argument("--notebooks", help="comma-separated subset (default: all)")
    f.add_argument("--keep-runs", action="store_true", help="reuse the smoke runs in runs/notebooks/")
    p = sub.add_parser("params", help="print a notebook's parameters under a profile (YAML for papermill -f)")
    p.add_argument("--profile", required=True)
    p.add_argument("--notebook", required=True)
    e = sub.add_parser("estimate", help="estimated device hours of a profile from a measured throughput")
    e.add_argument("--profile", required=True)
    e.add_argument("--images-per-s", type=float,
                   help="measured training images/s (default: the latest bench/results.csv row)")
    e.add_argument("--eval-images-per-s", type=float)
    v = sub.add_parser("verify", help="retrain a profile's committed runs and compare them with the records")
    v.add_argument("--profile", required=True)
    v.add_argument("--match", action="append", default=[],
                   help="only runs whose folder has these path parts, e.g. kd/default/seed0 (repeatable)")
    v.add_argument("--out", default=str(RUNS_DIR / "verify"), help="scratch folder (default runs/verify)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        if args.command == "reproduce":
            notebooks = [n.strip() for n in args.notebooks.split(",")] if args.notebooks else None
            for path in reproduce(args.profile, args.jobs, notebooks, device=args.device):
                print(relative(path))
        elif args.command == "refresh":
            notebooks = [n.strip() for n in args.notebooks.split(",")] if args.notebooks else None
            for name, seconds in refresh(notebooks, fresh=not args.keep_runs).items():
                print(f"notebooks/{name}.ipynb: {seconds:.1f} s")
        elif args.command == "verify":
            rows = verify(profile_runs(args.profile, args.match), profile_results_dir(args.profile),
                          repo_path(args.out))
            for row in rows:
                verdict = "identical" if row["identical"] else "DIFFERENT"
                print(f"{row['key']}: committed {row['top1_last']} @ {row['commit']}, "
                      f"now {row['new top1_last']}: {verdict}")
            return 0 if all(row["identical"] for row in rows) else 1
        elif args.command == "params":
            import yaml

            print(yaml.safe_dump(notebook_parameters(args.profile, args.notebook), sort_keys=False), end="")
        else:
            ips, eval_ips, basis = args.images_per_s, args.eval_images_per_s, "given on the command line"
            if ips is None:
                common = load_profile(args.profile)["common"]
                device = "cuda" if str(common.get("device", "cpu")).startswith("cuda") else "cpu"
                ips, eval_ips, basis = bench_throughput(device, parse_pairs(common["pairs"]))
            table = estimate(args.profile, ips, eval_ips)
            print(f"ESTIMATE (not a measurement) at {ips:g} training images/s ({basis}):")
            print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    except ValueError as error:
        print(f"kdlib.study: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
