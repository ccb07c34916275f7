"""``python -m kdlib``: train, eval, and list methods / models / datasets / recipes.

Every argument is validated before anything is loaded (method, model names, dataset, recipe, ``--variant``
keys and values, ``--set`` fields, teacher checkpoint for methods that need one, paths, output folder,
device). An invalid argument prints one line ``kdlib: error: ...`` on stderr and exits with status 2, never
a traceback; missing data (offline) and a folder already in use by another run are bad input too. A run that
fails (non-finite loss, disk full) prints one line and exits with status 1.

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

PROG = "kdlib"


class UsageError(Exception):
    """An invalid command-line argument (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= minimum``, else one clear message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def parse_pairs(items: Sequence[str], what: str, sep: str | None = ",") -> dict[str, str]:
    """``["k=v,k2=v2", ...]`` (or one pair per item when ``sep`` is None) → ``{k: v}``."""
    pairs: dict[str, str] = {}
    for item in items:
        for part in item.split(sep) if sep else [item]:
            if not part.strip():
                continue
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise UsageError(f"invalid {what} '{part}'; expected key=value")
            pairs[key.strip()] = value.strip()
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Reproducible channel knowledge distillation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a student (alone with --method ce, or distilled from a teacher)")
    t.add_argument("--method", required=True, help="distillation method (see 'kdlib methods')")
    t.add_argument("--student", required=True, help="student architecture (see 'kdlib models')")
    t.add_argument("--teacher", help="teacher architecture (default: the checkpoint's 'arch')")
    t.add_argument(
        "--teacher-ckpt", help="teacher checkpoint: kdlib model.pt or RepDistiller/mdistiller .pth"
    )
    t.add_argument("--dataset", required=True, help="dataset (see 'kdlib datasets')")
    t.add_argument("--recipe", default="repdistiller", help="training recipe (see 'kdlib recipes')")
    t.add_argument("--epochs", type=_positive_int, help="override the recipe's epochs (milestones scale)")
    t.add_argument("--subset", type=_positive_int, help="N training images, class-balanced, deterministic")
    t.add_argument("--eval-subset", type=_positive_int, help="N test images (default: the full test set)")
    t.add_argument("--batch-size", type=_positive_int, help="override the recipe's batch size")
    t.add_argument("--seed", type=_nonnegative_int, default=0)
    t.add_argument("--device", default="auto", help="auto, cpu or cuda")
    t.add_argument("--variant", action="append", default=[], metavar="K=V,...", help="method options")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        dest="set",
        help="override a recipe field (repeatable)",
    )
    t.add_argument("--data-root", help="data folder (default: $KDLIB_DATA or ~/.cache/kdlib)")
    t.add_argument("--out", required=True, help="output folder: record.json, last.pt, model.pt")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    t.add_argument("--workers", type=_nonnegative_int, default=2, help="data loader workers (default 2)")
    t.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    t.add_argument("--no-channels-last", action="store_true", help="no channels_last on CUDA")
    t.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None,
        help="torch.compile the distiller on CUDA (default: with --fast only)",
    )
    t.add_argument(
        "--fast", action=argparse.BooleanOptionalAction, default=None,
        help="the fast path: data resident on the device, CUDA graphs, fused SGD; same recipe "
        "(default: on for CUDA, off on CPU)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("--no-download", action="store_true", help="never download data")
    t.add_argument(
        "--student-weights", metavar="PATH|torchvision",
        help="initialise the student from a weights file (torchvision's or kdlib's), or from torchvision's "
        "published weights (downloaded; e.g. the pretrained ResNet18 of ICKD's ImageNet run)",
    )
    t.add_argument(
        "--bn", choices=("batch", "sync", "frozen"), default="batch",
        help="BatchNorm of the student and the method's parts: per-process batch statistics (default), "
        "SyncBatchNorm over processes (CUDA), or frozen running statistics (eval mode)",
    )
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="top-1/top-5 of a checkpoint on a test set")
    e.add_argument("--model", help="architecture (default: the checkpoint's 'arch')")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--dataset", required=True)
    e.add_argument("--data-root")
    e.add_argument("--eval-subset", type=_positive_int)
    e.add_argument("--batch-size", type=_positive_int, default=256)
    e.add_argument("--device", default="auto")
    e.add_argument("--workers", type=_nonnegative_int, default=2)
    e.add_argument("--no-download", action="store_true")
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
    f.add_argument("--workers", type=_nonnegative_int, default=2)
    f.add_argument("--no-eval", action="store_true", help="only download and extract")
    f.add_argument("--no-download", action="store_true", help="never download CIFAR-100")
    f.set_defaults(func=_fetch_teachers)
    return parser


