"""CWT: feature distillation via channel-wise transformation (Liu, Wang, Chu; arXiv 2303.13212, ICCVW 2023).

No public code; abstract plus a secondary restatement of the equations [paper]. Student-side per-pixel MLP
``MLP(f_s) = W₂·ReLU(W₁·f_s)`` (1×1 convolutions), teacher raw, ``L_feat = Σ (MLP(f_s) − f_t)² / B``
(:func:`kdlib.losses.functional.cwt_loss`), objective ``ce_weight·CE + kd_weight·KD_T + cwt_weight·L_feat``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdlib.distill import Distiller, Losses, MethodConfig, eval_features
from kdlib.losses.functional import cwt_loss, pool_to_match


def paired_channel_pearson(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Per channel ``c``, the Pearson correlation of ``a[:, c]`` and ``b[:, c]`` over batch and positions.

    ``a`` and ``b`` are (B, C, H, W) of one shape; returns (C,). ``eps`` is added to the product of the norms.
    """
    a = a.transpose(0, 1).flatten(1)
    b = b.transpose(0, 1).flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@dataclass
class CWTConfig(MethodConfig):
    """CWT options: ``cwt_weight`` α = 5e-3 with the sum/B reduction [assumption: a third-party port's value];
    ``bn`` adds BatchNorm after ``W₁`` (an ablation [assumption])."""

    cwt_weight: float = 5e-3
    bn: bool = False


class CWT(Distiller):
    """Channel-wise transformation on the last stage's output ``feat[-2]`` (RepDistiller's tap: the map global
    pooling reads, except on WRN, MobileNetV2 and ShuffleV2, :data:`kdlib.distill.LAST_MAP_TAPS`).

    Transform ``Conv1×1(C_s→C_t) [→ BN] → ReLU → Conv1×1(C_t→C_t)``: hidden width = teacher channels
    and the last stage's output are [assumption]; both convs keep a bias (an MLP's affine layers), except
    the first when followed by BN [assumption]. When student and teacher H×W differ the transform runs at
    the student's resolution and the larger of the two maps is then adaptive-avg-pooled to the smaller
    (:func:`~kdlib.losses.functional.pool_to_match`) [assumption]; ``self.pooled`` records
    whether that happens.
    """

    name = "cwt"
    config_class = CWTConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        shapes_s, shapes_t = self.probe()
        c_s, c_t = shapes_s[-2][0], shapes_t[-2][0]
        bn = self.config.bn
        layers: list[nn.Module] = [nn.Conv2d(c_s, c_t, kernel_size=1, bias=not bn)]
        if bn:
            layers.append(nn.BatchNorm2d(c_t))
        layers += [nn.ReLU(), nn.Conv2d(c_t, c_t, kernel_size=1)]
        self.transform = nn.Sequential(*layers)
        self.pooled = tuple(shapes_s[-2][1:]) != tuple(shapes_t[-2][1:])

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Losses]:
        logits, feats = self.student(x, with_features=True)
        logits_t, feats_t = self.teacher_forward(x)
        losses = self.task_losses(logits, logits_t, y)
        if self.config.cwt_weight:
            losses["cwt"] = self.config.cwt_weight * cwt_loss(*self.compared_maps(feats, feats_t))
        return logits, losses

    def compared_maps(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> tuple[Tensor, Tensor]:
        """What the loss compares: ``MLP(f_s)`` and ``f_t`` of the last stages' outputs, pooled to one H×W."""
        return pool_to_match(self.transform(feats_s[-2]), feats_t[-2])

    # --- the figure -------------------------------------------------------------------------------
    @torch.no_grad()
    def transform_data(self, x: Tensor) -> dict[str, np.ndarray | float | None]:
        """The learned transform ``MLP(f_s) = W₂·ReLU(W₁·f_s)``: the 1×1 weights ``W1`` (C_t×C_s) and ``W2``
        (C_t×C_t); on ``x``, per teacher channel the Pearson correlation over batch and positions
        (:func:`paired_channel_pearson`) between ``MLP(f_s)`` and ``f_t`` (``corr_transformed``, what the loss
        compares, :meth:`compared_maps`) and, where channels match, between the raw ``f_s`` and ``f_t``
        (``corr_raw``, else None); ``loss`` = the unweighted ``L_feat`` on ``x``. Drawn by
        :func:`kdlib.plots.cwt_transform`."""
        convs = [m for m in self.transform if isinstance(m, nn.Conv2d)]
        feats_s, feats_t = eval_features(self.student, x), eval_features(self.teacher, x)
        mapped, f_t = self.compared_maps(feats_s, feats_t)
        f_s_raw = feats_s[-2]
        raw = None
        if f_s_raw.shape[1] == f_t.shape[1]:
            raw = paired_channel_pearson(*pool_to_match(f_s_raw, feats_t[-2])).numpy()
        return {"W1": convs[0].weight[:, :, 0, 0].numpy(), "W2": convs[1].weight[:, :, 0, 0].numpy(),
                "corr_transformed": paired_channel_pearson(mapped, f_t).numpy(), "corr_raw": raw,
                "loss": float(cwt_loss(mapped, f_t))}
