"""Training speed, side by side in one process on one device: a conventional loop, our trainer, a bare loop.

For each pair (ICKD resnet32x4 → resnet8x4, KD resnet56 → resnet20; RepDistiller's recipe, batch 64) three
loops train the same distiller on CIFAR-shaped data (CIFAR-100 when it is in the data root, else generated
uint8 images of the same shape and count):

- ``reference``: the conventional style (RepDistiller's ``train_distill``): torchvision transforms and a
  ``DataLoader`` (8 workers on CUDA, as RepDistiller's default; none on CPU, so that no process competes
  with the timed one), fp32, ``.item()`` of the loss and the accuracy at every step, plain SGD;
- ``ours``: the trainer's fast path (``kdlib.loop.fast_step`` over a ``kdlib.fast.DeviceLoader``), with the
  trainer's settings for the device: on CUDA bf16 autocast, channels_last, ``torch.compile`` with CUDA
  graphs, fused SGD, teacher under inference mode; on CPU fp32 and no compilation;
- ``bare``: a hand-written loop on the same distiller, compiled forward and optimiser as ``ours``, over a few
  batches already in memory: forward, sum, backward, step, nothing else.

Timing: after warm-up steps (compilation, CUDA-graph recording, loader workers), ``rounds`` rounds each run a
block of steps of every loop (the order rotating), synchronising the device at the block's end only; a
loop's time per step is the median over rounds, and ``overhead_vs_bare`` is the median over rounds of
``ours / bare - 1`` (paired within a round, so machine load drifting between rounds cancels). The clock is
wall time on CUDA; on CPU it is the process's CPU time with one torch thread (``--threads``), so that other
processes on a shared machine do not enter the ratios.

Reported per pair: ms per iteration, training images per second, ``speedup`` (reference / ours), the
projected wall time of a full 240-epoch run (``240 × ceil(50000 / 64)`` steps, training only; on CUDA also
with one evaluation of the 10,000 test images per epoch, timed), and the settings. The summary lines
``speedup X.XX`` and ``overhead_vs_bare X%`` give the worst pair. A run without ``--quick`` appends one row
per pair to ``bench/results.csv`` (device, torch, commit, date, the command).

Imports only the standard library, numpy, torch, torchvision and kdlib, so it runs with any Python that holds
torch (``PYTHONPATH=. python3 bench/bench.py --device cuda``).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import math
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from kdlib import distributed, models
from kdlib.data import DataError, default_data_root, get_dataset_spec
from kdlib.distill import Distiller
from kdlib.fast import PRECISIONS, DeviceLoader, DeviceMetrics, resolve_precision
from kdlib.files import append_csv
from kdlib.loop import Runtime, evaluate, fast_step, make_optimizer, prepare_fast
from kdlib.methods import build_distiller
from kdlib.paths import BENCH_CSV
from kdlib.recipes import get_recipe
from kdlib.record import git_info, hardware

RESULTS = BENCH_CSV
#: ``--pairs`` name: (method, teacher, student). ``proxy`` is the CPU study's pair (book: the proxy study).
PAIRS = {"ickd": ("ickd", "resnet32x4", "resnet8x4"), "kd": ("kd", "resnet56", "resnet20"),
         "proxy": ("kd", "resnet32", "resnet8")}
TRAIN_IMAGES, TEST_IMAGES, EPOCHS = 50_000, 10_000, 240
COLUMNS = (
    "date", "commit", "device", "device_name", "torch", "pair", "batch", "data", "reference_ms", "ours_ms",
    "bare_ms", "speedup", "overhead_vs_bare_pct", "reference_images_per_s", "ours_images_per_s",
    "projected_240ep_reference_min", "projected_240ep_ours_min", "projected_240ep_ours_with_eval_min",
    "ours_warmup_s", "ours_eval_s", "ours_host_syncs", "ours_settings", "reference_workers", "threads",
    "clock", "rounds", "steps_per_round", "command",
)


# --- data -----------------------------------------------------------------------------------------
class ImageArrays(Dataset):
    """A torchvision-style dataset over ``(N, 32, 32, 3)`` uint8 ``data`` and ``targets``: (PIL, label)."""

    def __init__(self, data: np.ndarray, targets: list[int], transform: Callable | None = None) -> None:
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.data[index])
        return (self.transform(image) if self.transform else image), self.targets[index]


def cifar_shaped(root: Path | None, seed: int = 0) -> tuple[ImageArrays, ImageArrays, str]:
    """CIFAR-100's training and test sets if under ``root``, else generated ones of the same shape."""
    spec = get_dataset_spec("cifar100")
    try:
        raw = [spec.load_raw(root or default_data_root(), split, False) for split in (True, False)]
        return (*(ImageArrays(r.data, list(r.targets)) for r in raw), "cifar100")
    except DataError:
        rng = np.random.default_rng(seed)
        sets = []
        for n in (TRAIN_IMAGES, TEST_IMAGES):
            data = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
            sets.append(ImageArrays(data, rng.integers(0, 100, size=n).tolist()))
        return (*sets, "generated")


