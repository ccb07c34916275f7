"""One run with all the cores, or one run per core? The wall time of one small grid, both ways, in one call.

The grid: ``--runs`` KD runs of the proxy study's pair (resnet32 -> resnet8, Fashion-MNIST, the committed
teacher), seeds 0, 1, ..., ``--subset`` training images, one epoch, 1,000 test images, on the path and
precision the proxy profile uses (``--fast`` for the compiled fast path). Each setting trains the same grid
from scratch through :func:`kdlib.study.run_grid`, the function ``make reproduce`` calls:

- ``jobs=1 threads=N``: the runs one after another in this process, each with the N cores' threads;
- ``jobs=N threads=1``: N ``python -m kdlib train`` subprocesses side by side, one thread each.

The settings alternate for ``--rounds`` rounds (so drifting machine load falls on both), and the result is
the median wall time of each and their ratio. Rows are appended to ``--out`` (default the git-ignored
``runs/bench/parallel.csv``; ``bench/parallel.csv`` holds the committed ones).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdlib.files import append_csv
from kdlib.paths import RUNS_DIR, TEACHERS_DIR
from kdlib.record import git_info, hardware
from kdlib.study import Pair, Parameters, Variant, plan_runs, run_grid

COLUMNS = ("date", "commit", "cpu", "cores", "torch", "grid", "path", "rounds", "sequential_s", "parallel_s",
           "parallel_over_sequential", "faster", "command")


def grid(out: Path, runs: int, subset: int, fast: bool) -> list:
    teacher = TEACHERS_DIR / "fashion_mnist" / "resnet32" / "model.pt"
    params = Parameters(
        dataset="fashion_mnist", pairs=[Pair("resnet32", "resnet8")], epochs=1, recipe="repdistiller",
        seeds=list(range(runs)), variants=[Variant("kd")], device="cpu", subset=subset, out_dir=out,
        eval_subset=1000, teacher_ckpts={"resnet32": teacher},
        train_options={"precision": "fp32", "fast": fast, **({"compile": True} if fast else {})},
    )
    return plan_runs(params)


def wall_time(runs: list, jobs: int, threads: int) -> float:
    for run in runs:
        shutil.rmtree(run.out, ignore_errors=True)
    start = time.perf_counter()
    outcomes = run_grid(runs, jobs=jobs, threads=threads, verbose=False)
    seconds = time.perf_counter() - start
    failed = [o for o in outcomes if o.status != "trained"]
    if failed:
        raise SystemExit(f"{failed[0].run.key}: {failed[0].status} {failed[0].message}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--subset", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fast", action="store_true", help="the compiled fast path (default: the reference)")
    parser.add_argument("--out", type=Path, default=RUNS_DIR / "bench" / "parallel.csv")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as scratch:
        runs = grid(Path(scratch), args.runs, args.subset, args.fast)
        times: dict[str, list[float]] = {"sequential": [], "parallel": []}
        for r in range(args.rounds):
            for name in (["sequential", "parallel"] if r % 2 == 0 else ["parallel", "sequential"]):
                jobs, threads = (1, cores) if name == "sequential" else (cores, 1)
                times[name].append(wall_time(runs, jobs, threads))
                print(f"round {r + 1}: {name} (jobs={jobs} threads={threads}) {times[name][-1]:.1f} s",
                      file=sys.stderr, flush=True)
    sequential, parallel = (statistics.median(times[k]) for k in ("sequential", "parallel"))
    commit, dirty = git_info()
    row = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": f"{(commit or 'unknown')[:7]}{'+dirty' if dirty else ''}",
        "cpu": hardware(torch.device("cpu"))["cpu"], "cores": cores, "torch": torch.__version__,
        "grid": f"{args.runs} x kd resnet32->resnet8, {args.subset} images, 1 epoch",
        "path": "fast (compiled)" if args.fast else "reference", "rounds": args.rounds,
        "sequential_s": round(sequential, 1), "parallel_s": round(parallel, 1),
        "parallel_over_sequential": round(parallel / sequential, 3),
        "faster": f"jobs={cores} threads=1" if parallel < sequential else f"jobs=1 threads={cores}",
        "command": " ".join(["python", *sys.argv]),
    }
    print(f"{row['path']}: jobs=1 threads={cores} {sequential:.1f} s, jobs={cores} threads=1 "
          f"{parallel:.1f} s; faster: {row['faster']}")
    append_csv(args.out, [row], COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
