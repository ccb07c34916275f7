"""Named recipes reproduce the papers' protocols; overrides are validated (kdlib.recipes)."""

from __future__ import annotations

import dataclasses

import pytest

from kdlib.recipes import RECIPES, available_recipes, get_recipe, recipe_fields, scale_milestones


def test_recipes_are_named_and_sourced() -> None:
    assert available_recipes() == [
        "repdistiller", "cd_cifar", "iekd_cifar", "smoke", "imagenet", "ickd_imagenet"  # test_imagenet.py
    ]
    for recipe in RECIPES.values():
        assert recipe.source, recipe.name


def test_repdistiller() -> None:
    r = get_recipe("repdistiller")
    assert (r.epochs, r.batch_size, r.lr, r.momentum, r.nesterov, r.weight_decay) == (
        240,
        64,
        0.05,
        0.9,
        False,
        5e-4,
    )
    assert (r.milestones, r.gamma, r.pad_mode, r.reported_epoch) == ((150, 180, 210), 0.1, "constant", "last")
    for student in ("MobileNetV2", "ShuffleV1", "ShuffleV2"):
        assert get_recipe("repdistiller", student).lr == 0.01
    assert get_recipe("repdistiller", "resnet8x4").lr == 0.05
    assert get_recipe("repdistiller", "ShuffleV1", lr="0.02").lr == 0.02  # an explicit lr wins


def test_cd_cifar() -> None:
    r = get_recipe("cd_cifar", "MobileNetV2")
    assert (r.epochs, r.batch_size, r.lr, r.nesterov, r.weight_decay) == (200, 128, 0.1, False, 5e-4)
    assert (r.milestones, r.gamma, r.pad_mode) == ((60, 120, 160), 0.2, "reflect")


def test_iekd_cifar_with_its_autoencoder_stage() -> None:
    r = get_recipe("iekd_cifar")
    assert (r.epochs, r.batch_size, r.lr, r.momentum, r.nesterov, r.weight_decay) == (
        160,
        128,
        0.1,
        0.9,
        True,
        5e-4,
    )
    assert (r.milestones, r.gamma, r.pad_mode, r.reported_epoch) == ((80, 120), 0.1, "reflect", "best")
    assert (r.pretrain_epochs, r.pretrain_lr, r.pretrain_nesterov, r.pretrain_weight_decay) == (
        30,
        0.1,
        True,
        5e-4,
    )


def test_smoke_is_short() -> None:
    r = get_recipe("smoke")
    assert (r.epochs, r.batch_size, r.lr, r.pretrain_epochs) == (2, 64, 0.05, 1)
    assert r.milestones == scale_milestones((150, 180, 210), 240, 2)


def test_epochs_override_scales_milestones_and_pretraining() -> None:
    assert get_recipe("repdistiller", epochs=24).milestones == (15, 18, 21)
    r = get_recipe("iekd_cifar", epochs="16")
    assert (r.epochs, r.milestones, r.pretrain_epochs) == (16, (8, 12), 3)
    assert get_recipe("iekd_cifar", epochs=1).pretrain_epochs == 1  # never scaled away
    assert get_recipe("cd_cifar", epochs=1).milestones == (1, 1, 1)  # clamped to [1, E], duplicates kept
    explicit = get_recipe("iekd_cifar", epochs=16, milestones="5,10", pretrain_epochs=2)
    assert (explicit.milestones, explicit.pretrain_epochs) == ((5, 10), 2)


def test_string_overrides_are_parsed() -> None:
    r = get_recipe(
        "repdistiller",
        lr="0.1",
        milestones="1/2",
        nesterov="true",
        small_lr="none",
        weight_decay="1e-4",
        pad_mode="reflect",
        small_lr_students="resnet8,vgg8",
    )
    assert (r.lr, r.milestones, r.nesterov, r.small_lr, r.weight_decay, r.pad_mode) == (
        0.1,
        (1, 2),
        True,
        None,
        1e-4,
        "reflect",
    )
    assert r.small_lr_students == ("resnet8", "vgg8")


def test_invalid_overrides_name_the_problem() -> None:
    with pytest.raises(
        ValueError, match="unknown recipe field 'lrr'; choose one of: name, epochs, batch_size"
    ):
        get_recipe("repdistiller", lrr="0.1")
    with pytest.raises(ValueError, match="unknown recipe 'fast'; choose one of: repdistiller"):
        get_recipe("fast")
    with pytest.raises(ValueError, match="recipe field 'lr' must be a number, got 'abc'"):
        get_recipe("repdistiller", lr="abc")
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        get_recipe("repdistiller", epochs="0")
    with pytest.raises(ValueError, match="invalid pad_mode 'wrap'"):
        get_recipe("repdistiller", pad_mode="wrap")
    with pytest.raises(ValueError, match="milestones must be increasing"):
        get_recipe("repdistiller", milestones="5,2")
    with pytest.raises(ValueError, match="nesterov needs momentum > 0"):
        get_recipe("iekd_cifar", momentum="0")
    for field, value in (("lr", "inf"), ("lr", "nan"), ("gamma", "0"), ("weight_decay", "inf")):
        with pytest.raises(ValueError, match=f"{field} must be a finite number"):
            get_recipe("repdistiller", **{field: value})


def test_recipes_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_recipe("smoke").lr = 1.0  # type: ignore[misc]
    assert "pretrain_epochs" in recipe_fields()
    assert get_recipe("smoke").as_dict()["milestones"] == list(get_recipe("smoke").milestones)