def _check_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' exists and is not a folder")
    try:  # create it and a scratch file in it: the only sure test (os.access says yes to root everywhere)
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
    from kdlib.data import DataError
    from kdlib.models import CheckpointError
    from kdlib.runlock import FolderInUse
    from kdlib.train import ResumeError, TrainConfig, TrainingFailed, plan, train

    config = TrainConfig(
        method=args.method,
        student=args.student,
        dataset=args.dataset,
        out=args.out,
        teacher=args.teacher,
        teacher_ckpt=args.teacher_ckpt,
        recipe=args.recipe,
        epochs=args.epochs,
        subset=args.subset,
        eval_subset=args.eval_subset,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        variant=parse_pairs(args.variant, "--variant"),
        recipe_overrides=parse_pairs(args.set, "--set", None),
        data_root=args.data_root,
        resume=args.resume,
        workers=args.workers,
        amp=not args.no_amp,
        channels_last=not args.no_channels_last,
        compile=args.compile,
        fast=args.fast,
        progress=False if args.no_progress else None,
        download=not args.no_download,
        student_weights=args.student_weights,
        bn=args.bn,
    )
    try:
        plan(config)
    except ValueError as error:
        raise UsageError(str(error)) from None
    _check_out(Path(args.out), args.resume)
    _setup_logging()
    try:
        record = train(config)
    except (CheckpointError, ResumeError, DataError, FolderInUse) as error:
        raise UsageError(str(error)) from None
    except (TrainingFailed, OSError) as error:  # OSError: e.g. the disk filled up (the record says failed)
        _fail(str(error), 1)
    if _rank() != 0:
        return 0
    print(
        f"{Path(args.out) / 'record.json'}: {record['status']}, top1 last {record['top1_last']:.2f}, "
        f"best {record['top1_best']:.2f} (epoch {record['best_epoch']})"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from kdlib import models
    from kdlib.data import DataError, get_dataset_spec
    from kdlib.models import CheckpointError
    from kdlib.train import evaluate_checkpoint, resolve_device

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
        )
    except (CheckpointError, DataError) as error:
        raise UsageError(str(error)) from None
    print(json.dumps(result))
    return 0


def _fetch_teachers(args: argparse.Namespace) -> int:
    from kdlib.data import DataError
    from kdlib.train import resolve_device
    from kdlib.weights import MDISTILLER_TEACHERS_URL, fetch_teachers

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
    from kdlib.distributed import env_rank

    return env_rank()


def _methods(args: argparse.Namespace) -> int:
    from kdlib.methods import available_methods, get_method, make_config, variant_string

    for name in available_methods():
        cls = get_method(name)
        flags = [f for f, on in (("teacher", cls.needs_teacher), ("pretrain", cls.has_pretrain)) if on]
        config = make_config(name)
        print(f"{name:8s} {','.join(flags) or '-':17s} {variant_string(config)} {config}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from kdlib import models

    print("\n".join(models.available()))
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from kdlib.data import DATASETS

    for spec in DATASETS.values():
        print(f"{spec.name:14s} {spec.num_classes:5d} classes  input {'x'.join(map(str, spec.input_shape))}")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from kdlib.recipes import RECIPES

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
