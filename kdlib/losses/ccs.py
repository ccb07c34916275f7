"""CCS: Channel Correlation Structure (Li et al., KSEM 2021).

No public code; only the abstract was available, so **everything here is [assumption]**, our reading of
the abstract:
intra-instance Pearson matrices per sample and an inter-instance Pearson matrix over the batch
(:func:`~kdlib.losses.functional.ccs_intra_loss`, :func:`~kdlib.losses.functional.ccs_inter_loss`).
Objective ``ce_weight·CE + kd_weight·KD_4 + intra_weight·L_intra + inter_weight·L_inter``, defaults
β = γ = 10, α = 0 [assumption; the study sweeps β, γ in {1, 10, 50, 100} and α in {0, 1}].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from kdlib.distill import Distiller, Losses, MethodConfig, eval_features
from kdlib.losses.functional import (
    CCS_INTER_VARIANTS,
    batch_channel_pearson,
    ccs_inter_loss,
    ccs_intra_loss,
    channel_pearson,
)
from kdlib.losses.ickd import conv1x1_bn


@dataclass
class CCSConfig(MethodConfig):
    """CCS options, all [assumption].

    - ``taps``: ``last`` = the last stage's output ``feat[-2]`` (RepDistiller's tap: the map global pooling
      reads, except on WRN, MobileNetV2 and ShuffleV2, :data:`kdlib.distill.LAST_MAP_TAPS`); ``all`` = every
      stage output ``feat[1:-1]``, the per-stage losses summed (when the models have different numbers of
      stages, the last ``min(n_s, n_t)`` stages are paired).
    - ``projector``: ``auto`` = a student ``1×1 conv + BN`` (as ICKD) only where channels differ, identity
      otherwise (borrowed from ICKD's official code); ``always`` = the projector on every tap.
    - ``inter_variant``: ``channel`` (C×C Pearson over the batch) or ``sample`` (B×B similarity of the
      per-sample matrices).
    - ``eps``: guard against zero-variance (dead) channels.
    """

    intra_weight: float = 10.0
    inter_weight: float = 10.0
    inter_variant: str = "channel"
    taps: str = "last"
    projector: str = "auto"
    eps: float = 1e-6

    CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {
        "inter_variant": CCS_INTER_VARIANTS,
        "taps": ("last", "all"),
        "projector": ("auto", "always"),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")


class CCS(Distiller):
    """Channel correlation structure distillation [assumption throughout, see :class:`CCSConfig`].

    ``self.projectors[i]`` maps student tap ``i`` to the teacher's channels (``nn.Identity`` where channels
    match and ``projector=auto``); the teacher maps are used raw. Spatial sizes may differ: both terms
    compare C×C matrices (the inter term pools channels first), so no pooling is needed.
    """

    name = "ccs"
    config_class = CCSConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        shapes_s, shapes_t = self.probe()
        s_idx, t_idx = self.tap_indices(len(shapes_s), len(shapes_t))
        self.projectors = nn.ModuleList()
        for i, j in zip(s_idx, t_idx, strict=True):
            c_s, c_t = shapes_s[i][0], shapes_t[j][0]
            needed = c_s != c_t or self.config.projector == "always"
            self.projectors.append(conv1x1_bn(c_s, c_t) if needed else nn.Identity())

    def tap_indices(self, n_s: int, n_t: int) -> tuple[list[int], list[int]]:
        """Indices of the paired student and teacher features (lists of ``n_s`` / ``n_t`` entries)."""
        if self.config.taps == "last":
            return [n_s - 2], [n_t - 2]
        k = min(n_s, n_t) - 2  # stages are feat[1:-1]
        return list(range(n_s - 1 - k, n_s - 1)), list(range(n_t - 1 - k, n_t - 1))

    def compared_maps(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """What the loss compares, per tap: the projected student map and the raw teacher map."""
        s_idx, t_idx = self.tap_indices(len(feats_s), len(feats_t))
        pairs = zip(self.projectors, s_idx, t_idx, strict=True)
        return [(proj(feats_s[i]), feats_t[j]) for proj, i, j in pairs]

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Losses]:
        logits, feats = self.student(x, with_features=True)
        logits_t, feats_t = self.teacher_forward(x)
        losses = self.task_losses(logits, logits_t, y)
        cfg = self.config
        intra, inter = 0.0, 0.0
        for f_s, f_t in self.compared_maps(feats, feats_t):
            if cfg.intra_weight:
                intra = intra + ccs_intra_loss(f_s, f_t, eps=cfg.eps)
            if cfg.inter_weight:
                inter = inter + ccs_inter_loss(f_s, f_t, eps=cfg.eps, variant=cfg.inter_variant)
        if cfg.intra_weight:
            losses["intra"] = cfg.intra_weight * intra
        if cfg.inter_weight:
            losses["inter"] = cfg.inter_weight * inter
        return logits, losses

    # --- the figure -------------------------------------------------------------------------------
    @torch.no_grad()
    def correlation_data(self, x: Tensor, vanilla: nn.Module) -> dict[str, dict[str, np.ndarray]]:
        """CCS's two matrices of ``x`` at the last tap (:meth:`compared_maps`) for teacher, distilled student
        (after its projector) and the ``vanilla`` student (its last stage's output): ``intra`` = batch mean of
        the per-sample channel Pearson matrices R_b, ``inter`` = the channel Pearson matrix over the batch
        (pooled channels as observations). Drawn by :func:`kdlib.plots.ccs_matrices`."""
        eps = self.config.eps
        f_s, f_t = self.compared_maps(eval_features(self.student, x), eval_features(self.teacher, x))[-1]
        f_v = eval_features(vanilla, x)[-2]
        out: dict[str, dict[str, np.ndarray]] = {"intra": {}, "inter": {}}
        for name, f in (("teacher", f_t), ("CCS student", f_s), ("vanilla student", f_v)):
            out["intra"][name] = channel_pearson(f, eps).mean(0).numpy()
            out["inter"][name] = batch_channel_pearson(f, eps).numpy()
        return out
