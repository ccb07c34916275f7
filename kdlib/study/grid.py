"""The study's grid: planned runs → trained (or reused) records, and committed records checked by retraining.

- :func:`plan_runs`: the runs of a notebook (each method variant and baseline × pair × seed), each one a
  :class:`~kdlib.config.TrainConfig` with its ``config_id`` computed exactly as :func:`kdlib.train.train`
  does, without training (:func:`kdlib.record.config_id_of`).
- :func:`run_grid`: trains the runs that are not done yet, in this process or ``jobs`` subprocesses side by
  side (``python -m kdlib train``). A run whose completed record with the same ``config_id`` exists is
  skipped, and an interrupted run resumes from its ``last.pt``, so an interrupted ``make reproduce``
  continues where it stopped. Run folders (``record.json``, ``last.pt``, ``model.pt``) live under
  ``out_dir`` (git-ignored ``runs/``); with ``results_dir`` set, only ``record.json`` is copied there
  (``data/results/<profile>/...``): students' checkpoints are never committed.
- :func:`verify`: retrains committed runs and compares the records.

Run layout (the same relative path under ``out_dir`` and ``results_dir``)::

    <dataset>/<recipe>/<teacher>-<student>/<method>/<variant>/seed<k>     # distillation runs
    <dataset>/<recipe>/<student>/ce/<variant>/seed<k>                      # runs without a teacher
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdlib import train
from kdlib.config import TrainConfig, to_argv
from kdlib.files import atomic_write
from kdlib.packing import side_by_side
from kdlib.paths import REPO, relative, repo_path
from kdlib.record import TrainingFailed, config_id_of, cpu_difference, hardware
from kdlib.results import commit_label, record_problem
from kdlib.runlock import FolderInUse, run_lock
from kdlib.study.parameters import Pair, Parameters, Variant, bad_parameter

log = logging.getLogger(__name__)

#: Files a finished run leaves in its folder; only ``record.json`` goes to ``results_dir``.
RECORD = "record.json"
CHECKPOINT = "last.pt"


@dataclass
class Run:
    """One planned training run: its configuration, identity and place."""

    config: TrainConfig
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


# --- planning -------------------------------------------------------------------------------------
def run_key(dataset: str, recipe: str, pair: Pair, variant: Variant, seed: int) -> str:
    """The run's relative folder (see the module docstring); runs without a teacher are keyed by student, so
    the notebooks of one profile share them. Epochs and subset are not in the key: within a profile they are
    the same for every notebook (a folder holding another configuration is replaced, see :func:`run_grid`)."""
    where = pair.name if variant.needs_teacher else pair.student
    return f"{dataset}/{recipe}/{where}/{variant.method}/{variant.variant}/seed{seed}"


def grid_cells(dataset: str, recipe: str, pairs: Sequence[Pair], variants: Sequence[Variant],
               seeds: Sequence[int]) -> Iterator[tuple[str, Pair, Variant, int]]:
    """Every cell of the grid pairs × variants × seeds, in that order, as ``(run_key, pair, variant, seed)``;
    a folder may come twice (runs without a teacher are keyed by student): callers keep the first."""
    for pair in pairs:
        for variant in variants:
            for seed in seeds:
                yield run_key(dataset, recipe, pair, variant, seed), pair, variant, seed


def plan_runs(params: Parameters, variants: Sequence[Variant] | None = None) -> list[Run]:
    """Every run of ``params`` (baselines first, then variants; × pairs × seeds), de-duplicated by folder."""
    chosen = list(variants) if variants is not None else [*params.baselines, *params.variants]
    runs: dict[str, Run] = {}
    for key, pair, variant, seed in grid_cells(params.dataset, params.recipe, params.pairs, chosen,
                                               params.seeds):
        if key in runs:
            continue
        ckpt = params.teacher_ckpts.get(pair.teacher) if variant.needs_teacher else None
        if variant.needs_teacher and ckpt is None:
            raise bad_parameter("pairs", f"no checkpoint of teacher '{pair.teacher}' for {params.dataset}")
        config = TrainConfig(
            method=variant.method, student=pair.student, dataset=params.dataset,
            out=params.out_dir / key, teacher=pair.teacher if variant.needs_teacher else None,
            teacher_ckpt=ckpt, recipe=params.recipe, epochs=params.epochs, subset=params.subset,
            eval_subset=params.eval_subset, batch_size=params.batch_size, seed=seed,
            device=params.device, variant=variant.overrides, data_root=params.data_root,
            workers=params.workers, progress=False, student_weights=variant.student_weights,
            **params.train_options,
        )
        runs[key] = Run(config, variant, pair, key, config_id_of(config))
    return list(runs.values())


# --- run folders ----------------------------------------------------------------------------------
def read_record(path: Path) -> dict[str, Any] | None:
    """The record (dict) at ``path``, or None when it is missing or not a JSON object."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _done(record: dict[str, Any] | None, run: Run, status: str = "completed") -> bool:
    return bool(record) and record.get("status") == status and record.get("config_id") == run.config_id


