"""The study's methods, written out as one table (mdistiller's ``distiller_dict``), and building one by name.

:data:`METHODS` maps each method's name to its distiller class, in the order of the study's tables: the
baselines (``ce``, ``kd``, the modern logit baseline ``dkd``, RepDistiller's feature baselines), then the
papers' channel methods (:data:`CHANNEL_METHODS`). Every name the package, the command line, the study and
the book accept comes from here. Adding a method: its module under ``kdlib/losses/``, and its row below.

Imports go one way: this module imports the method modules, which import :mod:`kdlib.distill` (the base
classes); neither imports this one.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from torch import nn

from kdlib.distill import Distiller, MethodConfig
from kdlib.fields import parse_field
from kdlib.losses import baselines, ccs, cd, cwt, dkd, ickd, iekd, kd

#: Distiller classes by method name, in the order of the study's tables.
METHODS: dict[str, type[Distiller]] = {
    "ce": kd.CE,
    "kd": kd.KD,
    "dkd": dkd.DKD,
    "fitnet": baselines.FitNet,
    "at": baselines.AT,
    "sp": baselines.SP,
    "rkd": baselines.RKD,
    "pkt": baselines.PKT,
    "ickd": ickd.ICKD,
    "ccs": ccs.CCS,
    "cd": cd.CD,
    "cwt": cwt.CWT,
    "iekd": iekd.IEKD,
}

#: The papers' channel methods, the subject of the study (each has its notebook and its chapter); the other
#: methods of :data:`METHODS` are the baselines they are compared with.
CHANNEL_METHODS: tuple[str, ...] = ("ickd", "ccs", "cd", "cwt", "iekd")

#: The methods of :data:`METHODS` that are not channel methods (the baselines), in table order.
BASELINES: tuple[str, ...] = tuple(name for name in METHODS if name not in CHANNEL_METHODS)


def available_methods() -> list[str]:
    """Method names, in the order of the study's tables."""
    return list(METHODS)


def get_method(name: str) -> type[Distiller]:
    """The distiller class of method ``name``; an unknown name raises an error listing them all."""
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def make_config(method: str, overrides: Mapping[str, Any] | None = None) -> MethodConfig:
    """The method's configuration with ``overrides`` applied (strings are converted to the field type).

    An unknown field raises an error listing the method's fields; an invalid value, one naming it.
    """
    config_class = get_method(method).config_class
    hints = typing.get_type_hints(config_class)
    names = [f.name for f in dataclasses.fields(config_class)]
    values = {}
    for key, raw in (overrides or {}).items():
        if key not in names:
            choices = ", ".join(names)
            raise ValueError(f"unknown option '{key}' for method '{method}'; choose one of: {choices}")
        values[key] = parse_field(raw, hints[key], key)
    return config_class(**values)


def variant_string(config: MethodConfig) -> str:
    """Canonical ``k=v,...`` of the options that differ from the defaults (``default`` when none)."""
    default = type(config)()
    changed = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value != getattr(default, field.name):
            text = "x".join(map(str, value)) if isinstance(value, tuple) else str(value)
            changed.append(f"{field.name}={text}")
    return ",".join(sorted(changed)) or "default"


def options_in_words(variant: str) -> str:
    """A :func:`variant_string` as readers read it: ``cd_weight 24, gkd_weight 0`` for
    ``cd_weight=24.0,gkd_weight=0.0`` (numbers without trailing zeros)."""
    def number(value: str) -> str:
        try:
            return f"{float(value):g}"
        except ValueError:
            return value

    return ", ".join(f"{k} {number(v)}" for k, v in (part.split("=", 1) for part in variant.split(",")))


def build_distiller(
    method: str,
    student: nn.Module,
    teacher: nn.Module | None = None,
    config: MethodConfig | Mapping[str, Any] | None = None,
    input_shape: tuple[int, int, int] = (3, 32, 32),
) -> Distiller:
    """Make the distiller for ``method``; ``config`` is a config object or a mapping of overrides."""
    cls = get_method(method)
    if not isinstance(config, MethodConfig):
        config = make_config(method, config)
    return cls(student, teacher, config, input_shape=input_shape)
