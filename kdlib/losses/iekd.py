"""IE-KD: Inheritance and Exploration knowledge distillation (Huang et al., CVPR 2021, arXiv 2107.00181).

Official code ``aliyun/Revisiting-Knowledge-Distillation-an-Inheritance-and-Exploration-Framework@3274ab0``
(it does not run as released, and its ``teacher``/``student`` names are swapped; below T is the frozen teacher
and S the student). Two stages (CVPR 2021 paper and official code):

- **Stage A**: an auto-encoder ``D(E(f_t))`` on the frozen teacher's last map before pooling, reconstruction
  loss mean ``|f_t − D(E(f_t))|`` [code] (``rec=l2``: mean squared error, the paper's form).
- **Stage B**: S's last map before pooling is split 50/50 on channels into an inheritance and an exploration
  part, each encoded by a fresh ``Coder(C/2, 32)`` trained with S; with ``F_T = E(f_t)`` (auto-encoder frozen,
  eval, ``no_grad``)::

      L = L_goal + inh_weight·d(F_T, F_inh) − exp_weight·d(F_T, F_exp)

  ``d`` = :func:`kdlib.losses.functional.factor_distance`; the exploration term is *negative* (the student is
  pushed away from the teacher's factor on that half) [code: ``NormLoss(negative=True)``].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlib.distill import LAST_MAP_TAPS, Distiller, Losses, MethodConfig, eval_last_map
from kdlib.losses.functional import factor_distance, pool_to_match, reconstruction_loss

#: α of the "IE + KD" goal, ``(1−α)·CE + α·KD_4`` [code: CIFAR-100 configs].
KD_GOAL_ALPHA = 0.9


class Coder(nn.Sequential):
    """IE-KD's encoder/decoder block [code]::

        LeakyReLU(0.1) → [Conv3×3(cin→cin) BN LReLU]
                       → [Conv3×3(cin→cout) BN LReLU] → [Conv3×3(cout→cout) BN LReLU]

    Bias-free 3×3 convs (stride 1, padding 1, so H×W is kept) initialised ``N(0, sqrt(2/(9·out)))``
    (He normal, fan-out), BatchNorm weight 1 / bias 0, LeakyReLU slope 0.1, nothing in place (the input is
    the student's or teacher's feature map, which must not be modified).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        layers: list[nn.Module] = [nn.LeakyReLU(0.1)]
        for cin, cout in (
            (in_channels, in_channels),
            (in_channels, out_channels),
            (out_channels, out_channels),
        ):
            conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False)
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (9 * cout)))
            bn = nn.BatchNorm2d(cout)
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)
            layers += [conv, bn, nn.LeakyReLU(0.1)]
        super().__init__(*layers)


