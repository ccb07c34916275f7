"""One training run's configuration (:class:`TrainConfig`), its validation (:func:`plan`), its command line.

Each field of :class:`TrainConfig` carries its command-line option (:func:`option`), so the mapping between
the dataclass and ``python -m kdlib train`` is written once and read both ways:

- :func:`add_arguments` builds the ``train`` subcommand's options from the fields;
- :func:`from_args` turns the parsed namespace back into a :class:`TrainConfig`;
- :func:`to_argv` writes a :class:`TrainConfig` as arguments (what the study's subprocess runs execute), so
  ``from_args(parse(to_argv(config)))`` equals ``config`` for every field (tests/test_config.py).

How a field's type becomes an option: a ``bool`` defaulting to True is ``--no-<name>``; one defaulting
to False is ``--<name>``; ``bool | None`` is ``--<name>/--no-<name>`` (None: decided at run time); a
``dict`` is a repeatable ``K=V`` option; everything else takes one value. A bool's help text describes the
option as it appears (``--no-channels-last``: "no channels_last ...").
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdlib import curves, distributed, models, weights
from kdlib.data import get_dataset_spec
from kdlib.distill import MethodConfig
from kdlib.fast import PRECISIONS, resolve_precision
from kdlib.fields import format_field
from kdlib.methods import get_method, make_config
from kdlib.recipes import Recipe, get_recipe

#: The largest count of batch size, images or epochs that a run accepts, what Python's slices and torch take.
MAX_COUNT = 2**63 - 1
#: The largest seed, as torch's generators take unsigned 64-bit seeds.
MAX_SEED = 2**64 - 1


def int_at_least(minimum: int, maximum: int = MAX_COUNT) -> Callable[[str], int]:
    """An argparse ``type``: an integer from ``minimum`` to ``maximum``, else one clear message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be an integer <= {maximum}, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
seed_int = int_at_least(0, MAX_SEED)


