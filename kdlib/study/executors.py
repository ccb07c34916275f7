"""Where a profile's runs train: this process (``local``), or submitit jobs on this machine
(``submitit-local``) or on a Slurm cluster (``slurm``).

``local`` is :func:`~kdlib.study.grid.run_grid` inside the notebooks, as ``make reproduce`` always did. The
two submitit executors first train every pending run of the profile as a job (:func:`submit_runs`), then the
notebooks execute and find every record done:

- **pending** (:func:`pending_runs`): a run without a completed (or diverged) record of its ``config_id`` in
  the profile's ``results_dir``, exactly the runs :func:`~kdlib.study.grid.run_grid` would train. A second
  call after every job ended submits nothing; a run whose job died is pending again, and its new job
  resumes from its ``last.pt``.
- **one job per run** (:class:`TrainJob`): the job trains the run in its own process with
  :func:`~kdlib.study.grid.train_one` (``--resume``: from ``last.pt`` when there is one); with
  ``runs_per_gpu`` N (``--runs-per-gpu``), one job per N runs, which train side by side on the job's GPU,
  each in its own process (:mod:`kdlib.packing`: CUDA MPS where it starts). It is
  checkpointable: on preemption or timeout, Slurm signals the job (``USR2``), submitit calls
  :meth:`TrainJob.checkpoint` and requeues what it returns, the same job, which resumes from the last
  completed epoch (``submitit.helpers.Checkpointable``'s contract, without importing submitit here).
- **job arrays** (``slurm``): all pending runs go in one array of ``sbatch``, at most ``array_parallelism``
  running at once; ``submitit-local`` starts at most ``parallel`` jobs at a time on this machine.
- **several GPUs** (:class:`Resources` ``gpus_per_node`` > 1, ``nodes``): one task per GPU, each task one DDP
  process. :func:`distributed_environment` exports ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR`` (the first host of ``SLURM_JOB_NODELIST``) and ``MASTER_PORT`` from Slurm's
  ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` (submitit's ``TorchDistributedEnvironment``), the
  variables :mod:`kdlib.distributed` reads as it reads torchrun's.

Run folders (``last.pt``) and records are written where the local executor writes them (``out_dir`` and
``results_dir`` of the profile), so the repository must be on a file system the nodes share. submitit's own
files (pickled jobs, ``<job id>_0_log.out`` and ``.err``) go to ``runs/reproduce/<profile>/submitit/``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlib.config import plan
from kdlib.paths import REPRODUCE_DIR, relative
from kdlib.study.grid import Outcome, Progress, Run, collect, reuse, run_grid, train_one

log = logging.getLogger(__name__)

#: The executors of ``make reproduce EXECUTOR=...``: this process (the notebooks' grid), submitit jobs on this
#: machine, submitit jobs on Slurm.
EXECUTORS = ("local", "submitit-local", "slurm")
#: What submitit calls each of them (``submitit.AutoExecutor(cluster=...)``).
_SUBMITIT_CLUSTERS = {"submitit-local": "local", "slurm": "slurm"}
#: Seconds between polls of running jobs.
POLL_S = 2.0


def check_executor(name: str) -> str:
    """``name`` if it is one of :data:`EXECUTORS`, else ``ValueError`` naming them."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor '{name}'; choose one of: {', '.join(EXECUTORS)}")
    return name


