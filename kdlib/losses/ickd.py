"""ICKD: Inter-Channel Correlation distillation (Liu et al., ICCV 2021).

Official code ``ADLab-AutoDrive/ICKD@403b8d3`` (``Cifar100/distiller_zoo/ICKD.py``), built on RepDistiller.
Objective ``ce_weight·CE + kd_weight·KD_T + ickd_weight·L_ICKD`` with β = 2.5, α = 0 ("w/o KL"; α = 1 is
"with KL"), T = 4 [code: README commands]. The math is :func:`kdlib.losses.functional.ickd_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from kdlib.distill import LAST_MAP_TAPS, Distiller, Losses, MethodConfig, eval_last_map
from kdlib.losses.functional import ICKD_VARIANTS, ickd_loss, inter_channel_correlation


def conv1x1_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    """``Conv2d(in→out, 1×1, bias=False) → BatchNorm2d(out)``, no ReLU: ICKD's ``Embed`` [code]."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


@dataclass
class ICKDConfig(MethodConfig):
    """ICKD options: ``variant`` of the loss (code | paper | imagenet), ``grid`` (m, n), weight β, ``tap``.

    ``grid`` (1, 1) is the image-level loss; larger grids are the dense-prediction form [assumption].
    ``tap`` (:data:`~kdlib.distill.LAST_MAP_TAPS`): ``code`` (default) = the last map before global pooling as
    the official code's fork of RepDistiller's models returns it [code: ICKD@403b8d3 ``Cifar100/models``]:
    ``relu(bn1(block3))`` on WRN, the 1280-channel ``conv2`` output on MobileNetV2, the 1024-channel
    ``relu(bn2(conv2(...)))`` on ShuffleV2; ``repdistiller`` = RepDistiller's ``feat[-2]`` (pre-BN on WRN, 160
    and 464 channels on the other two). The two agree on every other model.
    """

    ickd_weight: float = 2.5
    variant: str = "code"
    grid: tuple[int, int] = (1, 1)
    tap: str = "code"

    CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {"variant": ICKD_VARIANTS, "tap": LAST_MAP_TAPS}

    def __post_init__(self) -> None:
        super().__post_init__()
        self.grid = tuple(self.grid)
        if len(self.grid) != 2 or not all(isinstance(g, int) and g >= 1 for g in self.grid):
            raise ValueError(f"grid must be two integers >= 1 (e.g. 2x2), got {self.grid!r}")


class ICKD(Distiller):
    """ICKD on the last map before global pooling (``tap``, :class:`ICKDConfig`).

    Student embedding ``Conv2d(C_s→C_t, 1×1, bias=False) → BatchNorm2d(C_t)`` (built even when C_s = C_t);
    the teacher map is used raw [code]. The official code also builds an unused teacher embedding; it is
    left out, so random-number replay is not bit-exact with the official run.
    """

    name = "ickd"
    config_class = ICKDConfig
    #: Processes the global batch is split over (set by the trainer). The ``imagenet`` variant divides by the
    #: squared batch size; each process divides its share by ``world_size`` once more, so that the averaged
    #: gradient is that of the global batch B (``Σ / (C·B²)``) whatever the process count [assumption: the
    #: ImageNet fork's own process layout is unknown].
    world_size: int = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        shape_s, shape_t = self.probe_last_map(self.config.tap)
        self.embed = conv1x1_bn(shape_s[0], shape_t[0])

    def compared_maps(self, f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
        """What the loss compares: the embedded student map ``e(f_s)`` and the teacher map ``f_t``."""
        return self.embed(f_s), f_t

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Losses]:
        cfg = self.config
        logits, f_s, logits_t, f_t = self.last_maps(x, cfg.tap)
        losses = self.task_losses(logits, logits_t, y)
        if cfg.ickd_weight:
            loss = ickd_loss(*self.compared_maps(f_s, f_t), variant=cfg.variant, grid=cfg.grid)
            if cfg.variant == "imagenet" and self.world_size > 1:
                loss = loss / self.world_size
            losses["ickd"] = cfg.ickd_weight * loss
        return logits, losses

    # --- the figure -------------------------------------------------------------------------------
    @torch.no_grad()
    def correlation_data(
        self, x: Tensor, vanilla: nn.Module, normalize: bool = True
    ) -> dict[str, np.ndarray]:
        """Batch-mean inter-channel correlation ``Ĝ``
        (:func:`~kdlib.losses.functional.inter_channel_correlation`, rows L2-normalised as in the ``code``
        variant) of the last map before pooling of ``x`` (``tap``): teacher ``f_t``,
        distilled student after its embedding ``e(f_s)`` (:meth:`compared_maps`, what the loss compares), and
        the ``vanilla`` student's own ``f_s``. Drawn by :func:`kdlib.plots.ickd_correlations`."""
        tap = self.config.tap
        f_s = eval_last_map(self.student, x, tap)
        f_s, f_t = self.compared_maps(f_s, eval_last_map(self.teacher, x, tap))
        f_v = eval_last_map(vanilla, x, tap)
        return {name: inter_channel_correlation(f, normalize).mean(0).numpy()
                for name, f in (("teacher", f_t), ("ICKD student e(f_s)", f_s), ("vanilla student", f_v))}
