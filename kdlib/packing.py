"""Runs side by side on GPUs: which GPU each run trains on, and CUDA MPS while runs share one.

A small CIFAR student at batch 64 keeps a GPU busy for only part of each step (``bench/README.md``: ICKD
resnet32x4 → resnet8x4 reached 7.5% of an H200's bf16 peak), so one GPU can train several runs at once.
:func:`~kdlib.study.grid.run_grid` with ``jobs`` > 1 trains each run in its own ``python -m kdlib train``
process; :func:`side_by_side` gives every process a slot, and on ``device`` ``cuda`` (or ``auto``) slot ``i``
trains on visible GPU ``i mod G`` (``CUDA_VISIBLE_DEVICES`` of its process, which then calls it ``cuda:0``).
``--runs-per-gpu N`` asks for N runs on each visible GPU (:func:`jobs_for`: N × G jobs).

Every run keeps its protocol: its own process, seed, batches and batch size. Only the GPU is shared, so a
run's numbers are those of the run alone up to the nondeterminism its GPU kernels have anyway.

Where a GPU holds more than one run, :func:`side_by_side` starts a private CUDA MPS daemon
(``nvidia-cuda-mps-control -d``, its pipe and log in a temporary folder, passed to each process as
``CUDA_MPS_PIPE_DIRECTORY`` and ``CUDA_MPS_LOG_DIRECTORY``) so that the processes' kernels run concurrently,
and stops it at the end. Without the control program, or where the daemon does not start (a GPU in an
exclusive compute mode, no permission), the driver time-slices the processes; the log says which. An MPS
daemon already serving this environment (``CUDA_MPS_PIPE_DIRECTORY`` set) is used as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: The program that starts, queries and stops CUDA's Multi-Process Service.
MPS_CONTROL = "nvidia-cuda-mps-control"


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (its entries when it is set,
    else ``0 .. torch.cuda.device_count() - 1``); empty without CUDA."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def jobs_for(runs_per_gpu: int, gpus: list[str] | None = None) -> int:
    """How many runs side by side put ``runs_per_gpu`` on each visible GPU; an error naming the problem on a
    machine without one."""
    gpus = visible_gpus() if gpus is None else gpus
    if not gpus:
        raise ValueError(f"--runs-per-gpu {runs_per_gpu} needs a CUDA GPU and this machine shows none "
                         "(torch.cuda.device_count() is 0); use --jobs to train runs side by side on the CPU")
    return runs_per_gpu * len(gpus)


class Slots:
    """``jobs`` slots, each the environment of the process that trains in it; :meth:`take` lends one to a
    thread until its run ends, so no two running processes ever hold the same slot."""

    def __init__(self, environments: list[dict[str, str]]) -> None:
        self.environments = environments
        self.free: queue.Queue[int] = queue.Queue()
        for index in range(len(environments)):
            self.free.put(index)

    @contextlib.contextmanager
    def take(self) -> Iterator[dict[str, str]]:
        """A free slot's environment for the block (waiting for one to be free), given back at its end."""
        index = self.free.get()
        try:
            yield self.environments[index]
        finally:
            self.free.put(index)


def spreads_over_gpus(device: str) -> bool:
    """Whether runs on ``device`` go to the visible GPUs in turn: ``cuda`` and ``auto``, not a named
    ``cuda:k`` (all its runs on that GPU) or the CPU."""
    return device in ("cuda", "auto")


@contextlib.contextmanager
def side_by_side(jobs: int, device: str) -> Iterator[Slots]:
    """Slots for ``jobs`` processes training on ``device`` (see the module's description): on GPUs, each
    slot's ``CUDA_VISIBLE_DEVICES`` and, where a GPU holds several, the MPS daemon's variables."""
    gpus = visible_gpus() if spreads_over_gpus(device) else []
    if not gpus:
        yield Slots([{} for _ in range(jobs)])
        return
    pinned = [{"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]} for slot in range(jobs)]
    per_gpu = -(-jobs // len(gpus))
    if per_gpu == 1:
        yield Slots(pinned)
        return
    with mps_daemon() as mps:
        if mps is None:
            log.info("%d runs per GPU without CUDA MPS: the driver time-slices their kernels", per_gpu)
        else:
            log.info("%d runs per GPU under CUDA MPS (pipe %s)", per_gpu, mps["CUDA_MPS_PIPE_DIRECTORY"])
        yield Slots([{**slot, **(mps or {})} for slot in pinned])


@contextlib.contextmanager
def mps_daemon(log_dir: Path | None = None) -> Iterator[dict[str, str] | None]:
    """A private CUDA MPS daemon for the block, stopped at its end: the variables its clients need, or None
    where there is none (no :data:`MPS_CONTROL`, or it failed to start; the reason is logged). The pipe lives
    in a short temporary folder (a socket path holds at most 107 characters); the log in ``log_dir`` (kept;
    ``server_list.txt`` there is non-empty when clients connected) or a temporary folder. A daemon this
    environment already names (``CUDA_MPS_PIPE_DIRECTORY``) is used, and left running."""
    if os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):
        yield {name: os.environ[name] for name in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")
               if name in os.environ}
        return
    control = shutil.which(MPS_CONTROL)
    if control is None:
        yield None
        return
    pipe = Path(tempfile.mkdtemp(prefix="mps"))
    logs = log_dir or pipe / "log"
    logs.mkdir(parents=True, exist_ok=True)
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(logs)}
    try:
        subprocess.run([control, "-d"], env={**os.environ, **env}, check=True, timeout=30,
                       capture_output=True, text=True)
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("CUDA MPS did not start (%s)", " ".join(str(error).split())[:300])
        shutil.rmtree(pipe, ignore_errors=True)
        yield None
        return
    try:
        yield env
    finally:
        _stop(control, {**os.environ, **env}, logs)
        shutil.rmtree(pipe, ignore_errors=True)


def _stop(control: str, env: dict[str, str], logs: Path) -> None:
    """Write the daemon's server list (its clients' servers) to ``logs/server_list.txt``, then stop it."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        servers = subprocess.run([control], input="get_server_list\n", env=env, capture_output=True,
                                 text=True, timeout=10).stdout.strip()
        (logs / "server_list.txt").write_text(servers + "\n")
        log.info("CUDA MPS servers at the end: %s", servers or "none (no process connected)")
        subprocess.run([control], input="quit\n", env=env, timeout=30, capture_output=True, text=True)