def _clear(out: Path) -> None:
    """Remove a run folder, under its run lock: :class:`~kdlib.runlock.FolderInUse` if a live run uses it."""
    with run_lock(out):
        shutil.rmtree(out)


def _prepare(run: Run) -> None:
    """Remove a stale run folder so the run can start or resume: another configuration's checkpoint, or the
    run's own completed record without its checkpoint (trained again for the checkpoint a figure loads;
    the trainer refuses to train over a completed record, which the grid's results folder keeps)."""
    record = read_record(run.out / RECORD)
    own = record is not None and record.get("config_id") == run.config_id
    if (run.out / CHECKPOINT).exists() and not own:
        log.warning("removing %s: it holds another configuration's run", run.out)
        _clear(run.out)
    elif own and not (run.out / CHECKPOINT).exists() and record.get("status") == "completed":
        log.warning("training %s again: its checkpoint is missing", run.out)
        _clear(run.out)
    run.out.mkdir(parents=True, exist_ok=True)


# --- training one run -----------------------------------------------------------------------------
def train_argv(config: TrainConfig) -> list[str]:
    """``python -m kdlib`` arguments that train ``config`` (resuming its ``last.pt``, no progress bars):
    :func:`kdlib.config.to_argv`, the command line's own mapping, so every field reaches the subprocess."""
    return ["train", *to_argv(dataclasses.replace(config, resume=True, progress=False))]


def _train_here(run: Run, threads: int | None) -> tuple[str, str]:
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        train.train(dataclasses.replace(run.config, resume=True))
        return "trained", ""
    except TrainingFailed as error:
        return "failed", str(error)
    finally:
        torch.set_num_threads(previous)


def _train_subprocess(run: Run, threads: int, slot: dict[str, str] | None = None) -> tuple[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **(slot or {})}
    log_path = run.out / "train.log"
    with open(log_path, "w") as log_file:
        done = subprocess.run([sys.executable, "-m", "kdlib", *train_argv(run.config)], stdout=log_file,
                              stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if done.returncode == 0:
        return "trained", ""
    tail = log_path.read_text().strip().splitlines()[-3:]
    return "failed", f"exit status {done.returncode}: {' | '.join(tail)}"


def train_one(run: Run, jobs: int = 1, threads: int | None = None, retrain: bool = False,
              prepare: bool = True, slot: dict[str, str] | None = None) -> tuple[str, str]:
    """Train ``run`` (from scratch when ``retrain``, else resuming its ``last.pt``): its status (``trained``
    or ``failed``) and a message. In this process when ``jobs`` is 1, else in a ``python -m kdlib train``
    subprocess with the environment of its ``slot`` (:func:`~kdlib.packing.side_by_side`: its GPU).
    ``prepare``: first remove a folder holding another configuration's run (only one process of a
    several-process run does it)."""
    try:
        if retrain and run.out.exists():
            _clear(run.out)
        if prepare:
            _prepare(run)
        if jobs == 1:
            return _train_here(run, threads)
        return _train_subprocess(run, threads or share_cores(jobs, None)[1], slot)
    except FolderInUse as error:  # another process trains into this run's folder: leave it alone
        return "failed", str(error)


# --- the grid -------------------------------------------------------------------------------------
def _stored(run: Run, results: Path | None) -> Path:
    """Where the run's record is kept: ``results/<key>/record.json``, else its own folder."""
    return results / run.key / RECORD if results is not None else run.out / RECORD


def reuse(run: Run, results: Path | None, need_checkpoint: Callable[[Run], bool] | None = None,
          retrain: bool = False) -> Outcome | None:
    """The outcome of a run done before (``diverged`` or ``skipped``), or None when it must train."""
    if retrain:
        return None
    path = _stored(run, results)
    record = read_record(path)
    if _done(record, run, "diverged"):
        return Outcome(run, "diverged", record, path, message=record.get("failure_reason", ""))
    has_ckpt = (run.out / CHECKPOINT).exists() and _done(read_record(run.out / RECORD), run)
    wanted = need_checkpoint is not None and need_checkpoint(run)
    if _done(record, run) and (has_ckpt or not wanted):
        return Outcome(run, "skipped", record, path)
    return None


def _execute(run: Run, results: Path | None, jobs: int, threads: int | None, retrain: bool,
             slot: dict[str, str] | None = None) -> Outcome:
    """Train ``run``, then :func:`collect` it."""
    tick = time.perf_counter()
    status, message = train_one(run, jobs, threads, retrain, slot=slot)
    return collect(run, results, status, message, time.perf_counter() - tick)


def collect(run: Run, results: Path | None, status: str = "trained", message: str = "",
            seconds: float = 0.0) -> Outcome:
    """Judge a run that was trained (here, in a subprocess or in a cluster job) by its folder's record and
    copy a completed or diverged record to ``results``: ``diverged`` when the record says so, ``failed`` when
    the training said ``status`` ``failed`` or left no completed record of this ``config_id``."""
    record = read_record(run.out / RECORD)
    if _done(record, run, "diverged"):
        status, message = "diverged", record.get("failure_reason", "")
    elif status == "trained" and not _done(record, run):
        status, message = "failed", (record or {}).get("failure_reason") or "no completed record written"
    path = run.out / RECORD
    if status in ("trained", "diverged") and results is not None:
        path = _stored(run, results)
        content = (run.out / RECORD).read_bytes()
        try:  # never a half-written record in the results: the copy replaces the file whole, or not at all
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda buffer: buffer.write(content))
        except OSError as error:  # the run's own record stays in its folder: the next call stores it
            status, message = "failed", f"cannot store its record in {relative(path.parent)}: {error}"
    return Outcome(run, status, record, path, seconds, message)


