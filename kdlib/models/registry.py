"""The model registry and teacher-checkpoint loading: one name -> one architecture.

Names are case-sensitive and never aliased: ``ResNet50`` is RepDistiller's CIFAR model, ``resnet50``
torchvision's ImageNet model, ``resnet50_cifar`` the CD paper's CIFAR model. Every model has the interface
``logits = model(x)``; ``logits, feats = model(x, with_features=True)``; ``model(x, with_features=True,
preact=True)``, with ``feats = [stem, stage_1, ..., stage_N, pooled_vector]`` (see each model module for what
the stem and the stages are, and what ``preact`` does); ``logits, last = model(x, prepool=True)``, with
``last`` the map global pooling reads (the last map before pooling). That map is RepDistiller's ``feats[-2]``
except on WRN (``relu(bn1(block3))``; ``feats[-2]`` is before that BN and ReLU), MobileNetV2 (the final 1x1
``conv2``, 1280 channels) and ShuffleV2 (``relu(bn2(conv2(layer3)))``, 1024 channels):
``ModelSpec.prepool_in_features``.
The feature list itself stays RepDistiller's.

Checkpoint formats accepted by :func:`load_teacher`:

(a) RepDistiller / mdistiller: ``{'model': state_dict, ...}`` (extra keys such as ``'epoch'``, ``'best_acc'``,
    ``'optimizer'`` are ignored);
(b) kdlib's ``model.pt``: ``{'model': state_dict, 'arch': name, 'num_classes': n, ...}``;
(c) a bare state dict (torchvision weight files).

A uniform ``module.`` (DataParallel/DDP) or ``_orig_mod.`` (``torch.compile``) prefix on every key is removed
before loading; loading is otherwise strict.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from kdlib.models import imagenet
from kdlib.models.cifar import (
    mobilenetv2,
    resnet,
    resnet_cifar_bottleneck,
    resnetv2,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)

CIFAR_CLASSES = 100
IMAGENET_CLASSES = 1000


class CheckpointError(ValueError):
    """A checkpoint file could not be read, is unsafe to unpickle, or does not fit the requested model."""


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture.

    ``classifier`` is the state-dict prefix of the final linear layer (used to infer the class count of a
    checkpoint); ``source`` says where the code comes from; ``prepool_in_features`` is False where the map
    global pooling reads (``model(x, prepool=True)``) is not the feature list's ``feats[-2]``.
    """

    name: str
    builder: Callable[[int], nn.Module]
    num_classes: int
    classifier: str
    source: str
    prepool_in_features: bool = True


_REPDISTILLER = "RepDistiller models/"
_SPECS: list[ModelSpec] = [
    *(
        ModelSpec(n, getattr(resnet, n), CIFAR_CLASSES, "fc", _REPDISTILLER + "resnet.py")
        for n in (
            "resnet8",
            "resnet14",
            "resnet20",
            "resnet32",
            "resnet44",
            "resnet56",
            "resnet110",
            "resnet8x4",
            "resnet32x4",
        )
    ),
    ModelSpec("ResNet50", resnetv2.ResNet50, CIFAR_CLASSES, "linear", _REPDISTILLER + "resnetv2.py"),
    *(
        ModelSpec(n, getattr(wrn, n), CIFAR_CLASSES, "fc", _REPDISTILLER + "wrn.py",
                  prepool_in_features=False)
        for n in ("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")
    ),
    *(
        ModelSpec(n, getattr(vgg, f"{n}_bn"), CIFAR_CLASSES, "classifier", _REPDISTILLER + "vgg.py")
        for n in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")
    ),
    ModelSpec(
        "MobileNetV2",
        mobilenetv2.mobile_half,
        CIFAR_CLASSES,
        "classifier.0",
        _REPDISTILLER + "mobilenetv2.py",
        prepool_in_features=False,
    ),
    ModelSpec(
        "ShuffleV1", shufflenetv1.ShuffleV1, CIFAR_CLASSES, "linear", _REPDISTILLER + "ShuffleNetv1.py"
    ),
    ModelSpec(
        "ShuffleV2", shufflenetv2.ShuffleV2, CIFAR_CLASSES, "linear", _REPDISTILLER + "ShuffleNetv2.py",
        prepool_in_features=False,
    ),
    *(
        ModelSpec(n, getattr(resnet_cifar_bottleneck, n), CIFAR_CLASSES, "fc", "torchvision ResNet, CD stem")
        for n in ("resnet50_cifar", "resnet152_cifar")
    ),
    *(
        ModelSpec(n, getattr(imagenet, n), IMAGENET_CLASSES, "fc", "torchvision.models.resnet")
        for n in ("resnet18", "resnet34", "resnet50")
    ),
    ModelSpec(
        "mobilenet_v2",
        imagenet.mobilenet_v2,
        IMAGENET_CLASSES,
        "classifier.1",
        "torchvision.models.mobilenetv2",
        prepool_in_features=False,
    ),
]
_REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def available() -> list[str]:
    """Names of all registered models, in a fixed order (RepDistiller's zoo, the CD pair, ImageNet)."""
    return list(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; raises ``ValueError`` listing the valid names if there is none."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(_REGISTRY)}") from None


