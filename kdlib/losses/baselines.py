"""RepDistiller's feature baselines: FitNet, AT, SP, RKD, PKT.

Taps and weights as RepDistiller's ``train_student.py`` and ``scripts/run_cifar_distill.sh`` [code]:
student objective ``CE + β·L_method`` (γ = 1, α = 0). Features are taken with ``preact=False``, as
RepDistiller does for every method except AB. The math is in :mod:`kdlib.losses.functional`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from kdlib.distill import Distiller, Losses, MethodConfig, MethodOptionError
from kdlib.losses.functional import at_loss, fitnet_loss, pkt_loss, pool_to_match, rkd_loss, sp_loss


class ConvReg(nn.Module):
    """RepDistiller's ``ConvReg`` (``models/util.py``): maps the student hint to the teacher hint's shape.

    With student H ``s_H`` and teacher ``t_H`` [code]:

    - ``s_H == 2·t_H``: ``Conv2d(s_C, t_C, 3, stride 2, padding 1)``;
    - ``2·s_H == t_H``: ``ConvTranspose2d(s_C, t_C, 4, stride 2, padding 1)``;
    - ``s_H >= t_H``: ``Conv2d(s_C, t_C, kernel (1 + s_H − t_H, 1 + s_W − t_W))``;
    - otherwise RepDistiller raises; the caller passes the teacher shape pooled to the student's H×W instead.

    then ``BatchNorm2d(t_C)`` and ``ReLU`` (``use_relu=True``, as RepDistiller's FitNet). Convs keep bias
    (PyTorch default), as RepDistiller. Shapes are per sample, ``(C, H, W)``.
    """

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...], use_relu: bool = True) -> None:
        super().__init__()
        self.use_relu = use_relu
        s_c, s_h, s_w = s_shape
        t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(f"ConvReg cannot map student size {s_h} to teacher size {t_h}")
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.use_relu else x


# --------------------------------------------------------------------------------------------- FitNet
@dataclass
class FitNetConfig(MethodConfig):
    """FitNet: ``CE + β·MSE(ConvReg(f_s), f_t)`` on ``feat[hint_layer]``, β 100, hint layer 2 [code]."""

    fitnet_weight: float = 100.0
    hint_layer: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hint_layer < 0:
            raise ValueError(f"hint_layer must be an integer >= 0 (a feature map), got {self.hint_layer}")


class FitNet(Distiller):
    """FitNet hints (Romero et al. 2015) as RepDistiller trains them (one stage, no hint pre-training).

    The student hint goes through :class:`ConvReg`. Where ConvReg's cases cannot reconcile the sizes
    (student H smaller than the teacher's but not half of it), ConvReg is built for the teacher's channels at
    the student's H×W and the teacher hint is adaptive-avg-pooled to it
    (:func:`~kdlib.losses.functional.pool_to_match`)
    [assumption: the study's rule for point-wise losses across architectures]; ``self.pooled``
    records whether that happens.
    """

    name = "fitnet"
    config_class = FitNetConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        shapes_s, shapes_t = self.probe()
        layer = self.config.hint_layer
        maps = [i for i, (s, t) in enumerate(zip(shapes_s, shapes_t, strict=False)) if len(s) == len(t) == 3]
        if layer not in maps:
            raise MethodOptionError(
                f"hint_layer {layer} is not a feature map of both student and teacher; "
                f"choose one of: {', '.join(map(str, maps))}")
        s_shape, t_shape = tuple(shapes_s[layer]), tuple(shapes_t[layer])
        s_h, t_h = s_shape[1], t_shape[1]
        self.pooled = s_h < t_h and 2 * s_h != t_h
        if self.pooled:
            t_shape = (t_shape[0], *s_shape[1:])
        self.regressor = ConvReg(s_shape, t_shape)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Losses]:
        logits, feats = self.student(x, with_features=True)
        logits_t, feats_t = self.teacher_forward(x)
        losses = self.task_losses(logits, logits_t, y)
        if self.config.fitnet_weight:
            layer = self.config.hint_layer
            hint_s, hint_t = self.regressor(feats[layer]), feats_t[layer]
            if self.pooled:
                hint_s, hint_t = pool_to_match(hint_s, hint_t)
            losses["fitnet"] = self.config.fitnet_weight * fitnet_loss(hint_s, hint_t)
        return logits, losses


# --------------------------------------------------------------------------------------------- AT
@dataclass
class ATConfig(MethodConfig):
    """Attention transfer: ``CE + β·Σ_pairs L_AT`` on ``feat[1:-1]``, β 1000, p 2 [code]."""

    at_weight: float = 1000.0
    p: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.p < 1:  # p = 0 makes every attention map constant (a zero loss); p < 0 divides by zero
            raise ValueError(f"p must be an integer >= 1, got {self.p}")


class AT(Distiller):
    """Attention Transfer (Zagoruyko & Komodakis 2017) on the stage outputs ``feat[1:-1]``.

    RepDistiller zips the two lists, so when the student and teacher have different numbers of stages the
    first ``min(n_s, n_t)`` are paired and the deeper ones of the longer list are dropped [code: Python
    ``zip`` in ``Attention.forward``]; we keep that. None of RepDistiller's standard CIFAR-100 pairs has a
    mismatch (CIFAR ResNet/WRN 3 vs 3, VGG/MobileNetV2/ResNet50 4 vs 4, ShuffleNet 3 vs 3).
    """

    name = "at"
    config_class = ATConfig

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Losses]:
        logits, feats = self.student(x, with_features=True)
        logits_t, feats_t = self.teacher_forward(x)
        losses = self.task_losses(logits, logits_t, y)
        if self.config.at_weight:
            pairs = list(zip(feats[1:-1], feats_t[1:-1], strict=False))
            g_s, g_t = [s for s, _ in pairs], [t for _, t in pairs]
            losses["at"] = self.config.at_weight * at_loss(g_s, g_t, p=self.config.p)
        return logits, losses


# --------------------------------------------------------------------------------------------- SP
@dataclass
class SPConfig(MethodConfig):
    """Similarity preserving: ``CE + β·L_SP`` on ``feat[-2]``, β 3000 [code]."""

    sp_weight: float = 3000.0


class SP(Distiller):
    """Similarity-Preserving KD (Tung & Mori 2019) on the last stage's output ``feat[-2]``, as RepDistiller's
    ``train_student.py`` taps it."""

    name = "sp"
    config_class = SPConfig

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Losses]:
        logits, feats = self.student(x, with_features=True)
        logits_t, feats_t = self.teacher_forward(x)
        losses = self.task_losses(logits, logits_t, y)
        if self.config.sp_weight:
            losses["sp"] = self.config.sp_weight * sp_loss(feats[-2], feats_t[-2])
        return logits, losses


# --------------------------------------------------------------------------------------------- RKD
@dataclass
class RKDConfig(MethodConfig):
    """Relational KD: ``CE + β·(25·L_dist + 50·L_angle)`` on ``feat[-1]``, β 1 [code]."""

    rkd_weight: float = 1.0
    distance_weight: float = 25.0
    angle_weight: float = 50.0


class RKD(Distiller):
    """Relational KD (Park et al. 2019) on the pooled vectors ``feat[-1]`` (no embedding, as RepDistiller).

    Distances and angles need two images: on a batch of one (the last, partial batch of an epoch) the term
    is 0 (skipped) rather than the 0/0 = nan of normalising by a mean distance of zero [assumption]."""

    name = "rkd"
    config_class = RKDConfig

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Losses]:
        logits, feats = self.student(x, with_features=True)
        logits_t, feats_t = self.teacher_forward(x)
        losses = self.task_losses(logits, logits_t, y)
        cfg = self.config
        if cfg.rkd_weight and feats[-1].shape[0] < 2:  # a batch of one has no pairs: the term is skipped
            losses["rkd"] = feats[-1].new_zeros(())
        elif cfg.rkd_weight:
            rkd = rkd_loss(feats[-1], feats_t[-1], w_dist=cfg.distance_weight, w_angle=cfg.angle_weight)
            losses["rkd"] = cfg.rkd_weight * rkd
        return logits, losses


# --------------------------------------------------------------------------------------------- PKT
@dataclass
class PKTConfig(MethodConfig):
    """Probabilistic knowledge transfer: ``CE + β·L_PKT`` on ``feat[-1]``, β 30000 [code]."""

    pkt_weight: float = 30000.0


class PKT(Distiller):
    """Probabilistic Knowledge Transfer (Passalis & Tefas 2018) on the pooled vectors ``feat[-1]``."""

    name = "pkt"
    config_class = PKTConfig

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Losses]:
        logits, feats = self.student(x, with_features=True)
        logits_t, feats_t = self.teacher_forward(x)
        losses = self.task_losses(logits, logits_t, y)
        if self.config.pkt_weight:
            losses["pkt"] = self.config.pkt_weight * pkt_loss(feats[-1], feats_t[-1])
        return logits, losses
