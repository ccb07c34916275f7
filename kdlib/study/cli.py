"""The study's command line, ``python -m kdlib.study``.

What ``make reproduce`` calls, and the other commands::

    python -m kdlib.study reproduce --profile proxy --jobs 2
    python -m kdlib.study reproduce --profile cifar100 --executor slurm --partition gpu --no-wait
    python -m kdlib.study reproduce --profile proxy_v2 [--stages tuning]   # a staged protocol
    python -m kdlib.study params --profile proxy --notebook 01_ickd      # the YAML papermill gets
    python -m kdlib.study estimate --profile cifar100 --images-per-s 4000
    python -m kdlib.study refresh       # re-execute the committed notebooks with their defaults
    python -m kdlib.study verify --profile proxy --match kd/default/seed0 [--tolerance 0.5]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any, NoReturn

import kdlib.study
from kdlib.config import positive_int
from kdlib.packing import jobs_for
from kdlib.paths import RUNS_DIR, relative, repo_path
from kdlib.study.executors import EXECUTORS, Resources, pending_runs, train_pending
from kdlib.study.grid import verify
from kdlib.study.parameters import parse_pairs
from kdlib.study.profiles import (
    bench_throughput,
    estimate,
    load_profile,
    notebook_parameters,
    profile_results_dir,
    profile_runs,
    refresh,
    reproduce,
)
from kdlib.study.staged import STAGES, is_staged, reproduce_staged


class _Parser(argparse.ArgumentParser):
    """argparse with a usage error as one line, ``kdlib.study: error: <message>``, and exit status 2 (not the
    usage text); ``--help`` still prints the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"kdlib.study: error: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m kdlib.study`` and its five commands."""
    parser = _Parser(prog="python -m kdlib.study", description=(kdlib.study.__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("reproduce", help="execute the notebooks with a profile's full parameters")
    r.add_argument("--profile", required=True)
    r.add_argument("--jobs", type=positive_int, default=1, help="runs side by side (default 1)")
    r.add_argument("--runs-per-gpu", type=positive_int,
                   help="runs side by side on each GPU, each in its own process (CUDA MPS where it starts): "
                        "local, N per visible GPU; submitit executors, N runs per job and its GPU")
    r.add_argument("--notebooks", help="comma-separated subset, e.g. 01_ickd,06_head_to_head")
    r.add_argument("--stages", help=f"a staged protocol's stages to run (default: all, in order: "
                   f"{','.join(STAGES)})")
    r.add_argument("--device", help="override the profile's device")
    r.add_argument("--executor", default="local", choices=EXECUTORS,
                   help="where the runs train: in the notebooks (local, default), or as submitit jobs on "
                        "this machine (submitit-local) or on Slurm (slurm, one job array)")
    c = r.add_argument_group("submitit executors (defaults: the profile's 'cluster' object)")
    c.add_argument("--partition", help="Slurm partition")
    c.add_argument("--time-min", type=int, help="time limit of each job in minutes")
    c.add_argument("--gpus-per-node", type=int, help="GPUs of each job per node, one process each (DDP)")
    c.add_argument("--nodes", type=int, help="nodes of each job")
    c.add_argument("--cpus-per-task", type=int, help="CPUs per process (also its torch threads)")
    c.add_argument("--mem-gb", type=float, help="memory per node in GB")
    c.add_argument("--array-parallelism", type=int,
                   help="jobs of the array running at once (submitit-local: jobs at once on this machine)")
    c.add_argument("--no-wait", action="store_true",
                   help="slurm: print the job ids and return; the same command later submits only the runs "
                        "whose jobs died, then executes the notebooks")
    r.add_argument("--records-only", action="store_true",
                   help="train nothing: execute the notebooks from the records (an error while runs are "
                        "pending)")
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
    v.add_argument("--tolerance", type=_points, metavar="POINTS",
                   help="pass when the last-epoch top-1 is within POINTS of the record's "
                   "(default: bit for bit)")
    return parser


def _notebooks(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",")] if text else None


def _train_pending(args: argparse.Namespace, notebooks: list[str] | None,
                   extra: dict[str, Any]) -> int | None:
    """The runs of the profile that are not done, trained with a submitit executor (or, with
    ``--records-only``, counted): 0 when every run has its record (the notebooks may execute), None when
    jobs were submitted without waiting, else the exit status."""
    runs = profile_runs(args.profile, notebooks=notebooks, **extra)
    results = profile_results_dir(args.profile)
    if args.records_only:
        pending = pending_runs(runs, results)
        if pending:
            print(f"kdlib.study: error: {len(pending)} of {len(runs)} runs of profile '{args.profile}' have "
                  f"no record yet (first: {pending[0].key}); train them first", file=sys.stderr)
            return 1
        return 0
    profile = load_profile(args.profile)
    resources = Resources.of(profile, partition=args.partition, time_min=args.time_min,
                             gpus_per_node=args.gpus_per_node, nodes=args.nodes,
                             cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
                             array_parallelism=args.array_parallelism, runs_per_gpu=args.runs_per_gpu)
    outcomes, ids = train_pending(runs, results, args.executor, resources, args.profile,
                                  threads=profile.get("common", {}).get("threads"), block=not args.no_wait)
    if ids and args.no_wait:
        print(f"submitted {len(ids)} jobs: {' '.join(ids)}")
        print("follow them with squeue; when they have ended, run the same command again")
        return None
    failed = [o for o in outcomes if not o.ok and o.status != "diverged"]
    for outcome in failed:
        print(f"failed: {outcome.run.key}: {outcome.message}", file=sys.stderr)
    if failed:
        print(f"kdlib.study: error: {len(failed)} runs failed; run the same command again to resubmit them "
              "(each resumes from its last.pt)", file=sys.stderr)
        return 1
    return 0


def _reproduce_staged(args: argparse.Namespace) -> int:
    """A staged protocol's stages (:mod:`kdlib.study.staged`), on this machine."""
    ignored = [flag for flag, value in (("--notebooks", args.notebooks), ("--device", args.device),
                                        ("--records-only", args.records_only)) if value]
    if args.executor != "local" or ignored:
        print(f"kdlib.study: error: profile '{args.profile}' is a staged protocol: it runs with the local "
              f"executor and its own settings ({', '.join(ignored) or '--executor ' + args.executor} "
              "not taken)", file=sys.stderr)
        return 2
    stages = [x.strip() for x in args.stages.split(",")] if args.stages else list(STAGES)
    unknown = [x for x in stages if x not in STAGES]
    if unknown:
        print(f"kdlib.study: error: unknown stages {unknown}; choose from {', '.join(STAGES)}",
              file=sys.stderr)
        return 2
    try:
        outcomes = reproduce_staged(args.profile, jobs=args.jobs, stages=stages)
    except RuntimeError as error:
        print(f"kdlib.study: error: {error}", file=sys.stderr)
        return 1
    counts = Counter(o.status for o in outcomes)
    print(f"{args.profile}: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    if args.runs_per_gpu and args.jobs > 1:
        raise ValueError("give --jobs or --runs-per-gpu, not both: --runs-per-gpu sets the runs side by side")
    if args.runs_per_gpu and args.executor == "local":
        args.jobs = jobs_for(args.runs_per_gpu)
    if is_staged(args.profile):
        return _reproduce_staged(args)
    if args.stages:
        print(f"kdlib.study: error: --stages is for staged protocols; profile '{args.profile}' runs "
              "notebooks", file=sys.stderr)
        return 2
    notebooks = _notebooks(args.notebooks)
    extra = {"device": args.device} if args.device else {}
    if args.executor != "local" or args.records_only:
        status = _train_pending(args, notebooks, extra)
        if status is None or status:
            return status or 0
    jobs = args.jobs if args.executor == "local" else 1
    for path in reproduce(args.profile, jobs, notebooks, device=args.device):
        print(relative(path))
    return 0


def _refresh(args: argparse.Namespace) -> int:
    for name, seconds in refresh(_notebooks(args.notebooks), fresh=not args.keep_runs).items():
        print(f"notebooks/{name}.ipynb: {seconds:.1f} s")
    return 0


def _points(text: str) -> float:
    """``--tolerance``: a finite number of top-1 points >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of top-1 points >= 0, got {text!r}")
    return value


def verify_line(row: dict, tolerance: float | None) -> str:
    """One line of ``verify``: the record, the retrained number, the verdict and, where the CPU differs from
    the record's (model or instruction sets), how."""
    if tolerance is None:
        verdict = "identical" if row["identical"] else "DIFFERENT"
    else:
        difference = "" if row["difference"] is None else f"{row['difference']:+.2f} points, "
        verdict = (f"{difference}{'pass' if row['passed'] else 'FAIL'} at a tolerance of {tolerance:g} points"
                   + (" (bit for bit)" if row["identical"] else ""))
    line = (f"{row['key']}: committed {row['top1_last']} @ {row['commit']}, now {row['new top1_last']}: "
            f"{verdict}")
    if row["cpu_difference"]:
        expect = "; bit-for-bit is not expected" if tolerance is None else ""
        line += f" (this CPU differs from the record's: {row['cpu_difference']}{expect})"
    return line


def _verify(args: argparse.Namespace) -> int:
    runs, results = profile_runs(args.profile, args.match), profile_results_dir(args.profile)
    rows = verify(runs, results, repo_path(args.out), args.tolerance)
    for row in rows:
        print(verify_line(row, args.tolerance))
    return 0 if all(row["passed"] for row in rows) else 1


def _params(args: argparse.Namespace) -> int:
    import yaml

    print(yaml.safe_dump(notebook_parameters(args.profile, args.notebook), sort_keys=False), end="")
    return 0


def _estimate(args: argparse.Namespace) -> int:
    ips, eval_ips, basis = args.images_per_s, args.eval_images_per_s, "given on the command line"
    if ips is None:
        common = load_profile(args.profile)["common"]
        device = "cuda" if str(common.get("device", "cpu")).startswith("cuda") else "cpu"
        ips, bench_eval_ips, basis = bench_throughput(device, parse_pairs(common["pairs"]))
        eval_ips = bench_eval_ips if eval_ips is None else eval_ips
    table = estimate(args.profile, ips, eval_ips)
    print(f"ESTIMATE (not a measurement) at {ips:g} training images/s ({basis}):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    return 0


COMMANDS = {"reproduce": _reproduce, "refresh": _refresh, "verify": _verify, "params": _params,
            "estimate": _estimate}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m kdlib.study``; exit status 2 (and one line on stderr) for a bad value: a bad argument
    raises ``SystemExit(2)`` (argparse), a bad value found later returns 2. A profile is the name of a file
    in ``notebooks/profiles/``, never a path (:func:`~kdlib.paths.profile_file`)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return COMMANDS[args.command](args)
    except ValueError as error:
        print(f"kdlib.study: error: {error}", file=sys.stderr)
        return 2