class Progress:
    """One line per run on stdout as it ends, numbered in that order (see :func:`run_grid`)."""

    def __init__(self, total: int, verbose: bool) -> None:
        self.total, self.verbose, self.done = total, verbose, 0
        self.lock = threading.Lock()

    def __call__(self, outcome: Outcome) -> Outcome:
        with self.lock:
            self.done += 1
            if self.verbose:
                note = f" ({outcome.message})" if outcome.message else ""
                run = outcome.run
                where = run.pair if run.variant.needs_teacher else run.pair.student
                print(f"[{self.done}/{self.total}] {run.label} {where} seed {run.seed}: "
                      f"{outcome.status}{note}", flush=True)
        return outcome


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
    ``last.pt`` is there too. Otherwise it trains, resuming its own ``last.pt``: in this process when ``jobs``
    is 1, else in ``jobs`` ``python -m kdlib train`` subprocesses side by side, each with ``threads`` torch
    threads (default: the cores shared out) and, on GPUs, a GPU of its own or shared with the others under
    CUDA MPS (:func:`~kdlib.packing.side_by_side`). A failed run (crash, interruption) does not stop the
    others; its outcome says why, and the next call retries it. A run whose loss became non-finite is
    ``diverged``: that is a result of its configuration (same seed, same batches), so its record is kept like
    a completed one and the run is not retried (unless ``retrain``). With ``results_dir``, each completed or
    diverged record is copied to ``results_dir/<key>/record.json`` (the record only). ``verbose``: one line
    per run on stdout (no timings: notebooks keep it in their output), e.g.
    ``[3/9] ickd/default resnet32 → resnet8 seed 0: trained``.
    """
    results = repo_path(results_dir) if results_dir is not None else None
    if jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    keys = [r.key for r in runs]
    if len(set(keys)) != len(keys):
        raise ValueError("runs must have distinct folders")
    outcomes: dict[str, Outcome] = {}
    todo = []
    for run in runs:
        reused = reuse(run, results, need_checkpoint, retrain)
        if reused is None:
            todo.append(run)
        else:
            outcomes[run.key] = reused
    progress = Progress(len(runs), verbose)
    for outcome in outcomes.values():
        progress(outcome)

    if jobs == 1 or not todo:
        done = [progress(_execute(run, results, 1, threads, retrain)) for run in todo]
    else:
        jobs, threads = share_cores(jobs, threads)
        with side_by_side(jobs, todo[0].config.device) as slots:

            def execute(run: Run) -> Outcome:
                with slots.take() as slot:
                    return progress(_execute(run, results, jobs, threads, retrain, slot))

            with ThreadPoolExecutor(max_workers=jobs) as pool:
                done = list(pool.map(execute, todo))
    outcomes.update({o.run.key: o for o in done})
    return [outcomes[k] for k in keys]


def share_cores(jobs: int, threads: int | None, cores: int | None = None) -> tuple[int, int]:
    """``(jobs, threads)`` for ``jobs`` runs side by side on ``cores`` cores (default: this machine's) that
    never oversubscribe the cores: ``threads`` None shares the cores out, and more jobs than the cores hold
    (at ``threads`` each) run as many at a time as they hold, with a warning. Torch threads that outnumber the
    cores slow every run many times over (two 2-thread runs on 2 cores took 466 s an epoch instead of 5 s);
    one run with more threads than cores is the caller's choice, kept with a warning."""
    cores = cores or os.cpu_count() or 1
    fit = cores if threads is None else max(1, cores // threads)
    if jobs > fit:
        log.warning("%d jobs on %d cores: running %d at a time", jobs, cores, fit)
        jobs = fit
    if threads is None:
        return jobs, max(1, cores // jobs)
    if threads > cores:
        log.warning("%d threads on %d cores: the run will slow down many times over; pass fewer threads",
                    threads, cores)
    return jobs, threads


# --- committed records, checked by retraining -----------------------------------------------------
#: The record fields a retrained run must reproduce exactly (every epoch's loss terms and accuracies, and how
#: the run ended).
REPRODUCED = ("status", "pretrain_history", "history", "failure_reason")


def invalid_records(runs: Sequence[Run], results_dir: Path) -> list[str]:
    """``<record>: <why>`` for each committed record of ``runs`` in ``results_dir`` that is not a JSON object
    or is invalid (:func:`kdlib.results.record_problem`: e.g. ``hardware`` or its ``torch_threads`` of the
    wrong type), which :func:`verify` cannot retrain and compare."""
    problems = []
    for run in runs:
        path = results_dir / run.key / RECORD
        if path.is_file():
            record = read_record(path)
            problem = "not a JSON object" if record is None else record_problem(record)
            if problem:
                problems.append(f"{relative(path)}: {problem}")
    return problems


def verify(runs: Sequence[Run], results_dir: str | Path, out_dir: str | Path,
           tolerance: float | None = None) -> list[dict[str, Any]]:
    """Retrain every run of ``runs`` whose record is committed in ``results_dir`` (same ``config_id``) into a
    fresh ``out_dir/<key>``, with the committed run's torch thread count, and compare the records: are the
    committed numbers what this code computes?

    ``tolerance`` None: the :data:`REPRODUCED` fields must be identical (bit for bit). Expect that only on a
    CPU of the same type (model and instruction-set flags) with the same torch build and thread count: another
    CPU type may round differently from the first epoch on (an AMD EPYC record retrained on an Intel AVX-512
    Xeon gave 82.10 for 81.42). ``tolerance`` in top-1 points: a run passes when it ends as the record did
    (``status``) and its last-epoch top-1 is within ``tolerance`` of the record's. GPU kernels are not
    deterministic by default: there, use a tolerance of the order of seed noise. Returns one row per run:
    ``key``, the committed record's ``commit``, ``top1_last`` and ``cpu``, the new ``top1_last``,
    ``difference`` (new minus committed), ``same_cpu`` (this CPU's model is the record's),
    ``cpu_difference`` (:func:`~kdlib.record.cpu_difference`: model or flags, in words; None when they
    agree), ``identical`` and ``passed``. An invalid committed record (:func:`invalid_records`) is a
    ``ValueError`` naming it, before anything retrains.
    """
    invalid = invalid_records(runs, Path(results_dir))
    if invalid:  # checked before anything retrains: one bad record would crash the comparison of all
        raise ValueError(f"invalid committed record {'; '.join(invalid)}; fix or delete it, then verify "
                         "again")
    rows = []
    here = hardware(torch.device("cpu"))
    for run in runs:
        committed = read_record(Path(results_dir) / run.key / RECORD)
        if not committed or committed.get("config_id") != run.config_id:
            continue
        out = Path(out_dir) / run.key
        if out.exists():
            _clear(out)
        recorded = committed.get("hardware") or {}
        _train_here(dataclasses.replace(run, config=dataclasses.replace(run.config, out=out)),
                    recorded.get("torch_threads"))
        rows.append(_compared(run.key, committed, read_record(out / RECORD) or {}, here, tolerance))
    return rows


def _compared(key: str, committed: dict[str, Any], new: dict[str, Any], here: dict[str, Any],
              tolerance: float | None) -> dict[str, Any]:
    """One row of :func:`verify`: a committed record beside its retrained copy."""
    recorded = committed.get("hardware") or {}
    identical = all(committed.get(k) == new.get(k) for k in REPRODUCED)
    before, after = committed.get("top1_last"), new.get("top1_last")
    numbers = isinstance(before, int | float) and isinstance(after, int | float)
    difference = after - before if numbers else None
    if tolerance is None:
        passed = identical
    else:
        passed = committed.get("status") == new.get("status") and (
            difference is None and before is None or difference is not None and abs(difference) <= tolerance)
    return {"key": key, "commit": commit_label(committed.get("git_commit"), committed.get("git_dirty")),
            "top1_last": before, "new top1_last": after, "difference": difference,
            "cpu": recorded.get("cpu"), "same_cpu": recorded.get("cpu") == here.get("cpu"),
            "cpu_difference": cpu_difference(recorded, here), "identical": identical, "passed": passed}
