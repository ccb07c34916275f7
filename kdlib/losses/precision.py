"""Losses in full precision whatever the autocast state: the :func:`float32_loss` decorator.

Under ``torch.autocast`` a loss would otherwise run its matrix products in bf16 or fp16 and take
half-precision features as they come; RKD's and PKT's Gram matrices of near-collinear features were ×3–×9
off under bf16. Every loss of :mod:`kdlib.losses.functional` is decorated, so each term of every method is a
float32 function of float32-cast features (tests/test_precision.py).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)


def _to_float32(value: Any) -> Any:
    """``value`` with its half-precision tensors (also inside lists and tuples) cast to float32."""
    if isinstance(value, Tensor):
        return value.float() if value.dtype in _HALF else value
    if isinstance(value, list | tuple):
        return type(value)(_to_float32(v) for v in value)
    return value


def _autocast_off(device: str) -> contextlib.AbstractContextManager[Any]:
    """A context that turns ``device``'s autocast off where it is on (and nothing where it is off, so that
    no CUDA context is asked for on a machine without a GPU)."""
    if torch.is_autocast_enabled(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


def float32_loss(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Decorator: run the loss ``fn`` with autocast off (CPU and CUDA) on float32 copies of half-precision
    tensor arguments (float64 stays float64). The cast is differentiable: gradients reach bf16 features."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = _to_float32(args), {k: _to_float32(v) for k, v in kwargs.items()}
        with _autocast_off("cpu"), _autocast_off("cuda"):
            return fn(*args, **kwargs)

    return wrapper
