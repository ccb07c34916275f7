"""``python -m kdlib``: train, eval, and list methods / models / datasets / recipes.

Every argument is validated before anything is loaded (method, model names, dataset, recipe, ``--variant``
keys and values, ``--set`` fields, teacher checkpoint for methods that need one, paths, output folder,
device). An invalid argument prints one line ``kdlib: error: ...`` on stderr and exits with status 2, never
a traceback; missing data (offline) and a folder already in use by another run are bad input too. A run that
fails (non-finite loss, disk full) prints one line and exits with status 1; Ctrl-C, one line saying how to
resume, status 130.

Examples::

    python -m kdlib train --method ce --student resnet32x4 --dataset cifar100 --out runs/t_resnet32x4
    python -m kdlib train --method ickd --student resnet8x4 --teacher-ckpt runs/t_resnet32x4/model.pt \\
        --dataset cifar100 --variant kd_weight=1 --seed 1 --out runs/ickd_s1
    python -m kdlib train ... --recipe smoke --subset 256 --set lr=0.1 --set milestones=1
    python -m kdlib eval --model resnet32x4 --ckpt runs/t_resnet32x4/model.pt --dataset cifar100
    torchrun --standalone --nproc_per_node 8 -m kdlib train --method ickd --recipe ickd_imagenet \\
        --dataset imagenet --student resnet18 --student-weights torchvision --teacher resnet34 \\
        --teacher-ckpt torchvision --workers 8 --out runs/ickd_imagenet_pretrained \\
        --variant ce_weight=0.5,kd_weight=0.5,T=1,ickd_weight=500,variant=imagenet
    python -m kdlib fetch-teachers --dest runs/teachers/cifar100

Under ``torchrun`` only rank 0 logs and prints; every rank validates its arguments the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from kdlib import models
from kdlib.config import PRECISIONS, add_arguments, from_args, nonnegative_int, plan, positive_int
from kdlib.data import DATASETS, DataError, get_dataset_spec
from kdlib.distill import MethodOptionError
from kdlib.distributed import env_rank, resolve_device
from kdlib.loop import evaluate_checkpoint
from kdlib.methods import available_methods, get_method, make_config, variant_string
from kdlib.models import CheckpointError
from kdlib.recipes import RECIPES
from kdlib.record import TrainingFailed
from kdlib.runlock import FolderInUse
from kdlib.train import ResumeError, run
from kdlib.weights import MDISTILLER_TEACHERS_URL, fetch_teachers

PROG = "kdlib"


class UsageError(Exception):
    """An invalid command-line argument (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Reproducible channel knowledge distillation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a student (alone with --method ce, or distilled from a teacher)")
    add_arguments(t)
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="top-1/top-5 of a checkpoint on a test set")
    e.add_argument("--model", help="architecture (default: the checkpoint's 'arch')")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--dataset", required=True)
    e.add_argument("--data-root")
    e.add_argument("--eval-subset", type=positive_int)
    e.add_argument("--batch-size", type=positive_int, default=256)
    e.add_argument("--device", default="auto")
    e.add_argument("--workers", type=nonnegative_int, default=2)
    e.add_argument("--no-download", action="store_true")
    e.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="bf16 autocast or fp32; auto: bf16 where the device computes it natively (as train)")
    e.set_defaults(func=_eval)

    for name, func, text in (
        ("methods", _methods, "list distillation methods"),
        ("models", _models, "list model architectures"),
        ("datasets", _datasets, "list datasets"),
        ("recipes", _recipes, "list training recipes"),
    ):
        sub.add_parser(name, help=text).set_defaults(func=func)

    f = sub.add_parser(
        "fetch-teachers",
        help="download RepDistiller's CIFAR-100 teachers (mdistiller's release) and measure their accuracy",
    )
    f.add_argument(
        "--url",
        help="the archive's URL (default: cifar_teachers.tar of mdistiller's GitHub release 'checkpoints', "
        "kdlib.weights.MDISTILLER_TEACHERS_URL, an assumption); file:// URLs work too",
    )
    f.add_argument(
        "--dest", default="runs/teachers/cifar100",
        help="folder for <arch>_vanilla/ckpt_epoch_240.pth and teachers.json (default: %(default)s)",
    )
    f.add_argument("--data-root", help="CIFAR-100 folder (default: $KDLIB_DATA or ~/.cache/kdlib)")
    f.add_argument("--device", default="auto")
    f.add_argument("--workers", type=nonnegative_int, default=2)
    f.add_argument("--no-eval", action="store_true", help="only download and extract")
    f.add_argument("--no-download", action="store_true", help="never download CIFAR-100")
    f.set_defaults(func=_fetch_teachers)
    return parser


