"""TrainConfig ↔ command line: one mapping (kdlib.config), read both ways, with every field round-tripping."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from kdlib import config as kconfig
from kdlib.cli import build_parser
from kdlib.config import TrainConfig, from_args, to_argv
from kdlib.methods import make_config
from kdlib.recipes import get_recipe

#: A value other than the default for every field (the test fails when a field is added without one here).
EVERY_FIELD_SET = {
    "method": "ickd",
    "student": "resnet8",
    "dataset": "fashion_mnist",
    "out": "runs/x",
    "teacher": "resnet32",
    "teacher_ckpt": "data/teachers/t.pt",
    "recipe": "smoke",
    "epochs": 3,
    "subset": 100,
    "eval_subset": 50,
    "val_subset": 200,
    "eval_every": 2,
    "subset_seed": 3,
    "batch_size": 32,
    "seed": 7,
    "device": "cpu",
    "variant": {"ickd_weight": 5.0, "grid": (2, 2), "variant": "paper", "kd_weight": 0.0},
    "recipe_overrides": {"lr": 0.1, "milestones": (1, 2), "small_lr_students": ("resnet8", "wrn_16_2")},
    "data_root": "data/raw",
    "resume": True,
    "workers": 0,
    "precision": "bf16",
    "channels_last": False,
    "compile": False,
    "fast": True,
    "progress": False,
    "download": False,
    "student_weights": "torchvision",
    "bn": "frozen",
    "tensorboard": True,
}


def _parse(argv: list[str]) -> TrainConfig:
    return from_args(build_parser().parse_args(["train", *argv]))


def test_every_field_has_a_value_here() -> None:
    assert set(EVERY_FIELD_SET) == {f.name for f in dataclasses.fields(TrainConfig)}
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING and f.default_factory is not \
            dataclasses.MISSING else f.default
        assert EVERY_FIELD_SET[f.name] != default, f.name


def test_every_field_round_trips_through_the_command_line() -> None:
    config = TrainConfig(**EVERY_FIELD_SET)
    back = _parse(to_argv(config))
    for f in dataclasses.fields(TrainConfig):
        if typing.get_origin(typing.get_type_hints(TrainConfig)[f.name]) is dict:
            continue
        assert getattr(back, f.name) == getattr(config, f.name), f.name
    # option values come back as text; typed by the method's and the recipe's fields, they are the same
    assert make_config("ickd", back.variant) == make_config("ickd", config.variant)
    assert get_recipe("smoke", "resnet8", **back.recipe_overrides) == get_recipe(
        "smoke", "resnet8", **config.recipe_overrides)
    assert to_argv(back) == to_argv(config)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(TrainConfig)])
def test_each_field_alone_round_trips(field: str) -> None:
    """A configuration differing from the defaults in one field keeps exactly that field."""
    required = {k: EVERY_FIELD_SET[k] for k in ("method", "student", "dataset", "out")}
    config = TrainConfig(**{**required, field: EVERY_FIELD_SET[field]})
    assert to_argv(_parse(to_argv(config))) == to_argv(config)
    back = _parse(to_argv(config))
    if field not in ("variant", "recipe_overrides"):
        assert dataclasses.replace(back, **{field: getattr(config, field)}) == config
        assert getattr(back, field) == getattr(config, field)


def test_defaults_are_the_dataclass_defaults() -> None:
    required = ["--method", "kd", "--student", "resnet8", "--dataset", "cifar100", "--out", "o"]
    assert _parse(required) == TrainConfig("kd", "resnet8", "cifar100", "o")
    assert to_argv(TrainConfig("kd", "resnet8", "cifar100", "o")) == required


def test_options_keep_their_spellings() -> None:
    """The options documented in the README and used by earlier commands."""
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag in ("--teacher-ckpt", "--eval-subset", "--batch-size", "--variant", "--set", "--precision",
                 "--no-channels-last", "--compile", "--no-compile", "--fast", "--no-fast", "--no-progress",
                 "--no-download", "--student-weights", "--bn", "--resume", "--data-root"):
        assert flag in help_text, flag


def test_assignments_reject_a_part_without_equals() -> None:
    with pytest.raises(ValueError, match="invalid --variant 'T'; expected key=value"):
        kconfig.parse_assignments(["T"], "--variant")
    assert kconfig.parse_assignments(["a=1,b=2", "c=3"], "--variant") == {"a": "1", "b": "2", "c": "3"}
    assert kconfig.parse_assignments(["milestones=1,2"], "--set", None) == {"milestones": "1,2"}


def test_paths_stay_paths_or_text() -> None:
    config = TrainConfig("kd", "resnet8", "cifar100", Path("runs") / "a b", teacher_ckpt=Path("t.pt"))
    back = _parse(to_argv(config))
    assert Path(back.out) == config.out and Path(back.teacher_ckpt) == config.teacher_ckpt