# --- the three loops ------------------------------------------------------------------------------
def make_distiller(method: str, teacher: str, student: str, device: torch.device) -> Distiller:
    torch.manual_seed(0)  # the same weights in every loop
    d = build_distiller(method, models.create_model(student), models.create_model(teacher))
    d.set_epoch(1)  # the trainer's first epoch (CD: EDT's warm-up weights)
    return d.to(device).train()


def sgd(distiller: Distiller, lr: float, fused: bool = False) -> torch.optim.SGD:
    r = get_recipe("repdistiller")
    return torch.optim.SGD(distiller.trainable_parameters(), lr=lr, momentum=r.momentum,
                           weight_decay=r.weight_decay, **({"fused": True} if fused else {}))


def reference_loop(pair: tuple[str, str, str], train_set: ImageArrays, device: torch.device, batch: int,
                   workers: int) -> Iterator[None]:
    """RepDistiller's loop: DataLoader + torchvision transforms, fp32, ``.item()`` every step."""
    spec = get_dataset_spec("cifar100")
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(spec.mean, spec.std)])
    dataset = ImageArrays(train_set.data, train_set.targets, transform)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda")
    distiller = make_distiller(*pair, device)
    optimizer = sgd(distiller, get_recipe("repdistiller", pair[2]).lr)
    loss_sum = correct = seen = 0.0
    while True:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits, losses = distiller(x, y)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)  # the per-step host syncs of AverageMeter.update
            correct += (logits.argmax(1) == y).float().sum().item()
            seen += len(y)
            yield


@dataclass
class Ours:
    """Our trainer's fast path for one pair, set up as :func:`kdlib.train.train` does on this device."""

    distiller: Distiller
    forward: Callable[..., Any]
    optimizer: torch.optim.Optimizer
    loader: DeviceLoader
    rt: Runtime
    settings: str


def build_ours(pair: tuple[str, str, str], train_set: ImageArrays, device: torch.device, batch: int,
               compile_: bool, precision: str) -> Ours:
    """The trainer's fast path on ``device``: bf16 autocast when ``precision`` is, channels_last, the
    compiled forward (``compile_``), fused SGD on CUDA."""
    cuda = device.type == "cuda"
    rt = Runtime(device, amp=precision == "bf16", channels_last=True, progress=False)
    distiller = make_distiller(*pair, device)
    if rt.channels_last:
        distiller.to(memory_format=torch.channels_last)
    forward = prepare_fast(distiller, rt, compile=compile_, batch_size=batch)
    r = get_recipe("repdistiller", pair[2])
    optimizer = make_optimizer(r, distiller.trainable_parameters(), fused=cuda)  # the trainer's optimiser
    spec = get_dataset_spec("cifar100")
    loader = DeviceLoader(torch.from_numpy(train_set.data), torch.tensor(train_set.targets), mean=spec.mean,
                          std=spec.std, batch_size=batch, train=True, pad_mode=r.pad_mode, device=device,
                          channels_last=rt.channels_last)
    loader.set_epoch(1)
    settings = (f"{'bf16' if rt.amp else 'fp32'} {'channels_last' if rt.channels_last else 'NCHW'} "
                f"{forward.describe()} fused_sgd={cuda} teacher=inference_mode data=device-resident")
    return Ours(distiller, forward, optimizer, loader, rt, settings)


