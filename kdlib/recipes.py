"""Named training recipes: each one a paper's protocol, as a frozen dataclass (sources: each recipe's
``source`` field names the official code and commit).

- ``repdistiller``: 240 epochs, batch 64, SGD momentum 0.9, lr 0.05 (0.01 for MobileNetV2/ShuffleV1/V2),
  ×0.1 at 150/180/210, weight decay 5e-4, zero-padded crop.
- ``cd_cifar``: 200 epochs, batch 128, SGD momentum 0.9, lr 0.1, ×0.2 at 60/120/160, weight decay 5e-4,
  reflect-padded crop.
- ``iekd_cifar``: 160 epochs, batch 128, SGD Nesterov momentum 0.9, lr 0.1, ×0.1 at 80/120, weight decay
  5e-4, reflect-padded crop.
- ``smoke``: 2 epochs, batch 64, otherwise as ``repdistiller`` with its milestones scaled to 2 epochs.
- ``imagenet``: ResNet34 → ResNet18 on ImageNet as in CD (and torchvision's reference): 100 epochs, global
  batch 256, SGD momentum 0.9, lr 0.1, ×0.1 at 30/60/90, weight decay 1e-4.
- ``ickd_imagenet``: ICKD's ImageNet run: as ``imagenet`` but AdamW, lr 2e-4, weight decay 5e-4. The recipe is
  the optimiser and schedule only; the rest of ICKD's configuration is given with the run:

  - the loss, ``0.5·CE + 0.5·KD(T=1) + 500·ICKD`` (``imagenet`` variant, on ``layer4`` = ``feat[-2]``), is a
    method option like every loss weight: ``--variant ce_weight=0.5,kd_weight=0.5,T=1,ickd_weight=500,``
    ``variant=imagenet`` (recorded, resolved, in the record's ``method_config``);
  - the student's initialisation: ``--student-weights torchvision`` (or a local torchvision ``resnet18``
    weights file) for the published run (72.19), none for the from-scratch run (68.34 in thread #8 of the
    official ICKD repository). The study runs both.

The global batch size stays the recipe's whatever the number of processes (:mod:`kdlib.distributed`), and so
does the learning rate.

``optimizer`` is ``sgd`` (momentum, Nesterov as set) or ``adamw`` (torch's AdamW, default betas; ``momentum``
and ``nesterov`` do not apply). ``image_size`` (None: the dataset's own) changes the crop size of datasets
whose transforms crop (ImageNet); the tests and CPU proxies train ImageNet recipes at e.g.
``--set image_size=64``.

Every recipe also carries the pre-distillation stage of methods that have one (IE-KD's auto-encoder,
official code @ 3274ab0: 30 epochs, SGD Nesterov lr 0.1 constant, wd 5e-4, the recipe's batch size); methods
without one ignore those fields.

Overrides (:func:`get_recipe`):

- ``epochs=E`` scales the milestones proportionally, ``round(m·E/epochs)`` clamped to ``[1, E]``
  (duplicates kept, so a short run still decays as many times), and the pre-distillation epochs likewise
  (``round(p·E/epochs)``, at least 1 when the recipe has any) so a short proxy keeps the stage ratio
  **[assumption]**. Explicit ``milestones=`` / ``pretrain_epochs=`` overrides win over the scaling.
- any other field by name (``--set field=value`` on the command line); an unknown field is an error listing
  the fields.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

from kdlib.data import PAD_MODES
from kdlib.fields import check_field

#: Optimisers a recipe may name.
OPTIMIZERS = ("sgd", "adamw")
#: Students for which RepDistiller uses the smaller learning rate (``small_lr``).
SMALL_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


@dataclass(frozen=True)
class Recipe:
    """A training protocol; defaults are RepDistiller's CIFAR-100 recipe (RepDistiller @ b84f547)."""

    name: str
    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    #: Learning rate for the students in ``small_lr_students`` (None: same as ``lr``).
    small_lr: float | None = None
    small_lr_students: tuple[str, ...] = ()
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    #: MultiStepLR on epochs; the learning rate is multiplied by ``gamma`` after each listed epoch.
    milestones: tuple[int, ...] = (150, 180, 210)
    gamma: float = 0.1
    #: Padding of the random crop, ``constant`` (zeros) or ``reflect``.
    pad_mode: str = "constant"
    #: Pre-distillation stage (methods with ``has_pretrain``, i.e. IE-KD): constant lr, SGD.
    pretrain_epochs: int = 30
    pretrain_lr: float = 0.1
    pretrain_momentum: float = 0.9
    pretrain_nesterov: bool = True
    pretrain_weight_decay: float = 5e-4
    #: Which epoch's accuracy the source reports, ``last`` or ``best`` (both are always recorded).
    reported_epoch: str = "last"
    source: str = ""
    #: ``sgd`` or ``adamw`` (the distillation stage; the pre-distillation stage is always SGD).
    optimizer: str = "sgd"
    #: Input size of datasets whose transforms crop (224 for ImageNet), or None for the dataset's own.
    image_size: int | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("epochs", "batch_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                problems.append(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.pretrain_epochs, int) or self.pretrain_epochs < 0:
            problems.append(f"pretrain_epochs must be an integer >= 0, got {self.pretrain_epochs!r}")
        for name in ("lr", "pretrain_lr", "gamma"):
            if not 0 < getattr(self, name) < math.inf:
                problems.append(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if self.small_lr is not None and not 0 < self.small_lr < math.inf:
            problems.append(f"small_lr must be a finite number > 0, got {self.small_lr!r}")
        for name in ("momentum", "weight_decay", "pretrain_momentum", "pretrain_weight_decay"):
            if not 0 <= getattr(self, name) < math.inf:
                problems.append(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if any(not isinstance(m, int) or m < 1 for m in self.milestones) or list(self.milestones) != sorted(
            self.milestones
        ):
            problems.append(f"milestones must be increasing epochs >= 1, got {self.milestones!r}")
        for prefix in ("", "pretrain_"):
            if getattr(self, f"{prefix}nesterov") and not getattr(self, f"{prefix}momentum") > 0:
                problems.append(f"{prefix}nesterov needs {prefix}momentum > 0")
        if self.pad_mode not in PAD_MODES:
            problems.append(f"invalid pad_mode '{self.pad_mode}'; choose one of: {', '.join(PAD_MODES)}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"invalid optimizer '{self.optimizer}'; choose one of: {', '.join(OPTIMIZERS)}")
        if self.image_size is not None and not (isinstance(self.image_size, int) and self.image_size >= 8):
            problems.append(f"image_size must be an integer >= 8 or None, got {self.image_size!r}")
        if self.reported_epoch not in ("last", "best"):
            problems.append(f"invalid reported_epoch '{self.reported_epoch}'; choose one of: last, best")
        if problems:
            raise ValueError(f"recipe '{self.name}': " + "; ".join(problems))

    def lr_for(self, student: str | None) -> float:
        """The initial learning rate for ``student`` (``small_lr`` for the listed students)."""
        if student is not None and self.small_lr is not None and student in self.small_lr_students:
            return self.small_lr
        return self.lr

    def as_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


#: Recipe fields added after the first run records, with the default that leaves them out of ``config_id``.
LATER_FIELDS: dict[str, Any] = {"optimizer": "sgd", "image_size": None}


def recipe_identity(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe's fields (:meth:`Recipe.as_dict`, or a record's ``recipe``) without those added since record
    version 1 where they have their default (:data:`LATER_FIELDS`): what enters a run's ``config_id``, so
    earlier runs keep theirs."""
    return {k: v for k, v in recipe.items() if k not in LATER_FIELDS or v != LATER_FIELDS[k]}


def scale_milestones(milestones: tuple[int, ...], epochs: int, new_epochs: int) -> tuple[int, ...]:
    """Milestones moved proportionally to a schedule of ``new_epochs`` (rounded, clamped to [1, new])."""
    return tuple(min(new_epochs, max(1, round(m * new_epochs / epochs))) for m in milestones)


def _scale_pretrain(pretrain_epochs: int, epochs: int, new_epochs: int) -> int:
    return max(1, round(pretrain_epochs * new_epochs / epochs)) if pretrain_epochs else 0


_REPDISTILLER = Recipe(
    name="repdistiller",
    small_lr=0.01,
    small_lr_students=SMALL_LR_STUDENTS,
    source="RepDistiller @ b84f547 train_student.py / scripts/run_cifar_distill.sh (methods.md section 7); "
    "reports the last epoch",
)

_IMAGENET = Recipe(
    name="imagenet",
    epochs=100,
    batch_size=256,
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    milestones=(30, 60, 90),
    gamma=0.1,
    source="channel-distillation @ 2464d30 ImageNet config (methods.md section 3; torchvision's reference "
    "recipe): SGD 0.1, wd 1e-4, x0.1 at 30/60/90, 100 epochs, global batch 256; IE-KD stage A keeps the "
    "CIFAR code's 30 epochs [assumption]",
)

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        _REPDISTILLER,
        Recipe(
            name="cd_cifar",
            epochs=200,
            batch_size=128,
            lr=0.1,
            milestones=(60, 120, 160),
            gamma=0.2,
            pad_mode="reflect",
            source="channel-distillation @ 2464d30, CIFAR-100 config (methods.md section 3)",
        ),
        Recipe(
            name="iekd_cifar",
            epochs=160,
            batch_size=128,
            lr=0.1,
            nesterov=True,
            milestones=(80, 120),
            gamma=0.1,
            pad_mode="reflect",
            reported_epoch="best",
            source="IE-KD official code @ 3274ab0, CIFAR configs (methods.md section 5); stage A: 30 epochs, "
            "SGD Nesterov lr 0.1 constant, wd 5e-4; reports the best epoch",
        ),
        dataclasses.replace(
            _REPDISTILLER,
            name="smoke",
            epochs=2,
            milestones=scale_milestones(_REPDISTILLER.milestones, _REPDISTILLER.epochs, 2),
            pretrain_epochs=1,
            source="CPU smoke test: repdistiller with 2 epochs (milestones scaled), IE-KD stage A 1 epoch; "
            "not a protocol of any paper",
        ),
        _IMAGENET,
        dataclasses.replace(
            _IMAGENET,
            name="ickd_imagenet",
            optimizer="adamw",
            lr=2e-4,
            weight_decay=5e-4,
            source="ICKD @ 403b8d3 ImageNet config (methods.md section 1): AdamW lr 2e-4 wd 5e-4, 100 "
            "epochs, x0.1 at 30/60/90, batch 256; loss weights via --variant, pretrained student via "
            "--student-weights",
        ),
    )
}


def available_recipes() -> list[str]:
    return list(RECIPES)


def recipe_fields() -> list[str]:
    """Names of the fields ``--set`` may override."""
    return [f.name for f in dataclasses.fields(Recipe)]


def get_recipe(name: str, student: str | None = None, **overrides: Any) -> Recipe:
    """Recipe ``name`` resolved for ``student`` (its learning rate) with ``overrides`` applied.

    Values may be strings (from ``--set``); ``epochs`` rescales the milestones and the pre-distillation epochs
    unless those are overridden too. Unknown recipes or fields raise ``ValueError`` listing the valid ones.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe '{name}'; choose one of: {', '.join(RECIPES)}")
    base = RECIPES[name]
    hints = typing.get_type_hints(Recipe)
    fields = recipe_fields()
    values: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in fields:
            raise ValueError(f"unknown recipe field '{key}'; choose one of: {', '.join(fields)}")
        values[key] = check_field(raw, hints[key], f"recipe field '{key}'")
    if "epochs" in values and isinstance(values["epochs"], int) and values["epochs"] >= 1:
        new = values["epochs"]
        values.setdefault("milestones", scale_milestones(base.milestones, base.epochs, new))
        values.setdefault("pretrain_epochs", _scale_pretrain(base.pretrain_epochs, base.epochs, new))
    recipe = dataclasses.replace(base, **values)
    if student is not None and "lr" not in values and recipe.lr_for(student) != recipe.lr:
        recipe = dataclasses.replace(recipe, lr=recipe.lr_for(student))
    return recipe
