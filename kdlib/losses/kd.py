"""The two objectives every study needs: plain cross-entropy (``ce``) and Hinton's KD (``kd``).

``ce`` trains a model alone (this is how teachers are trained); ``kd`` is RepDistiller's KD baseline:
``0.1·CE + 0.9·KD_4`` [code: RepDistiller ``scripts/run_cifar_distill.sh``, ``-r 0.1 -a 0.9 -b 0``].
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdlib.distill import Distiller, Losses, MethodConfig


@dataclass
class CEConfig(MethodConfig):
    """Cross-entropy only (``kd_weight`` must stay 0: there is no teacher)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kd_weight:
            raise ValueError("method 'ce' has no teacher, so kd_weight must be 0")


class CE(Distiller):
    """Train the student alone with cross-entropy."""

    name = "ce"
    config_class = CEConfig
    needs_teacher = False

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Losses]:
        logits = self.student(x)
        return logits, self.task_losses(logits, None, y)


@dataclass
class KDConfig(MethodConfig):
    """Hinton KD with RepDistiller's weights: γ = 0.1 (CE), α = 0.9 (KD), T = 4."""

    ce_weight: float = 0.1
    kd_weight: float = 0.9


class KD(Distiller):
    """``ce_weight·CE + kd_weight·T²·KL(p_t ‖ p_s)`` (RepDistiller ``DistillKL``)."""

    name = "kd"
    config_class = KDConfig

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Losses]:
        logits = self.student(x)
        logits_t, _ = self.teacher_forward(x)
        return logits, self.task_losses(logits, logits_t, y)
