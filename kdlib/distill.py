"""The Distiller: one module owning the student, the frozen teacher and a method's trainable parts.

Pattern from mdistiller's ``distillers/_base.py``: ``forward(x, y)`` returns the student logits and a
dict of *named, weighted* loss terms; the trainer sums the dict. The optimiser takes
``distiller.trainable_parameters()``, so no projector is ever forgotten, and the teacher never reaches it.

Every method has a configuration dataclass (a subclass of :class:`MethodConfig`) whose defaults are the
weights of each paper's official code (the book's method chapters list them); the student objective is always
``ce_weight·CE + kd_weight·KD_T + <method terms>``.

This module holds the base classes only. Each method lives in its own module under ``kdlib.losses``
(importing this one); the table of methods, and the functions that build a distiller by name, are in
:mod:`kdlib.methods` (importing those). Nothing imports upwards, so any of them can be imported first.

Per-epoch state (CD's EDT weights) reaches ``forward`` as tensor data: the trainer calls
``distiller.set_epoch(epoch)`` before each distillation epoch, and a method whose losses change per epoch
overrides it to write the new values into a buffer in place. ``forward`` never reads Python per-epoch values:
the fast path compiles the distiller (``torch.compile(dynamic=False)``), which specialises every Python number
the traced code reads, so such a value would recompile the distiller every epoch, and after dynamo's recompile
limit (8) it would run eagerly for the rest of the run (tests/test_compile.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdlib.losses.functional import ce_loss, kd_loss
from kdlib.models import model_spec

Losses = dict[str, Tensor]

#: Where a method that taps "the last feature map before global pooling" (ICKD, IE-KD) reads it:
#: ``code`` = the map the model's global pool reads, ``model(x, prepool=True)``, as the official code's
#: models return it [code: ICKD@403b8d3 ``Cifar100/models``; IE-KD@3274ab0 ``model/wide_resnet.py``];
#: ``repdistiller`` = RepDistiller's ``feats[-2]``. They differ on WRN (``feats[-2]`` is before the final BN
#: and ReLU), MobileNetV2 (160 vs 1280 channels) and ShuffleV2 (464 vs 1024), and agree on every other model
#: (``kdlib.models.ModelSpec.prepool_in_features``).
LAST_MAP_TAPS = ("code", "repdistiller")


class MethodOptionError(ValueError):
    """A method option that does not fit the student or teacher (found when the distiller is built, e.g.
    FitNet's ``hint_layer`` beyond the models' features): bad input, like an invalid ``--variant``."""


@dataclass
class MethodConfig:
    """Weights shared by all methods: ``ce_weight·CE + kd_weight·KD_T`` plus the method's own terms.

    Subclasses list allowed values of their string options in ``CHOICES``; ``__post_init__`` checks them,
    so a bad variant fails when the configuration is made, before anything is loaded or trained.

    A numeric option listed in ``RULES`` also takes the name of a rule that gives its value per teacher →
    student pair (DKD's ``nckd_weight="mdistiller"``): ``{option: {rule name: function(teacher, student) ->
    value}}``. The name is what a study's variant says (its label and run folder); :meth:`for_pair` replaces
    it by the pair's value where the pair is known (:func:`kdlib.config.plan`), so the run trains with the
    number and its record (``method_config``, ``variant``, ``config_id``) holds the number.
    """

    ce_weight: float = 1.0
    kd_weight: float = 0.0
    T: float = 4.0

    CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {}
    RULES: ClassVar[dict[str, dict[str, Callable[[str, str], Any]]]] = {}

    def __post_init__(self) -> None:
        for name, allowed in self.CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                choices = ", ".join(map(str, allowed))
                raise ValueError(f"invalid {name} {value!r}; choose one of: {choices}")
        for name, rules in self.RULES.items():
            value = getattr(self, name)
            if isinstance(value, str) and value not in rules:
                raise ValueError(f"invalid {name} {value!r}; a number or one of: {', '.join(rules)}")
        named = self.rules_named()
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in named:  # a rule's name, checked above; its value comes with the pair
                continue
            if isinstance(value, float) and not math.isfinite(value):  # nan would train, then 'diverge'
                raise ValueError(f"{field.name} must be a finite number, got {value!r}")
            if field.name.endswith("weight") and not (isinstance(value, int | float) and value >= 0):
                raise ValueError(f"{field.name} must be a number >= 0, got {value!r}")
        if not self.T > 0:
            raise ValueError(f"T must be > 0, got {self.T!r}")

    def rules_named(self) -> dict[str, str]:
        """``{option: rule name}`` of the options that hold the name of a rule (``RULES``), not a value."""
        return {name: value for name in self.RULES if isinstance(value := getattr(self, name), str)}

    def for_pair(self, teacher: str | None, student: str) -> MethodConfig:
        """This configuration with each rule's name replaced by the rule's value for ``teacher → student``
        (architecture names); itself when it names no rule. A rule needs the teacher: None is a
        ``ValueError``, and so is a pair the rule does not apply to (the rule's own message)."""
        named = self.rules_named()
        if not named:
            return self
        if teacher is None:
            option, rule = next(iter(named.items()))
            raise ValueError(f"{option} {rule!r} is set per teacher → student pair: name the teacher's "
                             "architecture (--teacher)")
        return dataclasses.replace(self, **{option: self.RULES[option][rule](teacher, student)
                                            for option, rule in named.items()})


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the ``with`` block; its train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def eval_features(model: nn.Module, x: Tensor) -> list[Tensor]:
    """``model``'s features of ``x`` in eval mode, without autograd; its train/eval mode is restored.

    What a method's figure shows of a model (the distiller's teacher or student, or a vanilla student).
    """
    with eval_mode(model):
        return model(x, with_features=True)[1]


def last_map(model: nn.Module, x: Tensor, tap: str) -> tuple[Tensor, Tensor]:
    """``model``'s logits and its last map before global pooling, as ``tap`` (:data:`LAST_MAP_TAPS`) reads
    it."""
    if tap == "repdistiller":
        logits, feats = model(x, with_features=True)
        return logits, feats[-2]
    return model(x, prepool=True)


@torch.no_grad()
def eval_last_map(model: nn.Module, x: Tensor, tap: str) -> Tensor:
    """The :func:`last_map` of ``x`` in eval mode, without autograd; ``model``'s mode is restored."""
    with eval_mode(model):
        return last_map(model, x, tap)[1]


def taps_agree(*archs: str | None) -> bool:
    """True when the two :data:`LAST_MAP_TAPS` read the same map on every named architecture (None: no
    model)."""
    try:
        return all(model_spec(arch).prepool_in_features for arch in archs if arch is not None)
    except ValueError:  # not a registered architecture: assume the taps differ
        return False


class Distiller(nn.Module):
    """Base class: student + frozen teacher + the method's parts; subclasses implement :meth:`forward`.

    ``input_shape`` is one sample's (C, H, W); it sizes projectors through a dummy forward
    (:meth:`probe`), never through hand-typed channel lists.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    needs_teacher: ClassVar[bool] = True
    #: True for methods with a stage before distillation (IE-KD's auto-encoder); see :meth:`pretrain_loss`.
    has_pretrain: ClassVar[bool] = False

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        config: MethodConfig | None = None,
        input_shape: tuple[int, int, int] = (3, 32, 32),
    ) -> None:
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ValueError(f"method '{self.name}' needs a teacher")
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"method '{self.name}' takes a {self.config_class.__name__}")
        named = ", ".join(f"{k}={v}" for k, v in self.config.rules_named().items())
        if named:  # a rule's name is no weight: the pair's value must replace it first
            raise ValueError(f"method '{self.name}': {named} names a rule set per teacher → student pair; "
                             "resolve it first with config.for_pair(teacher, student)")
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
        self.input_shape = tuple(input_shape)
        #: Length of the training schedule, set by the trainer; methods with per-epoch weights (EDT) use it.
        self.total_epochs: int | None = None
        #: The 1-indexed epoch of the last :meth:`set_epoch` (1 until then), for information only.
        self.epoch = 1
        self.train()

    # --- teacher handling -------------------------------------------------------------------------
    @property
    def teacher_train_mode(self) -> bool:
        """True when the teacher's BatchNorm uses batch statistics during training (default False)."""
        return False

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.train(mode and self.teacher_train_mode)
        return self

    def teacher_forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Teacher logits and features, without autograd (the teacher is never trained)."""
        with torch.no_grad():
            return self.teacher(x, with_features=True)

    # --- parameters -------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser trains: the student and the method's parts (never the teacher)."""
        return [p for p in self.parameters() if p.requires_grad]

    def pretrain_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by the pre-distillation stage (none unless ``has_pretrain``)."""
        return []

    def pretrain_loss(self, x: Tensor) -> Losses:
        """Named loss terms of the pre-distillation stage for a batch ``x`` (IE-KD's auto-encoder)."""
        raise NotImplementedError(f"method '{self.name}' has no pre-distillation stage")

    # --- helpers for subclasses -------------------------------------------------------------------
    @torch.no_grad()
    def probe(self, preact: bool = False) -> tuple[list[torch.Size], list[torch.Size]]:
        """Per-sample feature shapes of student and teacher from one dummy forward (no state changes)."""
        shapes = []
        for model in (self.student, self.teacher):
            if model is None:
                shapes.append([])
                continue
            with eval_mode(model):
                _, feats = model(torch.zeros(2, *self.input_shape), with_features=True, preact=preact)
            shapes.append([f.shape[1:] for f in feats])
        return shapes[0], shapes[1]

    @torch.no_grad()
    def probe_last_map(self, tap: str) -> tuple[torch.Size, torch.Size]:
        """Per-sample shapes of student's and teacher's :func:`last_map` from one dummy forward."""
        x = torch.zeros(2, *self.input_shape)
        return eval_last_map(self.student, x, tap).shape[1:], eval_last_map(self.teacher, x, tap).shape[1:]

    def teacher_last_map(self, x: Tensor, tap: str) -> tuple[Tensor, Tensor]:
        """The teacher's logits and last map as ``tap`` reads it (:func:`last_map`), without autograd."""
        with torch.no_grad():
            return last_map(self.teacher, x, tap)

    def last_maps(self, x: Tensor, tap: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Student logits and last map, then the teacher's (:meth:`teacher_last_map`), as ``tap`` reads
        them."""
        logits, f_s = last_map(self.student, x, tap)
        return (logits, f_s, *self.teacher_last_map(x, tap))

    def task_losses(self, logits_s: Tensor, logits_t: Tensor | None, y: Tensor) -> Losses:
        """The weighted ``ce`` and ``kd`` terms (a term with weight 0 is left out)."""
        losses: Losses = {}
        if self.config.ce_weight:
            losses["ce"] = self.config.ce_weight * ce_loss(logits_s, y)
        if self.config.kd_weight:
            if logits_t is None:
                raise ValueError(f"method '{self.name}' has kd_weight > 0 but no teacher")
            losses["kd"] = self.config.kd_weight * kd_loss(logits_s, logits_t, self.config.T)
        return losses

    # --- per-epoch state --------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Prepare distillation epoch ``epoch`` (1-indexed); the trainer calls it before the first step.

        The base class stores ``epoch`` as :attr:`epoch`, for information: :meth:`forward` must not read it,
        nor any other Python value that changes per epoch (a compiled distiller would be specialised on it and
        recompiled every epoch). A method whose losses change per epoch overrides this to write the new values
        into a buffer in place (CD's EDT weights, :class:`kdlib.losses.cd.CD`); call it again after changing
        :attr:`total_epochs`. A new distiller is at epoch 1.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise ValueError(f"epoch must be an integer >= 1 (1-indexed), got {epoch!r}")
        self.epoch = epoch

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Losses]:
        """Student logits and the named, weighted loss terms of one batch (per-epoch state: ``set_epoch``).

        The names of the terms must not change from epoch to epoch (a term whose per-epoch weight is 0 is
        still returned, as 0), so that the compiled graph is the same at every epoch.
        """
        raise NotImplementedError