def option(default: Any = dataclasses.MISSING, help: str | None = None, **argparse_kwargs: Any) -> Any:
    """A :class:`TrainConfig` field and its command-line option (``help`` and extra ``add_argument``
    keywords such as ``type``, ``choices`` or ``metavar``). ``default_factory`` makes a dict field."""
    factory = argparse_kwargs.pop("default_factory", dataclasses.MISSING)
    metadata = {"help": help, "argparse": argparse_kwargs}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """One training run. ``None`` fields take the recipe's value (``epochs``, ``batch_size``) or a default.

    ``variant``: method option overrides (``make_config``); ``recipe_overrides``: recipe fields (``--set``).
    ``precision``: ``bf16`` (autocast; every loss term in float32), ``fp32``, or ``auto``: bf16 where the
    device computes it natively (CUDA; a CPU with AVX512-BF16 or AMX), else fp32
    (:func:`~kdlib.fast.resolve_precision`).
    ``fast``: the fast path (:mod:`kdlib.fast`; None: on CUDA, and on a CPU when the run is bf16);
    ``channels_last`` applies on CUDA and on the fast path; ``compile`` (``torch.compile``) None: with the
    fast path, on a CPU only for a run long enough to repay the compilation (:func:`kdlib.loop.compile_pays`).
    ``teacher_ckpt`` and ``student_weights`` (the student's initialisation; None: random) are files, or
    ``"torchvision"`` for torchvision's published weights of the architecture (:mod:`kdlib.weights`).
    ``bn``: BatchNorm of the student and the method's parts, ``batch`` | ``sync`` | ``frozen``
    (:mod:`kdlib.distributed`).
    """

    method: str = option(help="distillation method (see 'kdlib methods')")
    student: str = option(help="student architecture (see 'kdlib models')")
    dataset: str = option(help="dataset (see 'kdlib datasets')")
    out: str | Path = option(help="output folder: record.json, last.pt, model.pt")
    teacher: str | None = option(None, "teacher architecture (default: the checkpoint's 'arch')")
    teacher_ckpt: str | Path | None = option(
        None, "teacher checkpoint: kdlib model.pt or RepDistiller/mdistiller .pth, or 'torchvision'")
    recipe: str = option("repdistiller", "training recipe (see 'kdlib recipes')")
    epochs: int | None = option(None, "override the recipe's epochs (milestones scale)", type=positive_int)
    subset: int | None = option(None, "N training images, class-balanced, deterministic", type=positive_int)
    eval_subset: int | None = option(None, "N test images (default: the full test set)", type=positive_int)
    val_subset: int | None = option(
        None, "hold N training images out for validation (class-balanced, deterministic, never trained on); "
        "each epoch records their top-1 beside the test set's", type=positive_int)
    eval_every: int | None = option(
        None, "evaluate the test (and validation) images every N epochs and after the last (default: every "
        "epoch); training is the same either way", type=positive_int)
    subset_seed: int = option(
        0, "which class-balanced draw of --subset trains (default 0); the validation and test images do not "
        "depend on it", type=seed_int)
    batch_size: int | None = option(None, "override the recipe's batch size", type=positive_int)
    seed: int = option(0, "the run's seed", type=seed_int)
    device: str = option("auto", "auto, cpu or cuda")
    variant: dict[str, Any] = option(
        default_factory=dict, help="method options (repeatable)", metavar="K=V,...")
    recipe_overrides: dict[str, Any] = option(
        default_factory=dict, help="override a recipe field (repeatable)", metavar="FIELD=VALUE",
        flag="--set")
    data_root: str | Path | None = option(None, "data folder (default: $KDLIB_DATA or ~/.cache/kdlib)")
    resume: bool = option(False, "continue from OUT/last.pt if it exists")
    workers: int = option(2, "data loader workers (default 2)", type=nonnegative_int)
    precision: str = option(
        "auto", "bf16 autocast (every loss term in float32) or fp32; auto: bf16 on CUDA and on CPUs with "
        "bf16 units (AVX512-BF16, AMX), else fp32", choices=PRECISIONS)
    channels_last: bool = option(True, "no channels_last (default: on CUDA and on the fast path)")
    compile: bool | None = option(
        None, "torch.compile the distiller (default: with the fast path; on a CPU for runs long enough to "
        "repay the compilation)")
    fast: bool | None = option(
        None, "the fast path: data resident on the device, compiled step (CUDA graphs, fused SGD on CUDA); "
        "same recipe (default: on CUDA, and on a CPU when the run is bf16)")
    progress: bool | None = option(None, "progress bars (default: when stderr is a terminal)")
    download: bool = option(True, "never download data")
    student_weights: str | Path | None = option(
        None, "initialise the student from a weights file (torchvision's or kdlib's), or from torchvision's "
        "published weights (downloaded; e.g. the pretrained ResNet18 of ICKD's ImageNet run)",
        metavar="PATH|torchvision")
    bn: str = option(
        "batch", "BatchNorm of the student and the method's parts: per-process batch statistics (default), "
        "SyncBatchNorm over processes (CUDA), or frozen running statistics (eval mode)",
        choices=distributed.BN_MODES)
    tensorboard: bool = option(
        False, "write TensorBoard scalars into OUT: per-step losses, per-epoch metrics, learning rate and "
        "throughput (needs the tensorboard package; not part of the run's identity)")


# --- the command line, both ways ------------------------------------------------------------------
def _flag(f: dataclasses.Field) -> str:
    return f.metadata["argparse"].get("flag", "--" + f.name.replace("_", "-"))


def _kind(f: dataclasses.Field) -> str:
    """``bool``, ``optional_bool``, ``dict`` or ``value``: how the field appears on the command line."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    if hint is bool:
        return "bool"
    if hint == bool | None:
        return "optional_bool"
    return "dict" if typing.get_origin(hint) is dict else "value"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per :class:`TrainConfig` field to ``parser`` (the ``train`` subcommand)."""
    for f in dataclasses.fields(TrainConfig):
        kwargs = {k: v for k, v in f.metadata["argparse"].items() if k != "flag"}
        flag, kind, text = _flag(f), _kind(f), f.metadata["help"]
        if kind == "bool" and f.default:
            parser.add_argument("--no-" + flag[2:], dest=f.name, action="store_false", help=text)
        elif kind == "bool":
            parser.add_argument(flag, dest=f.name, action="store_true", help=text)
        elif kind == "optional_bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        elif kind == "dict":
            parser.add_argument(flag, dest=f.name, action="append", default=[], help=text, **kwargs)
        else:
            required = f.default is dataclasses.MISSING
            default = None if required else f.default
            parser.add_argument(flag, dest=f.name, required=required, default=default, help=text, **kwargs)


