"""CD + GKD + EDT: Channel Distillation (Zhou et al., arXiv 2006.01683).

Official code ``zhouzaida/channel-distillation@2464d30``. Per epoch ``e`` (1-indexed), with
``w = edt_weights(e, edt_dataset, edt, total_epochs)`` (:func:`kdlib.losses.functional.edt_weights`):

``L = ce_weight·w_ce·CE + kd_weight·KD_T + gkd_weight·w_gkd·L_GKD(gkd_T) + (cd_weight/6)·w_cd·L_CD``

``w_cd`` already contains the official base weight 6 (``6·0.9^k``), so ``cd_weight`` scales *relative to the
official 6*: the default ``cd_weight = 6`` gives exactly ``w_cd·L_CD`` (6·L_CD in the first epochs), and
``cd_weight = 3`` halves it. ``edt=off`` uses ``w = {ce: 1, gkd: 1, cd: 6}`` in every epoch. The ``kd`` term
(0 by default; not part of the official method) is not scheduled by EDT [assumption].

``set_epoch(e)`` (the trainer calls it before each epoch) writes ``w`` into the buffer ``edt_multipliers``,
which ``forward`` multiplies by, so a compiled CD is traced once for the whole run. For the same reason the
terms are the same in every epoch: during EDT's warm-up (``edt=code``) ``ce`` and ``gkd`` are returned as
``0·CE`` and ``0·L_GKD``, not left out. The student's classifier, which only those terms reach, then gets
zero gradients rather than none, so weight decay shrinks it during the warm-up (an optimiser skips a parameter
without a gradient) [assumption: the official code multiplies each loss by its EDT weight, 0 included].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdlib.distill import Distiller, Losses, MethodConfig, eval_features
from kdlib.losses.functional import (
    EDT_DATASETS,
    EDT_VARIANTS,
    cd_loss,
    ce_loss,
    channel_attention,
    edt_weights,
    gkd_loss,
    kd_loss,
)

#: The official CD weight, already included in ``edt_weights(...)["cd"]``.
CD_BASE_WEIGHT = 6.0
#: The terms EDT schedules, in the order of ``CD.edt_multipliers``.
EDT_TERMS = ("ce", "gkd", "cd")


def connector(in_channels: int, out_channels: int) -> nn.Sequential:
    """CD's student connector ``Conv2d 1×1 (bias=False) → BN → ReLU`` [code: ``conv1x1_bn``], default init."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