class AutoEncoder(nn.Module):
    """Stage A's auto-encoder on the teacher map: ``encoder = Coder(C_t, k)``, ``decoder = Coder(k, C_t)``."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        self.encoder = Coder(channels, factor_channels)
        self.decoder = Coder(factor_channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


@dataclass
class IEKDConfig(MethodConfig):
    """IE-KD options.

    - ``inh_weight`` / ``exp_weight`` 1: λ of every configuration of the official code [code]; 50, which the
      paper's ablation reportedly picks [paper, second-hand], is a variant (``inh_weight=50,exp_weight=50``).
    - ``goal``: ``ce`` (default) or ``kd`` = "IE + KD", ``(1−α)·CE + α·KD_T`` with α = 0.9, T = 4 [code].
      With ``goal=kd``, ``__post_init__`` sets ``ce_weight`` to 0.1 if it is at its default 1 and
      ``kd_weight`` to 0.9 if it is at its default 0; other values are kept (so ``ce_weight=1`` cannot be
      combined with ``goal=kd``; use ``goal=ce, kd_weight=...`` for arbitrary weights).
    - ``rec``: stage A's reconstruction, ``l1`` (mean absolute error) [code] or ``l2`` (mean squared) [paper].
    - ``split``: ``natural`` = first half of the channels inherits, second half explores [code]; ``random`` =
      a fixed permutation drawn from ``torch.Generator().manual_seed(split_seed)`` [paper: channels picked at
      random; the seeded fixed permutation is our assumption].
    - ``factor_channels`` 32: channels of every factor [code].
    - ``tap`` (:data:`~kdlib.distill.LAST_MAP_TAPS`): ``code`` (default) = the last map before global pooling,
      post-BN-ReLU on WRN as IE-KD's own ``model/wide_resnet.py`` returns it [code] (on MobileNetV2 and
      ShuffleV2, which IE-KD's code does not have, the same rule [assumption]); ``repdistiller`` =
      RepDistiller's ``feat[-2]`` (pre-BN on WRN). The two agree on every other model.
    """

    inh_weight: float = 1.0
    exp_weight: float = 1.0
    goal: str = "ce"
    rec: str = "l1"
    split: str = "natural"
    split_seed: int = 0
    factor_channels: int = 32
    tap: str = "code"

    CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {
        "tap": LAST_MAP_TAPS,
        "goal": ("ce", "kd"),
        "rec": ("l1", "l2"),
        "split": ("natural", "random"),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.goal == "kd":  # a weight still at its default (ce 1, kd 0) takes the "IE + KD" value
            if self.ce_weight == 1.0:
                self.ce_weight = 1.0 - KD_GOAL_ALPHA
            if self.kd_weight == 0.0:
                self.kd_weight = KD_GOAL_ALPHA
        if self.factor_channels < 1:
            raise ValueError(f"factor_channels must be >= 1, got {self.factor_channels!r}")


class IEKD(Distiller):
    """Inheritance and exploration on the last map before global pooling (``tap``, :class:`IEKDConfig`).

    Parts: ``autoencoder`` (stage A, on the teacher; frozen in stage B), ``inherit_encoder`` and
    ``explore_encoder`` (stage B, trained with the student), buffer ``split_index`` (the channel order: the
    first ``C_s//2`` entries inherit, the rest explore; odd ``C_s`` gives the extra channel to exploration
    [assumption]). It is a buffer so that it is saved in checkpoints.

    How a trainer runs the two stages::

        distiller.pretraining = True            # auto-encoder in train mode (when distiller.train())
        distiller.train()
        opt = SGD(distiller.pretrain_parameters(), ...)   # the auto-encoder only
        for x, _ in loader:                     # 30 epochs on CIFAR [code]
            loss = sum(distiller.pretrain_loss(x).values())  # {"reconstruction": ...}
            opt.zero_grad(); loss.backward(); opt.step()
        distiller.pretraining = False           # auto-encoder back to eval mode, frozen
        opt = SGD(distiller.trainable_parameters(), ...)  # student + the two encoders, not the auto-encoder
        for epoch in range(1, epochs + 1):      # stage B
            distiller.set_epoch(epoch)
            for x, y in loader:
                logits, losses = distiller(x, y)     # then sum, backward, step as in stage A

    Setting ``pretraining`` re-applies the current train/eval mode, so the auto-encoder is in train mode only
    while ``pretraining`` is True and the distiller is training; ``train()``/``eval()`` keep it that way.
    Factor H×W equals the tapped map's (stride-1 coders); where student and teacher H×W differ the factors are
    pooled to the smaller with :func:`~kdlib.losses.functional.pool_to_match` [assumption].
    """

    name = "iekd"
    config_class = IEKDConfig
    has_pretrain = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pretraining = False
        shape_s, shape_t = self.probe_last_map(self.config.tap)
        c_s, c_t = shape_s[0], shape_t[0]
        k = self.config.factor_channels
        self.autoencoder = AutoEncoder(c_t, k)
        if self.config.split == "random":
            generator = torch.Generator().manual_seed(self.config.split_seed)
            index = torch.randperm(c_s, generator=generator)
        else:
            index = torch.arange(c_s)
        self.register_buffer("split_index", index)
        self.n_inherit = c_s // 2
        self.inherit_encoder = Coder(self.n_inherit, k)
        self.explore_encoder = Coder(c_s - self.n_inherit, k)
        self.train(self.training)

    # --- stage switching --------------------------------------------------------------------------
    @property
    def pretraining(self) -> bool:
        """True in stage A (the auto-encoder trains); False in stage B (it is frozen, in eval mode)."""
        return self._pretraining

    @pretraining.setter
    def pretraining(self, value: bool) -> None:
        self._pretraining = bool(value)
        self.train(self.training)

    def train(self, mode: bool = True) -> IEKD:
        super().train(mode)
        if hasattr(self, "autoencoder"):  # not yet built when the base __init__ calls train()
            self.autoencoder.train(mode and self._pretraining)
        return self

    # --- parameters -------------------------------------------------------------------------------
    def pretrain_parameters(self) -> list[nn.Parameter]:
        return list(self.autoencoder.parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        frozen = {id(p) for p in self.autoencoder.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in frozen]

    # --- stage A ----------------------------------------------------------------------------------
    def pretrain_loss(self, x: Tensor) -> Losses:
        _, f_t = self.teacher_last_map(x, self.config.tap)
        return {"reconstruction": reconstruction_loss(self.autoencoder(f_t), f_t, self.config.rec)}

    # --- stage B ----------------------------------------------------------------------------------
    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Losses]:
        cfg = self.config
        logits, f_s, logits_t, f_t = self.last_maps(x, cfg.tap)
        losses = self.task_losses(logits, logits_t, y)
        if not (cfg.inh_weight or cfg.exp_weight):
            return logits, losses
        with torch.no_grad():
            factor_t = self.teacher_factor(f_t)
        weights = {"inherit": cfg.inh_weight, "explore": -cfg.exp_weight}
        for name, (encoder, part) in self.student_parts(f_s).items():
            if weights[name]:
                factor_s, factor_tt = pool_to_match(encoder(part), factor_t)
                losses[name] = weights[name] * factor_distance(factor_tt, factor_s)
        return logits, losses

    def teacher_factor(self, f_t: Tensor) -> Tensor:
        """The teacher factor ``F_T = E(f_t)`` of the teacher's last map ``f_t`` (by the auto-encoder)."""
        return self.autoencoder.encoder(f_t)

    def student_parts(self, f_s: Tensor) -> dict[str, tuple[nn.Module, Tensor]]:
        """The student's last map ``f_s`` split on channels (``split_index``), each part with its encoder:
        ``{"inherit": (inherit_encoder, the first n_inherit channels),
        "explore": (explore_encoder, the rest)}``."""
        f_s = f_s.index_select(1, self.split_index)
        return {"inherit": (self.inherit_encoder, f_s[:, : self.n_inherit]),
                "explore": (self.explore_encoder, f_s[:, self.n_inherit :])}

    # --- the figure -------------------------------------------------------------------------------
    @torch.no_grad()
    def similarity_data(self, x: Tensor) -> list[dict[str, Any]]:
        """Per sample of ``x``, the cosine similarity of the student's inheritance and exploration factors
        (:meth:`student_parts`, encoded) to the teacher factor ``F_T`` (:meth:`teacher_factor`), flattened,
        and the batch's factor distance ``d`` (:func:`~kdlib.losses.functional.factor_distance`, what the loss
        uses). Rows of a long table: part, sample, cosine, distance. Drawn by
        :func:`kdlib.plots.iekd_similarity`."""
        tap = self.config.tap
        factor_t = self.teacher_factor(eval_last_map(self.teacher, x, tap))
        names = {"inherit": "inheritance", "explore": "exploration"}
        rows = []
        for name, (encoder, part) in self.student_parts(eval_last_map(self.student, x, tap)).items():
            factor_s, factor_tt = pool_to_match(encoder(part), factor_t)
            cosine = F.cosine_similarity(factor_s.flatten(1), factor_tt.flatten(1), dim=1)
            distance = float(factor_distance(factor_tt, factor_s))
            rows += [{"part": names[name], "sample": i, "cosine": float(c), "distance": distance}
                     for i, c in enumerate(cosine)]
        return rows