def check_option(name: str, value: Any) -> None:
    """``ValueError`` unless ``value`` suits the field ``name`` of :class:`TrainConfig` as its command-line
    option would take it: a bool for a switch (or None where the switch may be left to the run), one of the
    ``choices``, a dict for a repeatable option, a value its ``type`` accepts; :func:`plan` checks the
    rest."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if name not in fields:
        raise ValueError(f"unknown option '{name}'; choose one of: {', '.join(fields)}")
    f = fields[name]
    kind, meta = _kind(f), f.metadata["argparse"]
    if kind in ("bool", "optional_bool"):
        if not (isinstance(value, bool) or (value is None and kind == "optional_bool")):
            raise ValueError(f"option '{name}' is a switch: true or false{' or null' * (kind != 'bool')}, "
                             f"got {value!r}")
    elif kind == "dict":
        if not isinstance(value, Mapping):
            raise ValueError(f"option '{name}' takes a dict, got {value!r}")
    elif "choices" in meta and value not in meta["choices"]:
        raise ValueError(f"invalid {name} {value!r}; choose one of: {', '.join(map(str, meta['choices']))}")
    elif value is not None and "type" in meta:
        try:
            meta["type"](str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise ValueError(f"invalid {name} {value!r}: {error}") from None


def parse_assignments(items: Sequence[str], what: str, sep: str | None = ",") -> dict[str, str]:
    """``["k=v,k2=v2", ...]`` (or one assignment per item when ``sep`` is None) → ``{k: v}``; a part
    without ``=`` raises ``ValueError`` naming it."""
    pairs: dict[str, str] = {}
    for item in items:
        for part in item.split(sep) if sep else [item]:
            if not part.strip():
                continue
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"invalid {what} '{part}'; expected key=value")
            pairs[key.strip()] = value.strip()
    return pairs


def from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of a namespace parsed by a parser that :func:`add_arguments` built."""
    values = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name)
        if _kind(f) == "dict":  # --variant splits on commas; --set takes one FIELD=VALUE per option
            value = parse_assignments(value, _flag(f), "," if f.name == "variant" else None)
        values[f.name] = value
    return TrainConfig(**values)


def to_argv(config: TrainConfig) -> list[str]:
    """``python -m kdlib train`` arguments (after ``train``) that :func:`from_args` reads back as ``config``;
    fields at their default are left out."""
    argv: list[str] = []
    for f in dataclasses.fields(TrainConfig):
        value, flag, kind = getattr(config, f.name), _flag(f), _kind(f)
        default = f.default_factory() if kind == "dict" else f.default
        if value == default:
            continue
        if kind in ("bool", "optional_bool"):
            argv.append(flag if value else "--no-" + flag[2:])
        elif kind == "dict":
            for key, item in value.items():
                argv += [flag, f"{key}={format_field(item)}"]
        else:
            argv += [flag, format_field(value)]
    return argv


# --- validation (nothing loaded) ------------------------------------------------------------------
@dataclass
class Plan:
    """A validated :class:`TrainConfig`: the resolved method configuration, recipe and device."""

    config: TrainConfig
    method_config: MethodConfig
    recipe: Recipe
    device: torch.device
    needs_teacher: bool
    #: Processes the run is split over (``WORLD_SIZE`` of a launcher such as torchrun; 1 without one).
    world_size: int = 1
    #: ``bf16`` or ``fp32`` (``TrainConfig.precision`` resolved for the device; part of ``config_id``).
    precision: str = "fp32"
    #: Whether the run takes the fast path (``TrainConfig.fast``, resolved: by default on CUDA or when the
    #: run is bf16, for data that fits on the device; such a default under several processes is refused,
    #: since it would silently be another configuration). Its batches are other draws of the same
    #: distribution.
    fast: bool = False

    @property
    def channels_last(self) -> bool:
        """Whether images and weights are in channels_last memory (on CUDA and on the fast path, unless
        turned off)."""
        return self.config.channels_last and (self.device.type == "cuda" or self.fast)


def check_model(name: str, role: str) -> None:
    """``ValueError`` listing the architectures when ``name`` is not one."""
    if name not in models.available():
        raise ValueError(f"unknown {role} '{name}'; choose one of: {', '.join(models.available())}")


def _check_weights(config: TrainConfig, needs_teacher: bool) -> None:
    """The teacher checkpoint and student weights: present when needed, files that exist, or torchvision's
    weights of a known architecture."""
    if not needs_teacher and (config.teacher or config.teacher_ckpt):
        raise ValueError(f"method '{config.method}' trains without a teacher; drop --teacher/--teacher-ckpt")
    if needs_teacher and not config.teacher_ckpt:
        raise ValueError(
            f"method '{config.method}' needs a teacher: pass --teacher-ckpt PATH "
            "(a model.pt from a '--method ce' run or a RepDistiller checkpoint)"
        )
    if weights.is_torchvision(config.teacher_ckpt):
        if config.teacher is None:
            choices = ", ".join(weights.TORCHVISION_WEIGHTS)
            raise ValueError(f"--teacher-ckpt {weights.TORCHVISION} needs --teacher, one of: {choices}")
        weights.torchvision_weights_name(config.teacher)
    elif config.teacher_ckpt is not None and not Path(config.teacher_ckpt).is_file():
        raise ValueError(f"teacher checkpoint '{config.teacher_ckpt}' does not exist")
    if weights.is_torchvision(config.student_weights):
        weights.torchvision_weights_name(config.student)
    elif config.student_weights is not None and not Path(config.student_weights).is_file():
        raise ValueError(f"student weights '{config.student_weights}' do not exist")


