"""Compile time with an empty and with a warm inductor cache: the same short training run, four times.

KD resnet32 -> resnet8 on Fashion-MNIST with the committed teacher, one epoch of ``--subset`` images, fp32, on
the compiled fast path (``--fast --compile``), each run a ``python -m kdlib train`` subprocess with
``OMP_NUM_THREADS=--threads``. Two cache folders under ``--work`` (emptied first): each gets a cold run (seed
0, nothing cached) and then a warm run (seed 1: other weights, the same graph). Each row is read from the
run's record: ``speed.compile`` (seconds compiling, frames compiled, FX graph and AOTAutograd cache hits and
misses; :mod:`kdlib.compilation`) and the first epoch's ``compute_s`` (training, compilation included). Rows
are appended to ``--out`` (default the git-ignored ``runs/bench/compile_cache.csv``;
``bench/compile_cache.csv`` holds the committed ones).

    .venv/bin/python bench/compile_cache.py --out bench/compile_cache.csv
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kdlib.compilation import CACHE_ENV
from kdlib.files import append_csv
from kdlib.paths import REPO, RUNS_DIR, TEACHERS_DIR, relative

COLUMNS = ("date", "commit", "cpu", "torch", "threads", "subset", "cache", "folder", "seed", "compile_s",
           "frames", "fx_graph_cache_hits", "fx_graph_cache_misses", "aot_autograd_cache_hits",
           "aot_autograd_cache_misses", "first_epoch_compute_s", "process_s", "forward", "command")
#: (cache state, folder, seed), in the order they run: each folder cold, then warm with another seed.
RUNS = (("cold", "a", 0), ("cold", "b", 0), ("warm", "a", 1), ("warm", "b", 1))


def command(out: Path, seed: int, subset: int) -> list[str]:
    teacher = TEACHERS_DIR / "fashion_mnist" / "resnet32" / "model.pt"
    return [sys.executable, "-m", "kdlib", "train", "--method", "kd", "--student", "resnet8", "--teacher",
            "resnet32", "--teacher-ckpt", relative(teacher), "--dataset", "fashion_mnist", "--recipe",
            "repdistiller", "--epochs", "1", "--subset", str(subset), "--eval-subset", "500", "--seed",
            str(seed), "--precision", "fp32", "--fast", "--compile", "--no-progress", "--out", str(out)]


def one_run(work: Path, cache: str, folder: str, seed: int, args: argparse.Namespace) -> dict[str, object]:
    """One training subprocess with its own cache folder; its record's compile fields as a row."""
    out = work / f"{cache}_{folder}_seed{seed}"
    env = {**os.environ, CACHE_ENV: str(work / f"cache_{folder}"), "OMP_NUM_THREADS": str(args.threads)}
    tick = time.perf_counter()
    subprocess.run(command(out, seed, args.subset), cwd=REPO, env=env, check=True)
    process_s = time.perf_counter() - tick
    record = json.loads((out / "record.json").read_text())
    compiled = record["speed"]["compile"]
    commit = (record["git_commit"] or "")[:7] + ("+" if record["git_dirty"] else "")  # +: uncommitted changes
    return {
        "date": record["created_at"], "commit": commit, "cpu": record["hardware"]["cpu"],
        "torch": record["torch_version"], "threads": args.threads, "subset": args.subset, "cache": cache,
        "folder": folder, "seed": seed, "compile_s": compiled["seconds"],
        **{k: compiled[k] for k in COLUMNS if k in compiled},
        "first_epoch_compute_s": round(record["epoch_times"][0]["compute_s"], 2),
        "process_s": round(process_s, 1), "forward": record["speed"]["forward"],
        "command": "python " + " ".join(command(Path("OUT"), seed, args.subset)[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=RUNS_DIR / "bench" / "compile_cache")
    parser.add_argument("--out", type=Path, default=RUNS_DIR / "bench" / "compile_cache.csv")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    for cache, folder, seed in RUNS:
        row = one_run(args.work, cache, folder, seed, args)
        append_csv(args.out, [row], COLUMNS)
        print(f"{cache} {folder} seed {seed}: compile {row['compile_s']} s, first epoch "
              f"{row['first_epoch_compute_s']} s, FX hits/misses {row['fx_graph_cache_hits']}/"
              f"{row['fx_graph_cache_misses']}", flush=True)
    print(f"{datetime.datetime.now(datetime.UTC):%H:%M:%S} rows appended to {relative(args.out)}")


if __name__ == "__main__":
    main()
