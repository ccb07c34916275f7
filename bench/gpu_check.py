"""GPU checks for a lent machine: one script, stages with time budgets and a global deadline, files in --out.

    PYTHONPATH=. python3 bench/gpu_check.py --out $OUT      # one H100/H200: at most 9.5 minutes
    .venv/bin/python bench/gpu_check.py --device cpu --quick --out runs/gpu_check   # dry run, tiny sizes

Each stage runs in its own process (``--stage NAME``), killed at its budget; its failure is recorded in
stages.json and the next stage runs; none starts with under ``MIN_STAGE_S`` seconds left. ``setup``: env.json
(versions, device, commit) and a CIFAR-100 with synthetic pixels read back by kdlib (data.json); ``parity``:
the fast-path step compiled and eager on the same batches from the same weights, fp32 and bf16, and whether
CUDA graphs were recorded or skipped (parity.csv, parity_summary.csv); ``reproduce``: a 2-epoch cut of the
cifar100 profile through the study's planning, a teacher and its runs side by side on the GPU (reproduce.csv,
reproduce_records/); ``kd_row``: ``bench.py --pairs kd`` (bench_kd.csv); ``throughput``: 1-8 concurrent
training processes (``--worker``; throughput.csv); ``profile``: torch.profiler over ICKD steps
(profile_ops.csv, profile_summary.json); ``throughput_mps``: the same under a private CUDA MPS daemon. Then
summary.txt, also printed. bench/README.md says more. Imports only the standard library, numpy, torch,
torchvision and kdlib (the ``reproduce`` stage also the study's own packages: pandas, scipy, matplotlib,
pyyaml, tqdm).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from kdlib import distributed, packing
from kdlib.cifar import write_synthetic_cifar100
from kdlib.compilation import cudagraph_verdict, watch_cudagraphs  # CUDA graphs: used or skipped
from kdlib.data import load_data
from kdlib.fast import CompiledOrEager, resolve_precision
from kdlib.files import append_csv

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[1]
_spec = importlib.util.spec_from_file_location("kdlib_bench", SCRIPT.parent / "bench.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["kdlib_bench"] = bench  # its dataclasses look their module up there
_spec.loader.exec_module(bench)

STAGES = ("setup", "parity", "reproduce", "kd_row", "throughput", "profile", "throughput_mps")
MIN_STAGE_S = 20.0  # no stage starts with less time than this before the deadline


#: What each stage runs: a GPU's sizes, and the dry run's tiny ones (``--quick``). ``warmup``: steps per
#: process and pair before the timed ones (compilation, CUDA-graph recording); ``steps``: timed steps per
#: process and level; ``per_class``: synthetic training and test images per class.
Sizes = SimpleNamespace
FULL = Sizes(batch=64, parity_steps=20, warmup=20, steps=300, profile_steps=50, levels=(1, 2, 4, 8),
             per_class=(500, 100), parity_pair=("kd", "resnet32x4", "resnet8x4"),
             profile_pair=bench.PAIRS["ickd"],
             throughput_pairs=(("kd", "resnet32x4", "resnet8x4"), bench.PAIRS["kd"]), deadline_s=570,
             reproduce_pair="resnet32x4->resnet8x4", reproduce_epochs=2,
             reproduce_variants=["ce", "kd", {"method": "dkd", "nckd_weight": "mdistiller"}, "ickd", "cd",
                                 "cwt"],
             budgets={"setup": 90, "parity": 150, "reproduce": 150, "throughput": 150, "profile": 90,
                      "kd_row": 150, "throughput_mps": 120})
QUICK = Sizes(batch=16, parity_steps=3, warmup=2, steps=3, profile_steps=3, levels=(1, 2), per_class=(4, 1),
              parity_pair=("kd", "resnet20", "resnet8"), profile_pair=("ickd", "resnet20", "resnet8"),
              throughput_pairs=(("kd", "resnet20", "resnet8"), ("kd", "resnet14", "resnet8")), deadline_s=210,
              reproduce_pair="resnet14->resnet8", reproduce_epochs=1, reproduce_variants=["ce", "kd", "ickd"],
              budgets=dict.fromkeys(STAGES, 60))


def pair_name(pair: tuple[str, str, str]) -> str:
    return f"{pair[0]} {pair[1]}->{pair[2]}"


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV ``path``, whose header is the first row's keys (floats to 6 digits)."""
    append_csv(path, [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}])