def _check_counts(config: TrainConfig) -> None:
    for name in ("epochs", "subset", "eval_subset", "val_subset", "batch_size", "eval_every"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or not 1 <= value <= MAX_COUNT):
            raise ValueError(f"{name} must be an integer >= 1 and <= {MAX_COUNT}, got {value!r}")
    if not isinstance(config.workers, int) or config.workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {config.workers!r}")
    for name in ("seed", "subset_seed"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
            raise ValueError(f"{name} must be an integer >= 0 and <= {MAX_SEED}, got {value!r}")
    if str(config.out).strip() == "":
        raise ValueError("--out is empty; name the run's output folder")


def _check_overrides(config: TrainConfig) -> None:
    """A recipe field given both by its own option and by ``--set`` is ambiguous (one would be ignored)."""
    for name in ("epochs", "batch_size"):
        if getattr(config, name) is not None and name in config.recipe_overrides:
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"--set {name}={config.recipe_overrides[name]} and {flag} {getattr(config, name)} both set "
                f"{name}; pass only one")


def _recipe(config: TrainConfig) -> Recipe:
    overrides: Mapping[str, Any] = {
        **config.recipe_overrides,
        **{k: getattr(config, k) for k in ("epochs", "batch_size") if getattr(config, k) is not None},
    }
    return get_recipe(config.recipe, config.student, **overrides)


def plan(config: TrainConfig, world_size: int | None = None) -> Plan:
    """Validate every field of ``config`` without loading data or models; errors name the bad value.

    ``world_size``: the processes the run will be split over (default: the launcher's ``WORLD_SIZE``, 1
    without one); an executor that launches the run's processes itself passes its own count."""
    method = get_method(config.method)
    method_config = make_config(config.method, config.variant)
    check_model(config.student, "student")
    if config.teacher is not None:
        check_model(config.teacher, "teacher")
    # an option a rule sets per pair (DKD's nckd_weight=mdistiller) takes the pair's value here: the run
    # trains with it and its record holds it (MethodConfig.for_pair)
    method_config = method_config.for_pair(config.teacher, config.student)
    spec = get_dataset_spec(config.dataset)
    _check_weights(config, method.needs_teacher)
    if config.bn not in distributed.BN_MODES:
        raise ValueError(f"invalid bn '{config.bn}'; choose one of: {', '.join(distributed.BN_MODES)}")
    _check_counts(config)
    _check_overrides(config)
    if config.tensorboard:
        curves.check_available()
    recipe = _recipe(config)
    spec.with_image_size(recipe.image_size)  # a fixed-size dataset refuses another image size
    if world_size is None:
        distributed.check_launcher_environment()
        world_size = distributed.env_world_size()
    distributed.per_process_batch(recipe.batch_size, world_size)
    device = distributed.process_device(distributed.resolve_device(config.device))
    if config.fast and world_size > 1:
        raise ValueError(f"the fast path (--fast) runs in one process, not {world_size}; drop --fast")
    if config.fast and not spec.device_resident:
        raise ValueError(f"the fast path keeps the whole dataset on the device, too much for '{spec.name}'")
    if config.bn == "sync" and device.type != "cuda":
        raise ValueError("bn 'sync' (SyncBatchNorm) needs CUDA; choose one of: batch, frozen")
    precision = resolve_precision(config.precision, device)
    fast = config.fast
    if fast is None:
        fast = (device.type == "cuda" or precision == "bf16") and spec.device_resident
        if fast and world_size > 1:  # the one-process default would be another configuration: say so
            raise ValueError(
                f"with {precision} on {device.type.upper()} this run takes the fast path by default, which "
                f"runs in one process, not {world_size}; pass --no-fast to split it over {world_size} "
                "processes (its batches are then the DataLoader's: another configuration)")
    return Plan(config, method_config, recipe, device, method.needs_teacher, world_size, precision, fast)