@dataclass(frozen=True)
class Resources:
    """What each run's job asks for: Slurm's ``--partition``, ``--time`` (minutes), ``--nodes``,
    ``--gpus-per-node`` (and as many ``--ntasks-per-node``: one DDP process per GPU; one without GPUs),
    ``--cpus-per-task`` (also the run's torch threads), ``--mem`` (GB per node), and the array's
    ``%parallelism`` (``submitit-local``: the jobs at once on this machine). Defaults come from the
    profile's ``cluster`` object, then the command line's options."""

    partition: str | None = None
    time_min: int = 24 * 60
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    array_parallelism: int = 256
    #: Processes per node, by default one per GPU (one without GPUs); several make a DDP run (gloo on CPU).
    tasks_per_node: int | None = None
    #: Runs each job trains side by side on its one GPU (:mod:`kdlib.packing`), each in its own process.
    runs_per_gpu: int = 1

    @property
    def tasks(self) -> int:
        """Processes per node of each job."""
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @classmethod
    def of(cls, profile: Mapping[str, Any], **options: Any) -> Resources:
        """The profile's ``cluster`` entries, overridden by ``options`` that are not None."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        given = {**profile.get("cluster", {}), **{k: v for k, v in options.items() if v is not None}}
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise ValueError(f"unknown cluster option(s) {unknown}; choose from: {', '.join(allowed)}")
        resources = cls(**given)
        for name in ("time_min", "nodes", "array_parallelism", "runs_per_gpu"):
            if not isinstance(getattr(resources, name), int) or getattr(resources, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(resources, name)!r}")
        if resources.runs_per_gpu > 1 and resources.tasks * resources.nodes > 1:
            raise ValueError(f"runs_per_gpu {resources.runs_per_gpu} packs one-process runs onto one GPU; "
                             f"these jobs run each run as {resources.tasks * resources.nodes} DDP processes")
        return resources

    def submitit_parameters(self, name: str) -> dict[str, Any]:
        """The parameters of ``submitit.AutoExecutor.update_parameters`` (Slurm ones prefixed ``slurm_``)."""
        params: dict[str, Any] = {
            "name": name, "timeout_min": self.time_min, "nodes": self.nodes,
            "tasks_per_node": self.tasks, "gpus_per_node": self.gpus_per_node,
            "slurm_array_parallelism": self.array_parallelism,
        }
        if self.cpus_per_task:
            params["cpus_per_task"] = self.cpus_per_task
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        if self.partition:
            params["slurm_partition"] = self.partition
        return params


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ValueError("the submitit executors need submitit: pip install 'kdlib[cluster]'") from None
    return submitit


def distributed_environment() -> dict[str, str]:
    """In a job of several tasks, export this task's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` (submitit's ``TorchDistributedEnvironment``:
    from ``SLURM_*`` on Slurm, ``SUBMITIT_LOCAL_*`` locally; the port is drawn from the job id, the same in
    every task) and return them; ``{}`` (nothing exported) in a one-task job."""
    submitit = _submitit()
    if submitit.JobEnvironment().num_tasks == 1:
        return {}
    # every task keeps all the node's GPUs visible: kdlib puts rank r on cuda:LOCAL_RANK, as under torchrun
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    return {name: os.environ[name] for name in names}


@dataclass
class TrainJob:
    """Runs as one submitit job (picklable), each resuming its ``last.pt``: one run in the job's process (in
    each of its DDP tasks), or several side by side on the job's GPU (``runs_per_gpu``), each in its own
    process (:func:`~kdlib.study.grid.run_grid`: under CUDA MPS where it starts). Returns one
    ``(status, message)`` of :func:`~kdlib.study.grid.train_one` per run. ``threads``: the job's torch
    threads, shared out among its runs."""

    runs: tuple[Run, ...]
    threads: int | None = None

    def __call__(self) -> list[tuple[str, str]]:
        if len(self.runs) == 1:
            env = distributed_environment()
            first = env.get("RANK", "0") == "0"  # only rank 0 may clear a stale folder
            return [train_one(self.runs[0], threads=self.threads, prepare=first)]
        threads = max(1, self.threads // len(self.runs)) if self.threads else None
        outcomes = run_grid(self.runs, jobs=len(self.runs), threads=threads, verbose=False)
        # a run found done in its folder counts as trained: the caller judges every run by its record
        return [("failed" if o.status == "failed" else "trained", o.message) for o in outcomes]

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """What submitit requeues after a preemption or timeout: this job again, which resumes from the run's
        ``last.pt`` (the last completed epoch; the record keeps a ``resumes`` entry)."""
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def pending_runs(runs: Sequence[Run], results_dir: Path) -> list[Run]:
    """The runs without a completed or diverged record of their ``config_id`` in ``results_dir``."""
    return [run for run in runs if reuse(run, results_dir) is None]


def make_executor(executor: str, folder: Path, resources: Resources, name: str) -> Any:
    """A ``submitit.AutoExecutor`` for ``executor`` (``submitit-local`` or ``slurm``); logs in ``folder``."""
    submitit = _submitit()
    cluster = _SUBMITIT_CLUSTERS[check_executor(executor)] if executor != "local" else None
    if cluster is None:
        raise ValueError("the local executor trains inside the notebooks; choose submitit-local or slurm")
    auto = submitit.AutoExecutor(folder=folder, cluster=cluster)
    auto.update_parameters(**resources.submitit_parameters(name))
    return auto


def _threads(resources: Resources, default: int | None) -> int | None:
    return resources.cpus_per_task or default


def packs(runs: Sequence[Run], runs_per_gpu: int) -> list[tuple[Run, ...]]:
    """``runs`` in order, ``runs_per_gpu`` to a job (the last job may hold fewer)."""
    return [tuple(runs[i:i + runs_per_gpu]) for i in range(0, len(runs), runs_per_gpu)]


def submit_runs(jobs: Sequence[tuple[Run, ...]], executor: Any, threads: int | None = None) -> list[Any]:
    """Submit one :class:`TrainJob` per pack of runs, as one job array (``executor.batch()``)."""
    submitted = []
    with executor.batch():
        for runs in jobs:
            submitted.append(executor.submit(TrainJob(runs, threads)))
    return submitted


def wait(jobs: Sequence[Any], packed: Sequence[tuple[Run, ...]], results_dir: Path,
         progress: Progress) -> list[Outcome]:
    """Wait for each job and :func:`~kdlib.study.grid.collect` its runs (a job that died: ``failed``)."""
    return [outcome for job, runs in zip(jobs, packed, strict=True)
            for outcome in _outcomes(job, runs, results_dir, progress)]


def _outcomes(job: Any, runs: tuple[Run, ...], results_dir: Path, progress: Progress) -> list[Outcome]:
    tick = time.perf_counter()
    try:
        said = job.results()[0]  # rank 0's (a job of several DDP tasks returns one per task)
    except Exception as error:  # the job died (killed, out of memory, cancelled): its runs are pending again
        said = [("failed", f"job {job.job_id}: {str(error).strip().splitlines()[-1][:300]}")] * len(runs)
    seconds = time.perf_counter() - tick
    return [progress(collect(run, results_dir, status, message, seconds))
            for run, (status, message) in zip(runs, said, strict=True)]


def run_local_jobs(jobs: Sequence[tuple[Run, ...]], executor: Any, results_dir: Path, parallel: int,
                   threads: int | None, progress: Progress) -> list[Outcome]:
    """``submitit-local``: at most ``parallel`` jobs at a time on this machine; each outcome as it ends."""
    waiting, running, done = list(jobs), [], {}
    while waiting or running:
        while waiting and len(running) < parallel:
            runs = waiting.pop(0)
            running.append((executor.submit(TrainJob(runs, threads)), runs))
        finished = [(job, runs) for job, runs in running if job.done()]
        for job, runs in finished:
            done.update({o.run.key: o for o in _outcomes(job, runs, results_dir, progress)})
            running.remove((job, runs))
        if not finished:
            time.sleep(POLL_S)
    return [done[run.key] for runs in jobs for run in runs]


def train_pending(runs: Sequence[Run], results_dir: Path, executor: str, resources: Resources,
                  name: str, threads: int | None = None, block: bool = True,
                  folder: Path | None = None) -> tuple[list[Outcome], list[str]]:
    """Train the pending runs of ``runs`` (:func:`pending_runs`) with ``executor``; returns the outcomes
    (empty unless ``block``) and the submitted job ids. ``slurm`` submits one job array and, when ``block``,
    waits for every job; ``submitit-local`` runs ``resources.array_parallelism`` jobs at a time and always
    waits; each job trains ``resources.runs_per_gpu`` runs. ``threads``: each job's torch threads unless
    ``resources.cpus_per_task`` says (shared out among a job's runs). submitit's files
    go to ``folder`` (default ``runs/reproduce/<name>/submitit``)."""
    todo = pending_runs(runs, results_dir)
    log.info("%d of %d runs pending; executor %s", len(todo), len(runs), executor)
    if not todo:
        return [], []
    processes = resources.tasks * resources.nodes
    for run in todo:  # what each job's processes will plan, checked before anything is submitted
        plan(run.config, world_size=processes)
    folder = folder or REPRODUCE_DIR / name / "submitit"
    auto = make_executor(executor, folder, resources, f"kdlib-{name}")
    progress = Progress(len(todo), verbose=True)
    threads = _threads(resources, threads)
    packed = packs(todo, resources.runs_per_gpu)
    if executor == "submitit-local":
        outcomes = run_local_jobs(packed, auto, results_dir, resources.array_parallelism, threads, progress)
        return outcomes, []
    jobs = submit_runs(packed, auto, threads)
    ids = [job.job_id for job in jobs]
    log.info("submitted %d jobs of %d runs (%s ... %s); logs in %s", len(jobs), len(todo), ids[0], ids[-1],
             relative(folder))
    return (wait(jobs, packed, results_dir, progress) if block else []), ids