log = functools.partial(print, file=sys.stderr, flush=True)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def setup_device(name: str, cpu_threads: int) -> torch.device:
    """The device; cuDNN's autotuner on CUDA (as the trainer), ``cpu_threads`` torch threads on a CPU."""
    device = distributed.resolve_device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(cpu_threads)
    return device


# --- the trainer's fast path, as bench.py sets it up ---------------------------------------------------
def build_ours(args: argparse.Namespace, sizes: Sizes, pair: tuple[str, str, str], device: torch.device,
               precision: str, compile_: bool) -> Any:
    """bench.py's ``build_ours`` (the trainer's fast path, seeded weights, the loader at epoch 1) on the data
    in ``--data-root``; a ``--backend`` other than inductor (``aot_eager``) traces without generating code."""
    train_set = bench.cifar_shaped(Path(args.data_root))[0]
    inductor = args.backend == "inductor"
    ours = bench.build_ours(pair, train_set, device, sizes.batch, compile_ and inductor, precision)
    if compile_ and not inductor:
        ours.forward = CompiledOrEager(ours.distiller, enabled=True, batch_size=sizes.batch,
                                       backend=args.backend)
    return ours


def run_steps(loop: Iterator[None], steps: int, device: torch.device) -> tuple[float, float]:
    """``steps`` steps of ``bench.ours_loop`` (the trainer's ``fast_step``, ``DeviceMetrics``) between device
    syncs; their start and end on the system-wide monotonic clock (comparable across processes)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.monotonic()
    for _ in range(steps):
        next(loop)
    sync()
    return start, time.monotonic()


# --- stages (each runs in its own process: `--stage NAME`) --------------------------------------------------
Context = SimpleNamespace  # args, sizes, device, out, deadline (time.time() by which the stage is done)


def stage_setup(ctx: Context) -> None:
    """env.json (versions, device, commit), then the data: synthetic CIFAR-100 files unless ``--data-root``
    holds the real ones, read back through kdlib's loader (data.json)."""
    cuda, root, tick = ctx.device.type == "cuda", Path(ctx.args.data_root), time.perf_counter()
    write_json(ctx.out / "env.json", {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017
        "commit": bench.commit(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None, "device": ctx.device.type,
        "device_name": bench.device_name(ctx.device), "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "precision_auto": resolve_precision("auto", ctx.device),
        "mps_control": shutil.which(packing.MPS_CONTROL), "quick": ctx.args.quick,
        "backend": ctx.args.backend, "data": ctx.args.data_kind})
    if ctx.args.data_kind == "synthetic":
        write_synthetic_cifar100(root, *ctx.sizes.per_class)
    written = time.perf_counter() - tick
    data = load_data("cifar100", root, batch_size=ctx.sizes.batch, workers=0, download=False)
    write_json(ctx.out / "data.json", {"kind": ctx.args.data_kind, "train_images": data.train_size,
                                       "test_images": data.test_size, "write_s": written,
                                       "load_s": time.perf_counter() - tick - written})


def parity_run(ctx: Context, precision: str, compile_: bool) -> dict[str, Any]:
    """``parity_steps`` steps of the fast path from seeded weights on the seeded loader's first batches: each
    step's inputs' sum, logits and loss terms, then the weights (student, projectors, BatchNorm statistics;
    not the frozen teacher)."""
    ours = build_ours(ctx.args, ctx.sizes, ctx.sizes.parity_pair, ctx.device, precision, compile_)
    forward, steps = ours.forward, []

    def capture(x: Any, y: Any) -> Any:  # clones: a CUDA-graph replay overwrites the previous outputs
        logits, terms = forward(x, y)
        steps.append((x.double().sum(), logits.detach().float().clone(),
                      {k: v.detach().float().clone() for k, v in terms.items()}))
        return logits, terms

    ours.forward = capture
    with watch_cudagraphs(ctx.device) as graphs:
        start, end = run_steps(bench.ours_loop(ours), ctx.sizes.parity_steps, ctx.device)
    weights = {k: v.detach().float().clone() for k, v in ours.distiller.state_dict().items()
               if not k.startswith("teacher.") and v.is_floating_point()}
    return {"steps": steps, "weights": weights, "seconds": end - start, "forward": forward.describe(),
            "cudagraphs": cudagraph_verdict(ctx.device, forward, graphs), "graphs": graphs}


def stage_parity(ctx: Context) -> None:
    s = ctx.sizes
    for precision in ("fp32", "bf16"):
        compiled, eager = (parity_run(ctx, precision, c) for c in (True, False))
        same_inputs, logit_diffs, loss_diffs = True, [], []
        for i, ((xc, lc, tc), (xe, le, te)) in enumerate(zip(compiled["steps"], eager["steps"], strict=True)):
            same_inputs &= bool(xc == xe)
            logit_diffs.append((lc - le).abs().max().item())
            loss_diffs.append(max((tc[k] - te[k]).abs().max().item() for k in tc))
            append_row(ctx.out / "parity.csv", {
                "precision": precision, "step": i, "logits_max_abs_diff": logit_diffs[-1],
                "loss_max_abs_diff": loss_diffs[-1], "loss_compiled": sum(v.item() for v in tc.values()),
                "loss_eager": sum(v.item() for v in te.values())})
        w_c, w_e = compiled["weights"], eager["weights"]
        diffs = {k: (w_c[k] - w_e[k]).abs().max().item() for k in w_e}
        worst = max(diffs, key=diffs.get)
        graphs, pair = compiled["graphs"], pair_name(s.parity_pair)
        append_row(ctx.out / "parity_summary.csv", {
            "precision": precision, "pair": pair, "batch": s.batch, "steps": s.parity_steps,
            "data": ctx.args.data_kind, "same_inputs": same_inputs, "forward_compiled": compiled["forward"],
            "forward_eager": eager["forward"], "logits_max_abs_diff": max(logit_diffs),
            "loss_max_abs_diff": max(loss_diffs), "weights_max_abs_diff": diffs[worst],
            "weights_worst_tensor": worst, "weights_max_abs": max(w.abs().max().item() for w in w_e.values()),
            "cudagraphs": compiled["cudagraphs"], "cudagraph_skips": graphs["skips"],
            "cudagraph_nodes": graphs["nodes"], "cudagraph_log": graphs["log"],
            "compiled_s": compiled["seconds"], "eager_s": eager["seconds"]})
        log(f"parity {precision}: logits {max(logit_diffs):.3g}, loss {max(loss_diffs):.3g}, weights "
            f"{diffs[worst]:.3g} ({worst}); cudagraphs: {compiled['cudagraphs']}")


def _device_time(event: Any, cuda: bool) -> float:
    names = ("device_time_total", "cuda_time_total") if cuda else ("self_cpu_time_total",)
    return next((float(getattr(event, n)) for n in names if hasattr(event, n)), 0.0)


def busy_seconds(events: Any) -> float:
    """Seconds in which at least one device kernel or copy ran (the union of their intervals)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    total, end = 0.0, -math.inf
    for start, stop in spans:
        total, end = total + max(0.0, stop - max(start, end)), max(end, stop)
    return total / 1e6


def stage_profile(ctx: Context) -> None:
    s, cuda, device = ctx.sizes, ctx.device.type == "cuda", ctx.device
    ours = build_ours(ctx.args, s, s.profile_pair, device, resolve_precision("auto", device), True)
    loop = bench.ours_loop(ours)  # compiled, as a long run: inductor (the dry run: its tracing backend)
    run_steps(loop, max(3, s.warmup // 3), device)  # compilation, CUDA-graph recording
    start, end = run_steps(loop, s.profile_steps, device)
    activities = [torch.profiler.ProfilerActivity.CPU] + [torch.profiler.ProfilerActivity.CUDA] * cuda
    with torch.profiler.profile(activities=activities) as prof:
        tick, _ = run_steps(loop, 0, device)
        _, tock = run_steps(loop, s.profile_steps, device)
    kernel = torch.autograd.DeviceType.CUDA
    kinds = sorted((e for e in prof.key_averages() if not cuda or e.device_type == kernel),
                   key=lambda e: _device_time(e, cuda), reverse=True)
    total = sum(_device_time(e, cuda) for e in kinds) or 1.0
    for rank, e in enumerate(kinds[:25], start=1):
        append_row(ctx.out / "profile_ops.csv", {
            "rank": rank, "name": e.key[:160], "calls": e.count, "time_total_ms": _device_time(e, cuda) / 1e3,
            "pct_of_total": 100 * _device_time(e, cuda) / total,
            "clock": "device kernel time" if cuda else "self cpu time"})
    busy, wall = (busy_seconds(prof.events()) if cuda else None), tock - tick
    write_json(ctx.out / "profile_summary.json", {
        "pair": pair_name(s.profile_pair), "steps": s.profile_steps, "batch": s.batch,
        "forward": ours.forward.describe(), "wall_s_profiled": wall, "wall_s_unprofiled": end - start,
        "ms_per_step_unprofiled": 1e3 * (end - start) / s.profile_steps,
        "device_busy_s": busy, "device_busy_pct_of_wall": None if busy is None else 100 * busy / wall,
        "kernel_time_sum_s": total / 1e6 if cuda else None, "kernels_or_ops": len(kinds)})


def stage_kd_row(ctx: Context) -> None:
    command = [sys.executable, str(SCRIPT.parent / "bench.py"), "--device", ctx.device.type, "--pairs", "kd",
               "--batch", str(ctx.sizes.batch), "--out", str(ctx.out / "bench_kd.csv")]
    if ctx.args.quick:
        command += ["--quick", "--no-compile", "--threads", "1"]
    log("running " + " ".join(command))
    subprocess.run(command, check=True, timeout=max(1.0, ctx.deadline - time.time()), env=child_env())


# --- the study's own path on a cut of the cifar100 profile ------------------------------------------------
def stage_reproduce(ctx: Context) -> None:
    """The study's whole path short of the notebooks, on a cut of the cifar100 profile: its teacher trained
    first (``python -m kdlib train``), the head-to-head's runs planned by ``kdlib.study`` from the profile
    with the cut's overrides, the real CIFAR-100 loader on the setup stage's files (``KDLIB_DATA``), then
    ``run_grid``, the runs side by side (all on one GPU, under CUDA MPS where it starts), each in its own
    ``python -m kdlib train`` process; reproduce.csv holds one row per run, checked against its plan. Then
    the head-to-head notebook from those records (:func:`reproduce_notebook`)."""
    from kdlib.config import TrainConfig
    from kdlib.study import grid, profiles  # pandas and the study's other packages (the GPU image has them)

    s, scratch = ctx.sizes, Path(tempfile.mkdtemp(prefix="kdlib_reproduce_"))  # checkpoints: not in --out
    os.environ["KDLIB_DATA"] = str(ctx.args.data_root)  # the profile's default data root, for every process
    teacher_out = scratch / "teachers" / "cifar100" / s.reproduce_pair.split("->")[0]
    tick = time.perf_counter()
    teacher = TrainConfig("ce", teacher_out.name, "cifar100", teacher_out, recipe="repdistiller",
                          epochs=s.reproduce_epochs, device=ctx.device.type)
    subprocess.run([sys.executable, "-m", "kdlib", *grid.train_argv(teacher)], check=True, env=child_env(),
                   timeout=max(1.0, ctx.deadline - time.time()))
    teacher_s = time.perf_counter() - tick
    cut = {"pairs": [s.reproduce_pair], "epochs": s.reproduce_epochs, "seeds": [0],
           "variants": s.reproduce_variants, "device": ctx.device.type}
    runs = profiles.profile_runs("cifar100", notebooks=["06_head_to_head"], out_dir=str(scratch / "runs"),
                                 teachers_dir=str(scratch / "teachers"), **cut)
    jobs = packing.jobs_for(len(runs)) if ctx.device.type == "cuda" else 2
    tick = time.perf_counter()
    try:
        outcomes = grid.run_grid(runs, results_dir=ctx.out / "reproduce_records", jobs=jobs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    grid_s = time.perf_counter() - tick
    for outcome in outcomes:
        record = outcome.record or {}
        append_row(ctx.out / "reproduce.csv", {
            "run": outcome.run.label, "status": outcome.status, "message": outcome.message[:200],
            "planned_config_id": record.get("config_id") == outcome.run.config_id,
            "epochs": len(record.get("history", [])), "top1_last": record.get("top1_last"),
            "wall_time_s": record.get("wall_time_s"), "forward": record.get("speed", {}).get("forward"),
            "side_by_side": jobs, "teacher_s": round(teacher_s, 1), "grid_s": round(grid_s, 1)})
    reproduce_notebook(ctx, cut)


def reproduce_notebook(ctx: Context, cut: dict[str, Any]) -> None:
    """The head-to-head notebook's parameters under the cifar100 profile with the cut's (``train`` False: it
    renders the stage's records), in reproduce_params.json; executed through papermill as ``make reproduce``
    does, to reproduce_06_head_to_head.ipynb, where papermill is installed (the GPU's Python has none: run
    bench/README.md's command on the fetched files); reproduce.json says which."""
    from kdlib.paths import NOTEBOOKS_DIR
    from kdlib.study import profiles

    pixels = "synthetic CIFAR-100 pixels" if ctx.args.data_kind == "synthetic" else "CIFAR-100"
    params = {**profiles.notebook_parameters("cifar100", "06_head_to_head", **cut), "train": False,
              "records_dir": str(ctx.out / "reproduce_records"),
              "label": f"GPU CHECK, not a result: {pixels}, {cut['epochs']} epochs, seed 0"}
    write_json(ctx.out / "reproduce_params.json", params)
    try:
        import papermill
    except ImportError:
        write_json(ctx.out / "reproduce.json", {"notebook": "skipped: papermill is not installed here"})
        return
    papermill.execute_notebook(str(NOTEBOOKS_DIR / "06_head_to_head.ipynb"),
                               str(ctx.out / "reproduce_06_head_to_head.ipynb"), parameters=params,
                               cwd=str(NOTEBOOKS_DIR), progress_bar=False)
    write_json(ctx.out / "reproduce.json", {"notebook": "executed"})


# --- concurrent training processes ------------------------------------------------------------------------
def worker_main(args: argparse.Namespace) -> int:
    """A training process of the throughput stage: warms up every pair, says ``ready``, then runs the steps
    its parent asks for (JSON lines on stdin), answering with the times (JSON lines on a private copy of
    stdout; anything else printed goes to stderr)."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sizes, device = (QUICK if args.quick else FULL), setup_device(args.device, args.threads)
    torch.set_num_threads(args.threads)  # on CUDA too: the cores shared out among the processes
    precision, setups, warm = resolve_precision("auto", device), [], []
    for pair in sizes.throughput_pairs:  # compiled on CUDA, as the trainer always does; eager on a CPU
        ours = build_ours(args, sizes, pair, device, precision, device.type == "cuda")
        setups.append((ours, bench.ours_loop(ours)))
        start, end = run_steps(setups[-1][1], sizes.warmup, device)
        warm.append(end - start)

    def say(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    say({"event": "ready", "warmup_s": warm, "forward": [o.forward.describe() for o, _ in setups],
         "precision": precision, "threads": torch.get_num_threads()})
    for line in sys.stdin:  # until the parent closes it
        command = json.loads(line)
        start, end = run_steps(setups[command["pair"]][1], command["steps"], device)
        say({"event": "done", "start": start, "end": end, "steps": command["steps"]})
    return 0


class Workers:
    """``count`` worker processes and a queue of their messages ``(index, message or None at exit)``."""

    def __init__(self, ctx: Context, count: int, mode: str) -> None:
        self.ctx, self.mode, self.messages, self.procs = ctx, mode, queue.Queue(), []
        self.threads = max(1, (os.cpu_count() or 1) // count) if ctx.device.type == "cuda" else 1

    def spawn(self, count: int) -> None:
        ctx = self.ctx
        for i in range(len(self.procs), len(self.procs) + count):
            command = [sys.executable, str(SCRIPT), "--worker", "--device", ctx.device.type, "--threads",
                       str(self.threads), "--data-root", ctx.args.data_root, "--backend", ctx.args.backend,
                       "--out", str(ctx.out)] + (["--quick"] if ctx.args.quick else [])
            with open(ctx.out / "logs" / f"worker_{self.mode}_{i}.log", "w") as err:
                self.procs.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                   stderr=err, text=True, env=child_env()))
            threading.Thread(target=self._read, args=(i, self.procs[i]), daemon=True).start()

    def _read(self, index: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.messages.put((index, json.loads(line)))
        self.messages.put((index, None))

    def send(self, indices: range, message: dict[str, Any]) -> None:
        for i in indices:
            print(json.dumps(message), file=self.procs[i].stdin, flush=True)

    def collect(self, indices: range, deadline: float) -> dict[int, dict[str, Any]]:
        got: dict[int, dict[str, Any]] = {}
        while len(got) < len(indices):
            try:
                index, message = self.messages.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty:
                raise TimeoutError(f"workers {sorted(set(indices) - set(got))} did not answer") from None
            if message is None and index in indices:
                raise RuntimeError(f"worker {index} exited with {self.procs[index].wait()} (see its log)")
            if message is not None and index in indices:
                got[index] = message
        return got

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()  # end of input: the worker's loop ends
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            proc.kill()  # no-op for one that has exited


def level_row(ctx: Context, mode: str, pair: tuple[str, str, str], level: int, ready: dict,
              done: list) -> dict[str, Any]:
    """throughput.csv's row for ``level`` processes of ``pair``: ``done`` holds each one's start and end."""
    s, p = ctx.sizes, ctx.sizes.throughput_pairs.index(pair)
    run_steps_240 = bench.EPOCHS * math.ceil(bench.TRAIN_IMAGES / s.batch)  # a 240-epoch CIFAR-100 run
    window = max(d["end"] for d in done) - min(d["start"] for d in done) if done else None
    rate = level * s.steps / window if done else None
    each = sum(d["steps"] / (d["end"] - d["start"]) for d in done) / level if done else None
    return {"mode": mode, "pair": pair_name(pair), "processes": level, "batch": s.batch,
            "steps_per_process": s.steps, "status": "ok" if done else "skipped: deadline", "window_s": window,
            "aggregate_steps_per_s": rate, "per_process_steps_per_s": each,
            "aggregate_images_per_s": rate and rate * s.batch,
            "runs_240ep_per_hour": rate and rate * 3600 / run_steps_240,
            "hours_per_240ep_run": each and run_steps_240 / each / 3600,
            "forward": ready[0]["forward"][p], "precision": ready[0]["precision"],
            "threads_per_process": ready[0]["threads"],
            "warmup_s_max": max(r["warmup_s"][p] for r in ready.values()), "data": ctx.args.data_kind}


def stage_throughput(ctx: Context, mode: str) -> None:
    levels = ctx.sizes.levels
    workers, count = Workers(ctx, max(levels), mode), max(levels)
    try:  # one process first: the others then find its compiled code in inductor's cache
        workers.spawn(1)
        ready = workers.collect(range(1), ctx.deadline)
        workers.spawn(count - 1)
        ready.update(workers.collect(range(1, count), ctx.deadline))
        for p, pair in enumerate(ctx.sizes.throughput_pairs):
            for level in levels:
                done = []
                if ctx.deadline - time.time() > 15:
                    workers.send(range(level), {"pair": p, "steps": ctx.sizes.steps})
                    done = list(workers.collect(range(level), ctx.deadline).values())
                row = level_row(ctx, mode, pair, level, ready, done)
                append_row(ctx.out / "throughput.csv", row)
                log(f"{mode} {row['pair']} x{level}: {row['status']}, {row['aggregate_steps_per_s']} steps/s")
    finally:
        workers.close()


STAGE_FUNCTIONS: dict[str, Callable[[Context], None]] = {
    "setup": stage_setup, "parity": stage_parity, "profile": stage_profile, "kd_row": stage_kd_row,
    "reproduce": stage_reproduce,
    "throughput": lambda ctx: stage_throughput(ctx, "time-sliced" if ctx.device.type == "cuda" else "cpu"),
    "throughput_mps": lambda ctx: stage_throughput(ctx, "mps"),
}


def stage_main(args: argparse.Namespace) -> int:
    device = setup_device(args.device, 1)
    ctx = Context(args=args, sizes=QUICK if args.quick else FULL, device=device, out=Path(args.out),
                  deadline=args.stage_deadline)
    STAGE_FUNCTIONS[args.stage](ctx)
    return 0


# --- the orchestrator: stages as subprocesses, one deadline ----------------------------------------------
def child_env() -> dict[str, str]:
    """This environment with the repository on ``PYTHONPATH`` (kdlib imports in every child)."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def run_stage(name: str, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    """Stage ``name`` in its own process group, killed after ``timeout`` seconds; its status and log tail."""
    out = Path(args.out)
    command = [sys.executable, str(SCRIPT), "--stage", name, "--out", str(out), "--device", args.device,
               "--data-root", args.data_root, "--data-kind", args.data_kind, "--backend", args.backend,
               "--stage-deadline", str(time.time() + timeout - 3)] + (["--quick"] if args.quick else [])
    with contextlib.ExitStack() as stack:
        env = child_env()
        if name == "throughput_mps":
            if args.device != "cuda":
                return {"status": "skipped: MPS is CUDA only (the throughput rows are cpu)"}
            mps = stack.enter_context(packing.mps_daemon(out / "mps_log"))  # the trainer's own daemon
            if mps is None:
                return {"status": "skipped: no CUDA MPS daemon (see the log); the throughput rows are "
                                  "time-sliced"}
            env = {**env, **mps}
        logfile = stack.enter_context(open(out / "logs" / f"{name}.log", "w"))
        proc = subprocess.Popen(command, stdout=logfile, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            status = "ok" if proc.wait(timeout=timeout) == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the stage and its workers
            proc.wait()
            status = f"timeout after {timeout:.0f} s"
    tail = (out / "logs" / f"{name}.log").read_text(errors="replace").splitlines()[-8:]
    return {"status": status, **({"log_tail": tail} if status != "ok" else {})}


def run_stages(names: list[str], budgets: dict[str, float], deadline: float,
               runner: Callable[[str, float], dict[str, Any]], done: Callable[[dict[str, Any]], None],
               now: Callable[[], float] = time.time) -> dict[str, Any]:
    """Each stage in turn with ``min(budget, time left)`` seconds; none starts with under :data:`MIN_STAGE_S`
    left (``skipped: deadline``). A stage's failure is recorded and the next one runs; ``done`` gets the
    results after each stage, so that an interrupted check leaves what it had."""
    results: dict[str, Any] = {}
    for name in names:
        left, tick = deadline - now(), now()
        if left < MIN_STAGE_S:
            results[name] = {"status": "skipped: deadline", "budget_s": budgets[name]}
        else:
            try:
                result = runner(name, min(budgets[name], left))
            except Exception as error:  # e.g. the MPS daemon would not start
                result = {"status": f"failed ({type(error).__name__}: {error})"}
            results[name] = {**result, "seconds": round(now() - tick, 1), "budget_s": budgets[name]}
        log(f"stage {name}: {results[name]['status']} ({results[name].get('seconds', 0)} s)")
        done(results)
    return results


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") if path.is_file() else contextlib.nullcontext(()) as f:  # none yet: no rows
        return list(csv.DictReader(f))


SUMMARY = {"parity_summary.csv": ("precision", "logits_max_abs_diff", "loss_max_abs_diff",
                                  "weights_max_abs_diff", "cudagraphs"),
           "throughput.csv": ("mode", "pair", "processes", "status", "aggregate_steps_per_s",
                              "runs_240ep_per_hour"),
           "reproduce.csv": ("run", "status", "planned_config_id", "epochs", "wall_time_s", "forward"),
           "profile_ops.csv": ("rank", "name", "pct_of_total"),
           "bench_kd.csv": ("pair", "reference_ms", "ours_ms", "speedup", "ours_settings")}


def summary(out: Path, stages: dict[str, Any]) -> str:
    lines = [f"stage {name}: {r['status']} ({r.get('seconds', 0)} s)" for name, r in stages.items()]
    for name in ("env.json", "profile_summary.json"):
        found = json.loads((out / name).read_text()) if (out / name).is_file() else {}
        lines += [f"{name}: " + ", ".join(f"{k}={v}" for k, v in found.items() if v is not None)][:len(found)]
    for name, columns in SUMMARY.items():
        rows = read_csv(out / name)[:5 if name == "profile_ops.csv" else 16]  # the top 5 kernels
        lines += [f"{name}: " + ", ".join(f"{c}={r[c]}" for c in columns) for r in rows]
    return "\n".join(lines) + "\n"


def orchestrate(args: argparse.Namespace) -> int:
    sizes, out, started = (QUICK if args.quick else FULL), Path(args.out), time.time()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    deadline = started + (args.deadline_s or sizes.deadline_s)
    real = args.data_root is not None and (Path(args.data_root) / "cifar-100-python" / "train").is_file()
    temporary = None if args.data_root else tempfile.mkdtemp(prefix="kdlib_gpu_check_")  # 180 MB, not --out
    args.data_root, args.data_kind = args.data_root or temporary, "cifar100" if real else "synthetic"
    chosen = STAGES if args.stages == "all" else args.stages.split(",")
    record = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "deadline_s": deadline - started,
              "data": args.data_kind}
    try:
        stages = run_stages([n for n in STAGES if n in chosen or n == "setup"], sizes.budgets, deadline,
                            lambda name, timeout: run_stage(name, args, timeout),
                            lambda results: write_json(out / "stages.json", {**record, "stages": results}))
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    text = summary(out, stages) + f"total {time.time() - started:.0f} s; files in {out}\n"
    (out / "summary.txt").write_text(text)
    print(text, end="")
    return int(any(r["status"].startswith(("failed", "timeout", "skipped: dead")) for r in stages.values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add, hidden = parser.add_argument, argparse.SUPPRESS
    add("--out", required=True, help="folder for the results (CSV, JSON, logs)")
    add("--device", default="cuda", choices=("cuda", "cpu"))
    add("--quick", action="store_true", help="the dry run's tiny sizes (CPU: under 2 minutes)")
    add("--deadline-s", type=float, help=f"start no stage after this many seconds (default "
        f"{FULL.deadline_s}, --quick {QUICK.deadline_s})")
    add("--stages", default="all", help=f"comma-separated, of: {', '.join(STAGES)} (setup always runs)")
    add("--data-root", help="a folder with CIFAR-100's files (default: synthetic ones in a temporary folder)")
    add("--backend", help="torch.compile's backend (default inductor; --quick: aot_eager, no code generated)")
    add("--stage", help=hidden)  # the children's options
    add("--data-kind", help=hidden)
    add("--stage-deadline", type=float, help=hidden)
    add("--threads", type=int, default=1, help=hidden)
    add("--worker", action="store_true", help=hidden)
    args = parser.parse_args(argv)
    args.backend = args.backend or ("aot_eager" if args.quick else "inductor")
    unknown = [n for n in args.stages.split(",") if n not in STAGES] if args.stages != "all" else []
    if unknown:
        parser.error(f"unknown --stages {', '.join(unknown)}; choose from: {', '.join(STAGES)}")
    if args.worker:
        return worker_main(args)
    return stage_main(args) if args.stage is not None else orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
