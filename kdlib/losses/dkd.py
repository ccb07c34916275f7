"""DKD, Decoupled Knowledge Distillation (Zhao et al., CVPR 2022): the modern logit baseline.

DKD splits Hinton's KD loss into its target-class part and its non-target part and weights them apart
[paper, eq. 1-3]: with ``b = (p_target, 1 − p_target)`` the binary probabilities of the target class and
``p̂`` the distribution over the non-target classes, both at temperature T,

``KD = TCKD + (1 − p_target^t)·NCKD``, ``TCKD = KL(b^t ‖ b^s)``, ``NCKD = KL(p̂^t ‖ p̂^s)``,

and DKD trains with ``ce_weight·CE + w(e)·(α·T²·TCKD + β·T²·NCKD)``, each KL summed over its classes and
averaged over the batch. Everything here follows mdistiller's ``mdistiller/distillers/DKD.py`` and
``mdistiller/engine/cfg.py`` [code: megvii-research/mdistiller@a08d46f]:

- **defaults** ``ce_weight`` 1, ``tckd_weight`` α = 1, ``nckd_weight`` β = 8, T = 4, ``warmup`` 20 epochs
  (``CFG.DKD``); no classical KD term (``kd_weight`` 0);
- **β per CIFAR-100 pair**: mdistiller's configs set β = 2 for resnet56 → resnet20 and resnet110 → resnet32,
  β = 6 for vgg13 → vgg8, vgg13 → MobileNetV2 and both WRN-40-2 pairs, β = 8 elsewhere
  (:data:`MDISTILLER_CIFAR100_BETA`, :func:`mdistiller_beta`). ``nckd_weight="mdistiller"`` (``--variant
  nckd_weight=mdistiller``; a study variant ``{"method": "dkd", "nckd_weight": "mdistiller"}``) names that
  rule: one variant for every pair, whose run folders and label say ``nckd_weight=mdistiller``; the run's
  plan (:func:`kdlib.config.plan`, which knows the pair) puts the pair's β in its place
  (:meth:`~kdlib.distill.MethodConfig.for_pair`), so the run trains with the number and its record holds it
  (``method_config``, ``variant`` ``nckd_weight=2.0`` or ``default``, and the ``config_id`` of that number,
  the same as ``--variant nckd_weight=2``). The rule needs ``--teacher`` and refuses ImageNet models;
  ImageNet (ResNet34 → ResNet18): ``ce_weight`` 1, β = 0.5, T = 1, ``warmup`` 1 (α stays 1), i.e.
  ``--variant nckd_weight=0.5,T=1,warmup=1``;
- **warm-up**: the DKD term is multiplied by ``w(e) = min(e / warmup, 1)`` in (1-indexed) epoch ``e``,
  the same for every step of the epoch (``min(kwargs["epoch"] / self.warmup, 1.0)``) [code]. On a schedule
  much shorter than 240 epochs a 20-epoch warm-up keeps DKD below full weight for most of the run: pass
  ``warmup`` to change it **[assumption: kdlib does not rescale it to the schedule]**;
- **the non-target distribution** is computed as mdistiller does, by subtracting 1000 from the target logit
  (divided by T) before the softmax, not by removing the class: a difference of ``exp(−1000/T)``, below
  float32's resolution;
- **TCKD** takes ``log`` of the student's binary probabilities (mdistiller's ``torch.log(pred_student)``),
  so a student certain of one side (a probability of exactly 0) makes it infinite, as in the official code.

mdistiller reports the **best** test epoch averaged over runs; RepDistiller, whose KD numbers its README
quotes, the last. kdlib records both (``top1_best``, ``top1_last``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlib.distill import Distiller, Losses, MethodConfig
from kdlib.losses.functional import float32_loss
from kdlib.models import CIFAR_CLASSES, model_spec

#: β of mdistiller's CIFAR-100 configs (``configs/cifar100/dkd/*.yaml``), by (teacher, student) in kdlib's
#: architecture names; a pair not listed uses the default 8 (``CFG.DKD.BETA``).
MDISTILLER_CIFAR100_BETA: dict[tuple[str, str], float] = {
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("vgg13", "vgg8"): 6.0,
    ("vgg13", "MobileNetV2"): 6.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
}


def mdistiller_beta(teacher: str, student: str) -> float:
    """β that mdistiller's CIFAR-100 config uses for ``teacher → student`` (8 where it sets none); a
    ``ValueError`` for an ImageNet model, whose β mdistiller's ImageNet config sets (0.5, with T = 1)."""
    imagenet = [arch for arch in (teacher, student) if model_spec(arch).num_classes != CIFAR_CLASSES]
    if imagenet:
        raise ValueError(f"mdistiller's CIFAR-100 β does not apply to the ImageNet model '{imagenet[0]}' "
                         "(mdistiller's ImageNet config: --variant nckd_weight=0.5,T=1,warmup=1)")
    return MDISTILLER_CIFAR100_BETA.get((teacher, student), 8.0)


