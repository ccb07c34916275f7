"""Every loss term in float32 whatever the autocast state (kdlib.losses.precision.float32_loss).

For each method's loss functions: the loss and its gradient under CPU bf16 autocast equal those computed in
float32 without autocast on the same bf16-rounded features, to a relative 1e-3, on generic and on
near-collinear features (where bf16 Gram matrices were ×3–×9 off for RKD and PKT). And every method's
distiller returns float32 terms under autocast.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from kdlib.losses import functional as Fn
from kdlib.methods import METHODS, build_distiller
from kdlib.models import create_model

B, C, H = 8, 16, 4


def _maps(seed: int, collinear: bool, shape: tuple[int, ...] = (B, C, H, H)) -> torch.Tensor:
    """Features rounded to bf16 (stored in float32); near-collinear: one direction plus 1e-3 noise."""
    g = torch.Generator().manual_seed(seed)
    if collinear:
        base = torch.randn(1, *shape[1:], generator=g).abs() + 0.5
        scale = 1 + 0.01 * torch.randn(shape[0], *([1] * (len(shape) - 1)), generator=g)
        f = base * scale + 1e-3 * torch.randn(shape, generator=g)
    else:
        f = torch.randn(shape, generator=g).relu() + 0.1 * torch.randn(shape, generator=g)
    return f.bfloat16().float()


def _logits(seed: int) -> torch.Tensor:
    return (5 * torch.randn(B, 10, generator=torch.Generator().manual_seed(seed))).bfloat16().float()


LABELS = torch.arange(B) % 10
# name -> (loss of (student, teacher), input kind): "map" B×C×H×W, "vec" B×C, "logits" B×10
CASES: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str]] = {
    "ce": (lambda s, t: Fn.ce_loss(s, LABELS), "logits"),
    "kd": (lambda s, t: Fn.kd_loss(s, t, 4.0), "logits"),
    "gkd (cd)": (lambda s, t: Fn.gkd_loss(s, t, t.argmax(1)), "logits"),
    "fitnet": (Fn.fitnet_loss, "map"),
    "at": (lambda s, t: Fn.at_loss([s], [t]), "map"),
    "sp": (Fn.sp_loss, "map"),
    "rkd": (Fn.rkd_loss, "vec"),
    "pkt": (Fn.pkt_loss, "vec"),
    "ickd code": (Fn.ickd_loss, "map"),
    "ickd paper": (lambda s, t: Fn.ickd_loss(s, t, variant="paper"), "map"),
    "ickd imagenet": (lambda s, t: Fn.ickd_loss(s, t, variant="imagenet"), "map"),
    "ccs intra": (Fn.ccs_intra_loss, "map"),
    "ccs inter channel": (Fn.ccs_inter_loss, "map"),
    "ccs inter sample": (lambda s, t: Fn.ccs_inter_loss(s, t, variant="sample"), "map"),
    "cd": (lambda s, t: Fn.cd_loss([s], [t]), "map"),
    "cwt": (Fn.cwt_loss, "map"),
    "iekd factor distance": (lambda s, t: Fn.factor_distance(t, s), "map"),
    "iekd reconstruction l1": (lambda s, t: Fn.reconstruction_loss(s, t, "l1"), "map"),
    "iekd reconstruction l2": (lambda s, t: Fn.reconstruction_loss(s, t, "l2"), "map"),
}


def _inputs(kind: str, collinear: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "logits":
        return _logits(0), _logits(1)
    shape = (B, 64) if kind == "vec" else (B, C, H, H)
    return _maps(0, collinear, shape), _maps(1, collinear, shape)


def _loss_and_grad(fn: Callable, s: torch.Tensor, t: torch.Tensor, dtype: torch.dtype | None,
                   autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = s.to(dtype).detach().requires_grad_(True) if dtype else s.clone().requires_grad_(True)
    teacher = t.to(dtype) if dtype else t
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = fn(leaf, teacher)
    loss.backward()
    return loss.detach(), leaf.grad


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("collinear", [False, True], ids=["generic", "near-collinear"])
@pytest.mark.parametrize("name", list(CASES))
def test_loss_and_gradient_under_bf16_autocast_match_float32(name: str, collinear: bool) -> None:
    fn, kind = CASES[name]
    s, t = _inputs(kind, collinear)
    loss32, grad32 = _loss_and_grad(fn, s, t, None, autocast=False)
    assert loss32.dtype == torch.float32 and grad32.norm() > 0
    # float32 features under autocast (what a float32 op hands the loss): autocast must not reach inside
    loss, grad = _loss_and_grad(fn, s, t, None, autocast=True)
    assert loss.dtype == torch.float32
    assert _rel(loss, loss32) <= 1e-3 and _rel(grad, grad32) <= 1e-3
    # bf16 features (what an autocast conv hands the loss): computed in float32 on the same values; the
    # gradient reaching the bf16 features is the float32 gradient rounded to bf16
    loss, grad = _loss_and_grad(fn, s, t, torch.bfloat16, autocast=True)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert _rel(loss, loss32) <= 1e-3
    assert _rel(grad.float(), grad32.bfloat16().float()) <= 1e-3


@pytest.mark.parametrize("name", ["rkd", "pkt"])
def test_without_the_decorator_bf16_autocast_is_far_off(name: str) -> None:
    """The failure the decorator prevents (near-collinear features, the loss's own ops under autocast)."""
    fn = {"rkd": Fn.rkd_loss, "pkt": Fn.pkt_loss}[name].__wrapped__
    s, t = _inputs("vec", collinear=True)
    reference = fn(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        off = fn(s.bfloat16(), t.bfloat16())
    assert _rel(off.float(), reference) > 1e-2


def test_float64_inputs_stay_float64() -> None:
    s, t = _inputs("map", collinear=False)
    assert Fn.ickd_loss(s.double(), t.double()).dtype == torch.float64


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 100, (4,), generator=g)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_returns_float32_terms_under_bf16_autocast(method: str) -> None:
    torch.manual_seed(1)
    teacher = create_model("resnet14").eval() if method != "ce" else None
    options = {"kd_weight": 1.0} if method != "ce" else {}
    d = build_distiller(method, create_model("resnet8"), teacher, options)
    if method == "iekd":
        d.pretraining = True
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rec = d.pretrain_loss(batch()[0])
        assert rec["reconstruction"].dtype == torch.float32
        d.pretraining = False
    x, y = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = d(x, y)
    assert losses and all(v.dtype == torch.float32 for v in losses.values()), {
        k: v.dtype for k, v in losses.items()}