def ours_loop(ours: Ours) -> Iterator[None]:
    """The body of ``kdlib.loop.train_one_epoch_fast``, step by step: the trainer's own ``fast_step``."""
    while True:
        metrics = DeviceMetrics(len(ours.loader), ours.rt.device)
        for x, y in ours.loader:
            metrics.add(fast_step(ours.forward, ours.optimizer, x, y, ours.rt), len(y))
            yield
        metrics.read()


def bare_loop(ours: Ours, count: int = 4) -> Iterator[None]:
    """Forward, sum, backward, step on ``count`` batches already in memory, with our forward and optimiser."""
    batches = list(itertools.islice(iter(ours.loader), count))
    forward, optimizer = ours.forward, ours.optimizer
    for x, y in itertools.cycle(batches):
        with ours.rt.autocast():
            _, losses = forward(x, y)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        yield


def host_syncs(ours: Ours, steps: int = 40) -> str:
    """``none`` if ``steps`` steps of ours (a chunk boundary of the loader included) make no host sync, as
    ``torch.cuda.set_sync_debug_mode('warn')`` reports them; else the count and the first warning."""
    loop = ours_loop(ours)
    next(loop)  # a new epoch: its draws are copied to the device once, outside the checked steps
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")  # warn, not error: an exception inside a CUDA-graph replay
        try:  # could leave the graphs unusable for the next pair
            for _ in range(steps):
                next(loop)
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            loop.close()
    found = [w for w in caught if "synchroniz" in str(w.message).lower()
             and "prototype feature" not in str(w.message)]  # torch's note on the debug mode itself
    if not found:
        return "none"
    return f"{len(found)} in {steps} steps, first: " + " ".join(str(found[0].message).split())[:200]


# --- timing ---------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> Callable[[], float]:
    """Wall time on CUDA; on CPU the process's CPU time, which other processes on a shared machine do not
    inflate (the loops run in this process: the CPU reference loop has no loader workers)."""
    return time.perf_counter if device.type == "cuda" else time.process_time


