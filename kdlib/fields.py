"""Typed values for configuration fields, from command-line strings (``--variant k=v``, ``--set k=v``).

One parser serves method configurations (:func:`kdlib.methods.make_config`) and recipes
(:func:`kdlib.recipes.get_recipe`), so both accept the same spellings:

- ``bool``: true/false, 1/0, yes/no; ``int`` and ``float`` as Python writes them (an ``int`` given to a
  ``float`` field becomes a float, so ``1`` and ``1.0`` make one configuration and one ``config_id``);
- ``X | None``: ``none`` or an empty string for None;
- ``float | str``: a number where the text reads as one, else the text (a name, which the configuration
  checks: DKD's ``nckd_weight=mdistiller``, the ``RULES`` of :class:`kdlib.distill.MethodConfig`);
- tuples of ints: separated by ``,``, ``/`` or ``x`` (``150,180,210``; a grid ``2x2``);
- tuples of strings: separated by ``,``.

:func:`check_field` also checks the type of a value given as it is (a notebook's or profile's JSON): ``lr``
must be a number, not ``"abc"``, ``true`` or ``[1]``.

:func:`format_field` writes a value the way :func:`parse_field` reads it back (the study launches runs as
``python -m kdlib train`` subprocesses through :func:`kdlib.config.to_argv`).
"""

from __future__ import annotations

import re
import typing
from typing import Any


def parse_field(raw: Any, kind: Any, what: str) -> Any:
    """``raw`` converted to the field type ``kind``; ``what`` names the field in the error message."""
    if typing.get_origin(kind) in (typing.Union, type(int | None)) and type(None) in typing.get_args(kind):
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("none", "")):
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if typing.get_origin(kind) in (typing.Union, type(int | None)) and str in typing.get_args(kind):
        number = next(k for k in typing.get_args(kind) if k is not str)
        try:
            return parse_field(raw, number, what)
        except ValueError:
            return raw.strip() if isinstance(raw, str) else raw
    if not isinstance(raw, str):
        if typing.get_origin(kind) is tuple:
            return tuple(raw)
        return float(raw) if kind is float and isinstance(raw, int) and not isinstance(raw, bool) else raw
    text = raw.strip()
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            if item is str:
                return tuple(v.strip() for v in text.split(",") if v.strip())
            return tuple(item(v) for v in re.split(r"[,/x]", text.lower()) if v.strip())
    except ValueError:
        raise ValueError(f"invalid value {raw!r} for {what}") from None
    return text


_INVALID = object()  # what check_field's parse gave for a value it could not read
#: How each scalar type of a field is named in errors: alone, and as the items of a list.
_TYPE_WORDS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"),
               float: ("a number", "numbers"), str: ("a string", "strings")}


def _field_type(kind: Any) -> tuple[Any, bool, bool]:
    """A field type as (scalar type, is a tuple of it, may be None)."""
    args = typing.get_args(kind)
    optional = type(None) in args
    if optional:
        kind = next(a for a in args if a is not type(None))
    if typing.get_origin(kind) is tuple:
        return typing.get_args(kind)[0], True, optional
    return kind, False, optional


def _is_scalar(value: Any, scalar: type) -> bool:
    if scalar in (int, float):  # a bool is no number here; an int is a float (1 for 1.0)
        return isinstance(value, int | float if scalar is float else int) and not isinstance(value, bool)
    return isinstance(value, scalar)


def check_field(raw: Any, kind: Any, what: str) -> Any:
    """:func:`parse_field`, then the value's type checked against ``kind``: ``ValueError`` naming ``what``,
    the type and the value otherwise (``lr must be a number, got 'abc'``)."""
    scalar, is_tuple, optional = _field_type(kind)
    try:
        value = parse_field(raw, kind, what)
    except (TypeError, ValueError):  # e.g. 'abc' for a number, 5 for a list
        value = _INVALID
    if value is None:
        fits = optional
    elif is_tuple:
        fits = isinstance(value, tuple) and all(_is_scalar(v, scalar) for v in value)
    else:
        fits = _is_scalar(value, scalar)
    if fits:
        return value
    words = f"a list of {_TYPE_WORDS[scalar][1]}" if is_tuple else _TYPE_WORDS[scalar][0]
    raise ValueError(f"{what} must be {words}{' or null' * optional}, got {raw!r}")


def format_field(value: Any) -> str:
    """``value`` as a command-line string that :func:`parse_field` reads back to the same value: ``none``
    for None, ``true``/``false``, tuples of ints joined by ``x`` (safe inside ``--variant a=1,b=2``), other
    tuples by ``,``; numbers as Python writes them (``repr`` of a float round-trips exactly)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        return ("x" if ints else ",").join(map(str, value))
    return str(value)