def default_num_classes(name: str) -> int:
    """The class count of the model's dataset: 100 (CIFAR-100 models), 1000 (ImageNet backbones)."""
    return model_spec(name).num_classes


def create_model(name: str, num_classes: int | None = None) -> nn.Module:
    """Build the registered model ``name`` (freshly initialised, train mode).

    ``num_classes=None`` uses the model's dataset default (:func:`default_num_classes`).
    """
    spec = model_spec(name)
    if num_classes is None:
        num_classes = spec.num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return spec.builder(num_classes)


@torch.no_grad()
def feature_shapes(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)) -> list[tuple[int, ...]]:
    """Per-sample shapes of ``model(x, with_features=True)``'s feature list, from one dummy forward.

    Runs a single zero image of ``input_shape`` in eval mode on the model's device/dtype; every module's
    train/eval flag is restored afterwards, and no BatchNorm statistics change.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        _, feats = model(torch.zeros(1, *input_shape, device=device, dtype=dtype), with_features=True)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return [tuple(f.shape[1:]) for f in feats]


# ----------------------------------------------------------------------------------------------------------
# checkpoints


_SAFE_MODULES = ("torch", "collections", "builtins", "numpy", "_codecs")


def _pickle_globals(path: str | os.PathLike) -> list[str] | None:
    """The globals a checkpoint's pickle names (``module.name``), read with :mod:`pickletools` without
    executing anything; None when the file holds no complete pickle stream (truncated, text, ...)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                data = archive.read(names[0]) if names else b""
        else:
            with open(path, "rb") as f:
                data = f.read()
        found, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
        return found
    except (OSError, ValueError, zipfile.BadZipFile, IndexError, KeyError):
        return None