@dataclass
class CDConfig(MethodConfig):
    """CD options.

    - ``cd_weight`` 6: the official CD weight; the applied weight is ``(cd_weight/6)·edt['cd']`` (see module).
    - ``gkd_weight`` 0.1 (CIFAR; 1 on ImageNet), ``gkd_T`` 1 (GKD's temperature; ``T`` is for the kd term).
    - ``edt``: ``code`` (CE and GKD off during the warm-up, CD decays), ``paper`` (only CD decays), ``off``.
    - ``edt_dataset``: which official schedule (``cifar100`` 200 epochs, ``imagenet`` 100); its boundaries are
      scaled to ``Distiller.total_epochs`` when the trainer sets it [assumption].
    - ``teacher_bn``: ``eval`` (default, running statistics) or ``train`` (the official code's quirk: the
      teacher's BatchNorm uses batch statistics, and its running statistics update, though it gets no
      gradient and its forward still runs under ``no_grad``).
    """

    cd_weight: float = CD_BASE_WEIGHT
    gkd_weight: float = 0.1
    gkd_T: float = 1.0
    edt: str = "code"
    edt_dataset: str = "cifar100"
    teacher_bn: str = "eval"

    CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {
        "edt": (*EDT_VARIANTS, "off"),
        "edt_dataset": EDT_DATASETS,
        "teacher_bn": ("eval", "train"),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gkd_T <= 0:
            raise ValueError(f"gkd_T must be > 0, got {self.gkd_T!r}")


class CD(Distiller):
    """Channel distillation on the stage outputs ``feat[1:-1]``, with GKD and the EDT schedule.

    One connector per paired stage, even when channels match [code]. When the models have different numbers
    of stages, the last ``min(n_s, n_t)`` stages are paired [assumption: the official code only pairs
    ResNets with 4 stages each]. Spatial sizes may differ (the loss pools each map).
    """

    name = "cd"
    config_class = CDConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        shapes_s, shapes_t = self.probe()
        stages_s, stages_t = self.paired_stages(shapes_s, shapes_t)
        self.connectors = nn.ModuleList(
            connector(s[0], t[0]) for s, t in zip(stages_s, stages_t, strict=True)
        )
        #: This epoch's EDT multipliers ``(ce, gkd, cd)``, written by :meth:`set_epoch`. Not persistent (not
        #: in the state dict, so checkpoints keep their keys): a function of the epoch and the configuration.
        self.register_buffer("edt_multipliers", torch.zeros(len(EDT_TERMS)), persistent=False)
        self.set_epoch(1)

    @property
    def teacher_train_mode(self) -> bool:
        return self.config.teacher_bn == "train"

    @staticmethod
    def paired_stages(feats_s: list[Any], feats_t: list[Any]) -> tuple[list[Any], list[Any]]:
        """The last ``min(n_s, n_t)`` stage outputs of each feature list (``feat[1:-1]``)."""
        stages_s, stages_t = feats_s[1:-1], feats_t[1:-1]
        k = min(len(stages_s), len(stages_t))
        return stages_s[len(stages_s) - k :], stages_t[len(stages_t) - k :]

    def edt_weights(self, epoch: int) -> dict[str, float]:
        """EDT multipliers ``{ce, gkd, cd}`` of a 1-indexed epoch (``cd`` includes the base weight 6)."""
        cfg = self.config
        if cfg.edt == "off":
            return {"ce": 1.0, "gkd": 1.0, "cd": CD_BASE_WEIGHT}
        return edt_weights(epoch, cfg.edt_dataset, variant=cfg.edt, epochs=self.total_epochs)

    def set_epoch(self, epoch: int) -> None:
        """Write the epoch's :meth:`edt_weights` into the buffer ``edt_multipliers``, in place.

        The compiled graph reads the buffer, so it sees the new weights without being traced again.
        """
        super().set_epoch(epoch)
        w = self.edt_weights(epoch)
        with torch.no_grad():
            self.edt_multipliers.copy_(torch.tensor([w[term] for term in EDT_TERMS], dtype=torch.float32))

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Losses]:
        cfg = self.config
        logits, feats = self.student(x, with_features=True)
        logits_t, feats_t = self.teacher_forward(x)
        w_ce, w_gkd, w_cd = self.edt_multipliers.float()  # fp32 weights even in a half-precision distiller
        losses: Losses = {}
        if cfg.ce_weight:
            losses["ce"] = cfg.ce_weight * w_ce * ce_loss(logits, y)
        if cfg.kd_weight:
            losses["kd"] = cfg.kd_weight * kd_loss(logits, logits_t, cfg.T)
        if cfg.gkd_weight:
            losses["gkd"] = cfg.gkd_weight * w_gkd * gkd_loss(logits, logits_t, y, T=cfg.gkd_T)
        if cfg.cd_weight:
            connected, stages_t = self.compared_stages(feats, feats_t)
            losses["cd"] = cfg.cd_weight / CD_BASE_WEIGHT * w_cd * cd_loss(connected, stages_t)
        return logits, losses

    def compared_stages(
        self, feats_s: list[Tensor], feats_t: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """What the loss compares: the paired student stages after their connectors, and the teacher's."""
        stages_s, stages_t = self.paired_stages(feats_s, feats_t)
        return [conn(f) for conn, f in zip(self.connectors, stages_s, strict=True)], stages_t

    # --- the figure -------------------------------------------------------------------------------
    @torch.no_grad()
    def attention_data(self, x: Tensor, vanilla: nn.Module) -> list[dict[str, Any]]:
        """CD's channel attention ``w = GAP(f)`` of ``x`` (batch mean) per paired stage: teacher, distilled
        student after its connector (:meth:`compared_stages`, what the loss compares) and the ``vanilla``
        student (raw stage output). Rows of a long table: stage, model, channel rank (channels ranked by the
        teacher's attention), attention. Drawn by :func:`kdlib.plots.cd_attention`."""
        feats_t = eval_features(self.teacher, x)
        connected, stages_t = self.compared_stages(eval_features(self.student, x), feats_t)
        stages_v, _ = self.paired_stages(eval_features(vanilla, x), feats_t)
        rows = []
        for k, (f_s, f_t, f_v) in enumerate(zip(connected, stages_t, stages_v, strict=True), start=1):
            w_t = channel_attention(f_t).mean(0)
            order = torch.argsort(w_t, descending=True)
            for name, w in (("teacher", w_t), ("CD student (connector)", channel_attention(f_s).mean(0)),
                            ("vanilla student", channel_attention(f_v).mean(0))):
                if w.numel() != w_t.numel():
                    continue
                rows += [{"stage": k, "model": name, "channel rank": rank, "attention": float(w[channel])}
                         for rank, channel in enumerate(order.tolist())]
        return rows