def run_steps(loop: Iterator[None], steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` steps (:func:`clock`), the device synchronised before and after."""
    now = clock(device)
    sync(device)
    start = now()
    for _ in range(steps):
        next(loop)
    sync(device)
    return now() - start


@dataclass
class Plan:
    rounds: int
    warmup: int
    steps: dict[str, int]  # per loop, steps per round


def plan_for(device: torch.device, teacher: str, quick: bool) -> Plan:
    if quick:
        return Plan(rounds=2, warmup=1, steps={"reference": 1, "ours": 1, "bare": 1})
    if device.type == "cuda":
        return Plan(rounds=5, warmup=15, steps={"reference": 25, "ours": 100, "bare": 100})
    # warm-up: two steps (the compiled forward and backward, then a first compiled step); a step on one CPU
    # thread: resnet32x4 -> resnet8x4 ~4 s, resnet56 -> resnet20 ~0.7 s, resnet32 -> resnet8 ~0.45 s
    heavy = teacher == "resnet32x4"
    return Plan(rounds=7 if heavy else 12, warmup=2, steps={"reference": 1, "ours": 1, "bare": 1})


def evaluation_seconds(ours: Ours, test_set: ImageArrays, device: torch.device, batch: int) -> float | None:
    """Seconds for one evaluation of the student on the test set by the trainer's ``evaluate`` (CUDA only:
    minutes on a CPU)."""
    if device.type != "cuda":
        return None
    spec = get_dataset_spec("cifar100")
    loader = DeviceLoader(torch.from_numpy(test_set.data), torch.tensor(test_set.targets), mean=spec.mean,
                          std=spec.std, batch_size=2 * batch, train=False, device=device,
                          channels_last=ours.rt.channels_last)
    evaluate(ours.distiller.student, loader, ours.rt)  # warm-up
    sync(device)
    start = time.perf_counter()
    evaluate(ours.distiller.student, loader, ours.rt)
    sync(device)
    return time.perf_counter() - start


def bench_pair(
    pair: tuple[str, str, str], sets: tuple[ImageArrays, ImageArrays], device: torch.device, batch: int,
    workers: int, compile_: bool, precision: str, quick: bool, log: Callable[[str], None],
) -> dict[str, Any]:
    method, teacher, student = pair
    plan = plan_for(device, teacher, quick)
    ours = build_ours(pair, sets[0], device, batch, compile_, precision)
    loops = {
        "reference": reference_loop(pair, sets[0], device, batch, workers),
        "ours": ours_loop(ours),
        "bare": bare_loop(ours),
    }
    steps_per_epoch = math.ceil(len(sets[0]) / batch)
    used = plan.warmup + plan.rounds * plan.steps["ours"]
    if used >= steps_per_epoch:
        raise ValueError(f"{used} timed steps of ours would cross an epoch of {steps_per_epoch} steps")
    warmup_s = {}
    for name, loop in loops.items():
        tick = time.perf_counter()
        run_steps(loop, plan.warmup, device)
        warmup_s[name] = time.perf_counter() - tick
        log(f"  warm-up {name}: {plan.warmup} steps in {warmup_s[name]:.1f} s")
    times: dict[str, list[float]] = {name: [] for name in loops}
    names = list(loops)
    for r in range(plan.rounds):
        for name in names[r % 3:] + names[: r % 3]:
            times[name].append(run_steps(loops[name], plan.steps[name], device) / plan.steps[name])
        log(f"  round {r + 1}/{plan.rounds}: "
            + ", ".join(f"{n} {1e3 * t[-1]:.2f} ms" for n, t in times.items()))
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    overhead = statistics.median(o / b - 1 for o, b in zip(times["ours"], times["bare"], strict=True))
    for loop in loops.values():
        loop.close()
    syncs = host_syncs(ours) if device.type == "cuda" and not quick else ""
    if syncs:
        log(f"  host syncs in steps of ours: {syncs}")
    eval_s = evaluation_seconds(ours, sets[1], device, batch)
    steps_240 = EPOCHS * math.ceil(TRAIN_IMAGES / batch)
    return {
        "pair": f"{method} {teacher}->{student}",
        "batch": batch,
        "reference_ms": ms["reference"], "ours_ms": ms["ours"], "bare_ms": ms["bare"],
        "speedup": ms["reference"] / ms["ours"],
        "overhead_vs_bare_pct": 100 * overhead,
        "reference_images_per_s": batch / ms["reference"] * 1e3,
        "ours_images_per_s": batch / ms["ours"] * 1e3,
        "projected_240ep_reference_min": steps_240 * ms["reference"] / 6e4,
        "projected_240ep_ours_min": steps_240 * ms["ours"] / 6e4,
        "projected_240ep_ours_with_eval_min": (steps_240 * ms["ours"] / 1e3 + EPOCHS * eval_s) / 60
        if eval_s is not None else None,
        "ours_warmup_s": warmup_s["ours"],
        "ours_eval_s": eval_s,
        "ours_host_syncs": syncs,
        "ours_settings": ours.settings,
        "reference_workers": workers,
        "threads": torch.get_num_threads(),
        "clock": "wall" if device.type == "cuda" else "process_cpu_time",
        "rounds": plan.rounds,
        "steps_per_round": "/".join(str(plan.steps[n]) for n in names),
    }


# --- provenance and output ------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and torch's thread count (:func:`kdlib.record.hardware`)."""
    found = hardware(device)
    return found["gpu"] or f"{found['cpu']} ({found['torch_threads']} threads)"


def commit() -> str:
    """The short commit (``+dirty`` with local changes, :func:`kdlib.record.git_info`); else
    ``$KDLIB_COMMIT`` or unknown."""
    full, dirty = git_info()
    if full is None:
        return os.environ.get("KDLIB_COMMIT", "unknown")
    return full[:7] + ("+dirty" if dirty else "")


def _cell(key: str, value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        digits = {"speedup": ".3f", "overhead_vs_bare_pct": ".2f"}.get(key, ".4g")
        return f"{value:{digits}}"
    return value


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to the CSV ``path`` (header :data:`COLUMNS`); a file with other columns is an error."""
    append_csv(path, [{k: _cell(k, v) for k, v in row.items()} for row in rows], COLUMNS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cpu or cuda (default: cuda)")
    parser.add_argument("--quick", action="store_true",
                        help="a dry run: two rounds of one step, nothing recorded (unless --out is given)")
    parser.add_argument("--pairs", default="all",
                        help=f"comma-separated pairs to run ({','.join(PAIRS)}) or all")
    parser.add_argument("--batch", type=int, default=get_recipe("repdistiller").batch_size)
    parser.add_argument("--workers", type=int, default=None,
                        help="reference DataLoader workers (default: 8 on CUDA, 0 on CPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.compile our path, as the fast path does on a long run (default)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="our path's precision (default auto: bf16 where the device has it natively, as "
                        "the trainer)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: 1 on CPU, so the ratios do not depend on a shared "
                        "machine's load; torch's default on CUDA)")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help=f"results file (default: {RESULTS})")
    args = parser.parse_args(argv)

    device = distributed.resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    if args.workers is not None:
        workers = args.workers
    else:
        workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    names = list(PAIRS) if args.pairs == "all" else args.pairs.split(",")
    unknown = [n for n in names if n not in PAIRS]
    if unknown or not names:
        parser.error(f"unknown --pairs '{args.pairs}'; choose from: all, {', '.join(PAIRS)}")
    pairs = [PAIRS[n] for n in names]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # both loops (RepDistiller sets it too)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
    if threads is not None:
        torch.set_num_threads(threads)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = time.perf_counter()
    sets = cifar_shaped(args.data_root)
    name = device_name(device)
    log(f"{name}, torch {torch.__version__}, data: {sets[2]}, batch {args.batch}, compile {args.compile}, "
        f"precision {precision}, reference workers {workers}")
    rows = []
    for pair in pairs:
        log(f"{pair[0]} {pair[1]} -> {pair[2]}")
        result = bench_pair(pair, sets[:2], device, args.batch, workers, args.compile, precision, args.quick,
                            log)
        rows.append(result)
        print(f"{result['pair']} on {name}: reference {result['reference_ms']:.2f} ms/iter "
              f"({result['reference_images_per_s']:.0f} img/s), ours {result['ours_ms']:.2f} ms/iter "
              f"({result['ours_images_per_s']:.0f} img/s), bare {result['bare_ms']:.2f} ms/iter; "
              f"speedup {result['speedup']:.2f}x, overhead vs bare {result['overhead_vs_bare_pct']:+.1f}%; "
              f"240 epochs: reference {result['projected_240ep_reference_min']:.1f} min, "
              f"ours {result['projected_240ep_ours_min']:.1f} min"
              + (f" ({result['projected_240ep_ours_with_eval_min']:.1f} min with evaluation)"
                 if result["projected_240ep_ours_with_eval_min"] is not None else "")
              + f" [{result['ours_settings']}]", flush=True)
    print(f"worst of {len(rows)} pairs:")
    print(f"speedup {min(r['speedup'] for r in rows):.2f}")
    print(f"overhead_vs_bare {max(r['overhead_vs_bare_pct'] for r in rows):.1f}%")
    log(f"bench took {time.perf_counter() - started:.0f} s")

    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        # timezone.utc, not datetime.UTC: the GPU machine's Python may be older than 3.11
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")  # noqa: UP017
        command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
        append_rows(out, [{"date": stamp, "commit": commit(), "device": device.type, "device_name": name,
                           "torch": torch.__version__, "data": sets[2], **row, "command": command}
                          for row in rows])
        log(f"appended {len(rows)} rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
