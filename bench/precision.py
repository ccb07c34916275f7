"""bf16 against fp32, paired by seed, on the proxy study's final configurations (version 2).

What ``--precision auto`` chooses on a CPU with bf16 units (AMX, AVX512-BF16) and on CUDA is bf16 autocast;
elsewhere fp32. This asks whether that choice costs accuracy. Each run is one of study v2's final runs
(``notebooks/profiles/proxy_v2.json``: Fashion-MNIST, resnet32 → resnet8, 5,000 training images, 7 epochs,
its teacher, each method at the weight its tuning chose), trained twice on the fast path: once in fp32 and
once in bf16, with the same seed (so the same initialisation, batches and augmentation draws). Methods: KD,
ICKD and CD; seeds 0-4. Both arms run on the same machine, one after the other.

- ``python bench/precision.py run``: trains the runs whose records are missing (each resumes its own
  ``last.pt``; records are copied to ``bench/precision/<precision>/final/...``), one at a time with every
  core, the two precisions of a seed one after the other.
- ``python bench/precision.py summary``: per method, the paired difference bf16 − fp32 of the last epoch's
  test top-1 (mean, 95 % t interval, paired t-test), and beside it the same for fp32 on this CPU against
  study v2's committed fp32 records of the same configuration made on another CPU type: how much a change of
  CPU alone moves a run. Written to ``bench/precision.csv``.

The summary's rows are the book's precision table (:func:`kdlib.report.precision`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # python bench/precision.py from the repository

from kdlib import results, stats  # noqa: E402
from kdlib.paths import PRECISION_CSV, PRECISION_DIR, repo_path  # noqa: E402
from kdlib.record import config_id_of  # noqa: E402
from kdlib.study import staged  # noqa: E402
from kdlib.study.grid import Run, run_grid  # noqa: E402

PROFILE = "proxy_v2"
METHODS = ("kd", "ickd", "cd")
SEEDS = (0, 1, 2, 3, 4)
PRECISIONS = ("fp32", "bf16")
OUT = Path("runs/precision")


def planned() -> list[Run]:
    """Each (precision, method, seed) run: study v2's final run with ``precision`` set, in its own folder."""
    s = staged.load_staged(PROFILE)
    finals = staged.final_runs(s, staged.chosen_weights(s))
    runs = []
    for r in finals:
        for precision in PRECISIONS:
            if r.variant.method in METHODS and r.config.seed in SEEDS:
                key = f"{precision}/{r.key}"
                config = dataclasses.replace(r.config, precision=precision, out=repo_path(OUT) / key)
                runs.append(Run(config, r.variant, r.pair, key, config_id_of(config)))
    return runs


def _last_top1(folder: Path) -> pd.DataFrame:
    df = results.load_records(folder)
    df = df[df["method"].isin(METHODS) & df["seed"].isin(SEEDS)]
    return df.set_index(["method", "seed"])[["top1_last", "cpu"]]


def _paired(rows: list[dict], comparison: str, a: pd.DataFrame, b: pd.DataFrame) -> None:
    """One row per method: ``a`` − ``b`` over the seeds both have."""
    for method in METHODS:
        if method not in a.index.get_level_values(0) or method not in b.index.get_level_values(0):
            continue
        joined = pd.merge(a.loc[method], b.loc[method], left_index=True, right_index=True,
                          suffixes=("_a", "_b"))
        diff = (joined["top1_last_a"] - joined["top1_last_b"]).tolist()
        low, high = results.mean_interval(diff)
        _, p = stats.paired_test(diff)
        rows.append({"comparison": comparison, "method": method, "seeds": len(diff),
                     "a_mean": joined["top1_last_a"].mean(), "b_mean": joined["top1_last_b"].mean(),
                     "mean_difference": sum(diff) / len(diff) if diff else float("nan"),
                     "ci_low": low, "ci_high": high, "p": p,
                     "a_cpu": "; ".join(sorted(set(joined["cpu_a"].dropna()))),
                     "b_cpu": "; ".join(sorted(set(joined["cpu_b"].dropna())))})


def summary() -> pd.DataFrame:
    """The paired table (see the module docstring), written to ``bench/precision.csv``."""
    here = {p: _last_top1(PRECISION_DIR / p) for p in PRECISIONS}
    committed = _last_top1(staged.load_staged(PROFILE).results_dir / "final")
    rows: list[dict] = []
    _paired(rows, "bf16 - fp32", here["bf16"], here["fp32"])  # the same CPU
    _paired(rows, "fp32 - fp32", here["fp32"], committed)  # this CPU against study v2's
    table = pd.DataFrame(rows)
    table.to_csv(PRECISION_CSV, index=False, float_format="%.6g")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("run", "summary"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    args = parser.parse_args(argv)
    if args.action == "run":
        outcomes = run_grid(planned(), PRECISION_DIR, jobs=1, threads=args.threads)
        failed = [o for o in outcomes if o.status == "failed"]
        for o in failed:
            print(f"failed: {o.run.key}: {o.message}", file=sys.stderr)
        if failed:
            return 1
    print(summary().to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