@float32_loss
def dkd_loss(logits_s: Tensor, logits_t: Tensor, labels: Tensor, alpha: float, beta: float,
             T: float) -> tuple[Tensor, Tensor]:
    """``(α·T²·TCKD, β·T²·NCKD)`` of a batch, each KL summed over its classes and averaged over the batch
    [code: mdistiller ``dkd_loss``, which returns their sum]. Student logits first, teacher second (B×K),
    ``labels`` the B target classes."""
    if logits_s.shape != logits_t.shape:
        raise ValueError(f"logit shapes differ: {tuple(logits_s.shape)} vs {tuple(logits_t.shape)}")
    batch = logits_s.shape[0]
    target = torch.zeros_like(logits_s, dtype=torch.bool).scatter_(1, labels.reshape(-1, 1), True)
    p_s, p_t = F.softmax(logits_s / T, dim=1), F.softmax(logits_t / T, dim=1)

    def binary(p: Tensor) -> Tensor:  # (p_target, 1 − p_target) as mdistiller's cat_mask sums them
        return torch.stack([(p * target).sum(1), (p * ~target).sum(1)], dim=1)

    tckd = F.kl_div(torch.log(binary(p_s)), binary(p_t), reduction="sum") * T**2 / batch
    p_t_others = F.softmax(logits_t / T - 1000.0 * target, dim=1)
    log_p_s_others = F.log_softmax(logits_s / T - 1000.0 * target, dim=1)
    nckd = F.kl_div(log_p_s_others, p_t_others, reduction="sum") * T**2 / batch
    return alpha * tckd, beta * nckd


@dataclass
class DKDConfig(MethodConfig):
    """mdistiller's defaults (module docstring): ``ce_weight`` 1, α = ``tckd_weight`` 1, β = ``nckd_weight``
    8, T = 4, ``warmup`` 20 epochs. ``nckd_weight`` is a number, or ``"mdistiller"``: :func:`mdistiller_beta`
    of the run's pair, put in its place by :meth:`~kdlib.distill.MethodConfig.for_pair`."""

    tckd_weight: float = 1.0
    nckd_weight: float | str = 8.0
    warmup: int = 20

    RULES: ClassVar[dict[str, dict[str, Callable[[str, str], Any]]]] = {
        "nckd_weight": {"mdistiller": mdistiller_beta}}

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 1:
            raise ValueError(f"warmup must be an integer >= 1 (epochs), got {self.warmup!r}")


class DKD(Distiller):
    """``ce_weight·CE`` + the warmed-up ``tckd`` and ``nckd`` terms (:func:`dkd_loss`), named apart."""

    name = "dkd"
    config_class = DKDConfig

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        #: ``min(epoch / warmup, 1)`` of the current epoch, written by :meth:`set_epoch` (a buffer: the
        #: compiled graph reads it without being traced again). Not persistent: a function of epoch and
        #: configuration.
        self.register_buffer("warmup_factor", torch.zeros(()), persistent=False)
        self.set_epoch(1)

    def set_epoch(self, epoch: int) -> None:
        """Write ``min(epoch / warmup, 1)`` into the buffer ``warmup_factor``, in place (1-indexed epoch)."""
        super().set_epoch(epoch)
        with torch.no_grad():
            self.warmup_factor.fill_(min(epoch / self.config.warmup, 1.0))

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Losses]:
        cfg = self.config
        logits = self.student(x)
        logits_t, _ = self.teacher_forward(x)
        losses = self.task_losses(logits, logits_t, y)
        tckd, nckd = dkd_loss(logits, logits_t, y, cfg.tckd_weight, cfg.nckd_weight, cfg.T)
        factor = self.warmup_factor.float()
        if cfg.tckd_weight:
            losses["tckd"] = factor * tckd
        if cfg.nckd_weight:
            losses["nckd"] = factor * nckd
        return logits, losses