def _check_out(out: Path, resume: bool) -> None:
    try:  # create it and a scratch file in it: the only sure test (os.access says yes to root everywhere)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out '{out}' exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as error:
        raise UsageError(f"--out '{out}' is not writable ({error.strerror}: '{error.filename}')") from None
    if (out / "last.pt").exists() and not resume:
        raise UsageError(
            f"--out '{out}' already holds a run (last.pt); pass --resume or choose another folder"
        )


def _setup_logging() -> None:
    logger = logging.getLogger("kdlib")
    if _rank() != 0:  # torchrun: rank 0 speaks for the run
        logger.setLevel(logging.WARNING)
        return
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def _train(args: argparse.Namespace) -> int:
    try:
        p = plan(from_args(args))
    except ValueError as error:
        raise UsageError(str(error)) from None
    _check_out(Path(args.out), args.resume)
    _setup_logging()
    try:
        record = run(p)
    except (CheckpointError, ResumeError, DataError, FolderInUse, MethodOptionError) as error:
        raise UsageError(str(error)) from None
    except (TrainingFailed, OSError) as error:  # OSError: e.g. the disk filled up (the record says failed)
        _fail(str(error), 1)
    except KeyboardInterrupt:  # the record says failed (interrupted); last.pt holds the last whole epoch
        _fail(f"interrupted; to continue, run the same command with --resume (--out '{args.out}')", 130)
    if _rank() != 0:
        return 0
    print(
        f"{Path(args.out) / 'record.json'}: {record['status']}, top1 last {record['top1_last']:.2f}, "
        f"best {record['top1_best']:.2f} (epoch {record['best_epoch']})"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    try:
        if args.model is not None and args.model not in models.available():
            raise ValueError(f"unknown model '{args.model}'; choose one of: {', '.join(models.available())}")
        get_dataset_spec(args.dataset)
        resolve_device(args.device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not Path(args.ckpt).is_file():
        raise UsageError(f"checkpoint '{args.ckpt}' does not exist")
    _setup_logging()
    try:
        result = evaluate_checkpoint(
            args.model,
            args.ckpt,
            args.dataset,
            data_root=args.data_root,
            eval_subset=args.eval_subset,
            batch_size=args.batch_size,
            device=args.device,
            workers=args.workers,
            download=not args.no_download,
            precision=args.precision,
        )
    except (CheckpointError, DataError) as error:
        raise UsageError(str(error)) from None
    print(json.dumps(result))
    return 0


def _fetch_teachers(args: argparse.Namespace) -> int:
    try:
        resolve_device(args.device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    dest = Path(args.dest)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"--dest '{dest}' exists and is not a folder")
    _setup_logging()
    try:
        summary = fetch_teachers(
            dest, args.url or MDISTILLER_TEACHERS_URL, evaluate=not args.no_eval, data_root=args.data_root,
            device=args.device, workers=args.workers, download_data=not args.no_download,
        )
    except DataError as error:  # offline, or a bad archive: like missing data
        raise UsageError(str(error)) from None
    for row in summary["teachers"]:
        measured = f"{row['top1']:.2f}" if row.get("top1") is not None else "-"
        advertised = f"{row['advertised_top1']:.2f}" if row.get("advertised_top1") is not None else "-"
        note = f"  ({row['error']})" if row.get("error") else ""
        print(f"{row['arch']:12s} top1 {measured:>6s}  advertised {advertised:>6s}  {row['path']}{note}")
    print(f"{dest / 'teachers.json'}")
    return 0


def _rank() -> int:
    return env_rank()


def _methods(args: argparse.Namespace) -> int:
    for name in available_methods():
        cls = get_method(name)
        flags = [f for f, on in (("teacher", cls.needs_teacher), ("pretrain", cls.has_pretrain)) if on]
        config = make_config(name)
        print(f"{name:8s} {','.join(flags) or '-':17s} {variant_string(config)} {config}")
    return 0


def _models(args: argparse.Namespace) -> int:
    print("\n".join(models.available()))
    return 0


def _datasets(args: argparse.Namespace) -> int:
    for spec in DATASETS.values():
        print(f"{spec.name:14s} {spec.num_classes:5d} classes  input {'x'.join(map(str, spec.input_shape))}")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    for recipe in RECIPES.values():
        print(
            f"{recipe.name:13s} {recipe.epochs:4d} epochs  batch {recipe.batch_size:4d}  lr {recipe.lr:<5g} "
            f"milestones {','.join(map(str, recipe.milestones))}  pad {recipe.pad_mode}  ({recipe.source})"
        )
    return 0


def _fail(message: str, status: int) -> NoReturn:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 on success and raises ``SystemExit`` (2 for bad arguments) on errors."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as error:
        _fail(str(error), 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
