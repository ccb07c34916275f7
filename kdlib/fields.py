"""Typed values for configuration fields, from command-line strings (``--variant k=v``, ``--set k=v``).

One parser serves method configurations (:func:`kdlib.methods.make_config`) and recipes
(:func:`kdlib.recipes.get_recipe`), so both accept the same spellings:

- ``bool``: true/false, 1/0, yes/no; ``int`` and ``float`` as Python writes them (an ``int`` given to a
  ``float`` field becomes a float, so ``1`` and ``1.0`` make one configuration and one ``config_id``);
- ``X | None``: ``none`` or an empty string for None;
- tuples of ints: separated by ``,``, ``/`` or ``x`` (``150,180,210``; a grid ``2x2``);
- tuples of strings: separated by ``,``.

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