def read_checkpoint(path: str | os.PathLike) -> object:
    """A checkpoint file read with ``torch.load(weights_only=True)``; :class:`CheckpointError` naming the
    path when it is missing, damaged, or needs unsafe unpickling (``refusing to load ...``)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at '{path}'")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a raw pickle
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = _pickle_globals(path)
        if names is None:  # not a pickle at all: whatever torch's wording, the file is damaged
            lines = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()
            detail = (lines or [type(e).__name__])[0][:200]
            raise CheckpointError(
                f"'{path}' is not a readable PyTorch checkpoint (truncated or not a checkpoint: {detail})"
            ) from None
        unsafe = [n for n in names if n.split(".")[0] not in _SAFE_MODULES]
        contains = f"it contains {unsafe[0]}, which is not a tensor or plain Python value" if unsafe else (
            "a raw pickle, not torch.save's format")
        raise CheckpointError(
            f"refusing to load '{path}': it needs unsafe unpickling ({contains}). A checkpoint is untrusted "
            "input, so only weights-only files are accepted. If you trust the file, load it yourself with "
            "weights_only=False and re-save just its weights: torch.save({'model': ckpt['model']}, path)."
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, ... for corrupt files
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointError(
            f"'{path}' is not a readable PyTorch checkpoint (truncated or not a checkpoint: {detail})"
        ) from e


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _split(obj: object, path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], Mapping]:
    """(state_dict, metadata) of a loaded checkpoint object, or CheckpointError."""
    if isinstance(obj, Mapping) and "model" in obj:
        if not _is_state_dict(obj["model"]):
            raise CheckpointError(
                f"'{path}' has a 'model' entry that is not a state dict (a mapping of names to tensors)"
            )
        state, meta = dict(obj["model"]), {k: v for k, v in obj.items() if k != "model"}
    elif _is_state_dict(obj):
        state, meta = dict(obj), {}
    else:
        found = (
            f"a dict with keys {sorted(map(str, obj))[:8]}"
            if isinstance(obj, Mapping)
            else type(obj).__name__
        )
        raise CheckpointError(
            f"'{path}' is not a model checkpoint: expected a state dict or a dict with a 'model' state dict, "
            f"found {found}"
        )
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state, meta


def _first(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def load_teacher(
    path: str | os.PathLike, name: str | None = None, num_classes: int | None = None
) -> nn.Module:
    """Load a trained model from ``path`` (formats (a)-(c) in the module docstring), strictly, in eval mode.

    The architecture is ``name`` or the file's ``'arch'`` entry (both given and different: error; neither:
    error). The class count is ``num_classes``, else the file's ``'num_classes'``, else the row count of the
    classifier weight in the file. The file is read with ``torch.load(..., weights_only=True)``: a file that
    needs unsafe unpickling is refused. Every problem raises :class:`CheckpointError` naming the path.
    """
    state, meta = _split(read_checkpoint(path), path)

    file_arch = meta.get("arch")
    if file_arch is not None and not isinstance(file_arch, str):
        raise CheckpointError(f"'{path}' has a non-string 'arch' entry: {file_arch!r}")
    if name is not None and file_arch is not None and name != file_arch:
        raise CheckpointError(f"'{path}' holds a {file_arch!r} model, but {name!r} was requested")
    arch = name if name is not None else file_arch
    if arch is None:
        raise CheckpointError(
            f"cannot tell the architecture of '{path}': the file has no 'arch' entry; pass name=, one of: "
            f"{', '.join(available())}"
        )
    if arch not in _REGISTRY:
        raise CheckpointError(f"'{path}': unknown model {arch!r}; choose one of: {', '.join(available())}")
    spec = _REGISTRY[arch]

    classifier_key = f"{spec.classifier}.weight"
    if num_classes is None:
        file_classes = meta.get("num_classes")
        if isinstance(file_classes, int) and not isinstance(file_classes, bool):
            num_classes = file_classes
        elif classifier_key in state and state[classifier_key].dim() == 2:
            num_classes = int(state[classifier_key].shape[0])
    model = create_model(arch, num_classes)

    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys ({_first(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches ({_first(mismatched, 3)})")
        hint = ""
        if missing and unexpected:
            hint = "; is it a checkpoint of another architecture?"
        elif classifier_key in state and any(m.startswith(classifier_key + ":") for m in mismatched):
            hint = (
                f"; the file's classifier has {state[classifier_key].shape[0]} classes, the model "
                f"{expected[classifier_key].shape[0]}"
            )
        raise CheckpointError(
            f"checkpoint '{path}' does not fit {arch} with {expected[classifier_key].shape[0]} classes: "
            + "; ".join(problems)
            + hint
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # e.g. a dtype that cannot be copied
        raise CheckpointError(f"checkpoint '{path}' could not be loaded into {arch}: {e}") from e
    return model.eval()


def checkpoint_arch(ckpt: str | os.PathLike, given: str | None = None) -> str | None:
    """``given`` when set, else the ``arch`` a kdlib checkpoint names (None for other formats and unreadable
    files: :func:`load_teacher` reports those properly)."""
    if given:
        return given
    try:
        ckpt = read_checkpoint(ckpt)
    except CheckpointError:
        return None
    return ckpt.get("arch") if isinstance(ckpt, dict) else None
