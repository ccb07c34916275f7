"""CWT: feature distillation via channel-wise transformation (Liu, Wang, Chu; arXiv 2303.13212, ICCVW 2023).

No public code; abstract plus a secondary restatement of the equations [paper]. Student-side per-pixel MLP
``MLP(f_s) = W₂·ReLU(W₁·f_s)`` (1×1 convolutions), teacher raw, ``L_feat = Σ (MLP(f_s) − f_t)² / B``
(:func:`kdlib.losses.functional.cwt_loss`), objective ``ce_weight·CE + kd_weight·KD_T + cwt_weight·L_feat``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from kdlib.distill import Distiller, Losses, MethodConfig
from kdlib.losses.functional import cwt_loss, pool_to_match


@dataclass
class CWTConfig(MethodConfig):
    """CWT options: ``cwt_weight`` α = 5e-3 with the sum/B reduction [assumption: a third-party port's value];
    ``bn`` adds BatchNorm after ``W₁`` (an ablation [assumption])."""

    cwt_weight: float = 5e-3
    bn: bool = False


class CWT(Distiller):
    """Channel-wise transformation on the last pre-pool map ``feat[-2]``.

    Transform ``Conv1×1(C_s→C_t) [→ BN] → ReLU → Conv1×1(C_t→C_t)``: hidden width = teacher channels
    and the last pre-pool stage are [assumption]; both convs keep a bias (an MLP's affine layers), except
    the first when followed by BN [assumption]. When student and teacher H×W differ the transform runs at
    the student's resolution and the larger of the two maps is then adaptive-avg-pooled to the smaller
    (:func:`~kdlib.losses.functional.pool_to_match`) [assumption, methods.md §6]; ``self.pooled`` records
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
            f_s, f_t = pool_to_match(self.transform(feats[-2]), feats_t[-2])
            losses["cwt"] = self.config.cwt_weight * cwt_loss(f_s, f_t)
        return logits, losses
